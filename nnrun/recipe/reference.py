"""The recipe reference in `docs/recipe-reference.md`, generated from the schema so it cannot drift.

`python -m nnrun.recipe.reference` prints the markdown between that page's reference markers; a test fails
when the page's copy differs (regenerate with `python -m nnrun.recipe.reference --write`, from the repository
root; `--write PATH` splices it into another file).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

from nnrun.recipe.fields import dataclass_of, describe_items, describe_range, yaml_key
from nnrun.recipe.schema import Recipe

BEGIN, END = "<!-- recipe-reference:begin -->", "<!-- recipe-reference:end -->"
PAGE = Path("docs") / "recipe-reference.md"


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _allowed(f: dataclasses.Field) -> str:
    meta = f.metadata
    if meta.get("choices"):
        return ", ".join(f"`{c}`" for c in meta["choices"])
    parts = [describe_range(meta), describe_items(meta)]
    if meta.get("allow_inf"):
        parts.append("`.inf`")
    return "; ".join(p for p in parts if p)


def _rows(cls: type, prefix: str) -> list[str]:
    """Table rows of a section's keys, nested sections (`on_plateau`, `groups[]`) included."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{yaml_key(f)}"
        rows.append(f"| `{key}` | {_default(f)} | {_allowed(f)} | {f.metadata['doc'].replace('|', '/')} |")
        nested, shape = dataclass_of(hints[f.name])
        if nested is not None:
            rows += _rows(nested, key + ("[]" if shape == "list" else ""))
    return rows


def reference() -> str:
    """Markdown tables, one per recipe section, listing every key with default and practice."""
    lines = ["| key | default | allowed | practice |", "|---|---|---|---|"]
    hints = typing.get_type_hints(Recipe)
    for f in dataclasses.fields(Recipe):
        if not dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"| `{f.name}` | {_default(f)} | {_allowed(f)} | {f.metadata['doc']} |")
    out = ["Top level:", "", *lines, ""]
    for f in dataclasses.fields(Recipe):
        section = hints[f.name]
        if not dataclasses.is_dataclass(section):
            continue
        out += [f"`{f.name}:` {f.metadata['doc']}", "", "| key | default | allowed | practice |", "|---|---|---|---|"]
        out += _rows(section, f.name)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def splice(page: str) -> str:
    """The text of `docs/recipe-reference.md` with the reference block replaced by the generated one."""
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{reference()}{END}{tail}"


if __name__ == "__main__":
    if len(sys.argv) in (2, 3) and sys.argv[1] == "--write":
        path = Path(sys.argv[2]) if len(sys.argv) == 3 else PAGE
        path.write_text(splice(path.read_text()))
    else:
        print(reference(), end="")
