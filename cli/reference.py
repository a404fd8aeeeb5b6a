"""The options tables of the command pages (`docs/commands/<name>.md`), generated from the click
commands so they cannot drift.

`python -m nnrun.cli.reference NAME` prints one command's table; `--write` rewrites the block between
the markers of every page in `docs/commands/` (run from the repository root); `--check` exits 1 when
any page is stale (a test checks the same).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from nnrun.cli import COMMANDS, available

BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"
PAGES = Path("docs") / "commands"


def command(name: str) -> click.Command:
    """The click command of `nnrun NAME`, imported the way the CLI imports it (lazily)."""
    return importlib.import_module(f"nnrun.cli.{COMMANDS[name][0]}").command


def _cell(text: object) -> str:
    """Text safe inside a table cell: one line, `|` escaped (also inside code spans, as GFM wants)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _prose(text: str) -> str:
    """Help text as literal Markdown: `<name>` is not an HTML tag, `*` not emphasis."""
    return text.replace("\\", "\\\\").replace("<", "\\<").replace("*", "\\*")


def _type(opt: click.Option) -> str:
    t = opt.type
    if opt.is_flag:
        return "flag"
    if isinstance(t, click.Choice):
        return ", ".join(f"`{c}`" for c in t.choices)
    if isinstance(t, click.IntRange) and t.min is not None:
        return f"integer ≥ {t.min}"
    if isinstance(t, click.Path):
        return "folder" if not t.file_okay else "file" if not t.dir_okay else "path"
    return {"float": "number", "integer": "integer"}.get(t.name, "text")


def _default(opt: click.Option) -> str:
    value = opt.to_info_dict().get("default")  # click's own view (no UNSET sentinel)
    if opt.is_flag:
        return "on" if value else "off"
    if value is None or callable(value):
        return "-"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def options_table(name: str) -> str:
    """The markdown table of `nnrun NAME`'s options: names, type or choices, default, help."""
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for opt in command(name).params:
        if not isinstance(opt, click.Option) or opt.hidden:
            continue
        names = ", ".join(f"`{n}`" for n in [*opt.opts, *opt.secondary_opts])
        cells = [names, _type(opt), _default(opt), _prose(opt.help or "")]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if len(rows) == 2:
        return "No options besides `--help`.\n"
    return "\n".join(rows) + "\n"


def splice(text: str, name: str) -> str:
    """A command page's text with its options block replaced by the generated table."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"the page of `nnrun {name}` needs one {BEGIN} ... {END} block")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{options_table(name)}{END}{tail}"


def stale(pages: Path = PAGES) -> list[str]:
    """The command pages under `pages` whose options block differs from the commands (or is missing)."""
    out = []
    for name in available():
        page = pages / f"{name}.md"
        try:
            if splice(page.read_text(encoding="utf-8"), name) != page.read_text(encoding="utf-8"):
                out.append(str(page))
        except (OSError, ValueError):
            out.append(str(page))
    return out


def write(pages: Path = PAGES) -> None:
    """Rewrite the options block of every command page under `pages`."""
    for name in available():
        page = pages / f"{name}.md"
        page.write_text(splice(page.read_text(encoding="utf-8"), name), encoding="utf-8")


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        write()
        return 0
    if argv == ["--check"]:
        bad = stale()
        for page in bad:
            print(f"stale: {page} (run: python -m nnrun.cli.reference --write)", file=sys.stderr)
        return 1 if bad else 0
    if len(argv) == 1 and argv[0] in available():
        print(options_table(argv[0]), end="")
        return 0
    print("usage: python -m nnrun.cli.reference [--write | --check | COMMAND]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
