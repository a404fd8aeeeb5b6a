"""`nnrun recipes [NAME] [--copy PATH [--force]]`: list the shipped recipes, print one, or copy one
to edit (torchtune's `tune cp`). Imports no torch."""

from __future__ import annotations

import os
from pathlib import Path

import click

from nnrun.cli.common import err_console, out_console
from nnrun.cli.completion import complete_name


@click.command("recipes")
@click.argument("name", required=False, metavar="[NAME]", shell_complete=complete_name)
@click.option("--copy", "copy_to", type=click.Path(), metavar="PATH",
              help="Write recipe NAME to PATH for editing (a folder: PATH/NAME.yaml; `.yaml` added when missing).")
@click.option("--force", is_flag=True, help="With --copy: overwrite an existing file.")
def command(name, copy_to, force):
    """List the shipped recipes; print recipe NAME with its comments; or copy it with --copy.

    \b
    nnrun recipes                              the table of shipped recipes
    nnrun recipes quickstart > my.yaml         print one (comments included)
    nnrun recipes quickstart --copy my.yaml    write it for editing, then: nnrun train my.yaml
    """
    if name is None:
        if copy_to or force:
            raise click.UsageError("--copy and --force need a recipe NAME: nnrun recipes NAME --copy PATH")
        _table()
        return
    text = shipped_text(name)
    if copy_to is None:
        if force:
            raise click.UsageError("--force only applies with --copy PATH")
        click.echo(text, nl=not text.endswith("\n"))
        return
    path = copy_recipe(name, text, copy_to, force=force)
    from rich.markup import escape

    err_console().print(f"wrote {escape(str(path))} (shipped recipe {escape(name)}); edit it, then run: "
                        f"nnrun train {escape(_quoted(path))}", soft_wrap=True)
    click.echo(str(path))


def _table() -> None:
    from rich.markup import escape
    from rich.table import Table

    from nnrun.recipe import shipped_recipes

    table = Table("name", "what it trains")
    for name, resource in sorted(shipped_recipes().items()):
        first = next((line.lstrip("# ").strip() for line in resource.read_text().splitlines()
                      if line.startswith("#")), "")
        table.add_row(name, escape(first))
    out_console().print(table)


def shipped_text(name: str) -> str:
    """The text of shipped recipe `name` (`quickstart` or `quickstart.yaml`), comments and all.

    Raises:
        NnrunError: no shipped recipe of that name; the message lists them, with the closest one.
    """
    from nnrun.errors import NnrunError, did_you_mean
    from nnrun.recipe import shipped_recipes

    shipped = shipped_recipes()
    stem = name[:-5] if name.endswith(".yaml") else name
    if stem not in shipped:
        raise NnrunError(f"no shipped recipe `{name}`{did_you_mean(stem, shipped)}",
                         hint=f"name one of: {', '.join(sorted(shipped))} (`nnrun recipes` describes them)")
    return shipped[stem].read_text(encoding="utf-8")


def target_path(name: str, dest: str) -> Path:
    """Where `--copy dest` writes: into an existing folder as NAME.yaml; else `dest` itself, with
    `.yaml` added unless it ends in `.yaml` or `.yml` (so `my` and `my.v2` become `my.yaml` and
    `my.v2.yaml`)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    if Path(dest).is_dir():
        return Path(dest) / f"{stem}.yaml"
    if dest.endswith(("/", os.sep)):  # a folder meant, which does not exist: refused by the caller
        return Path(dest)
    dest = Path(dest)
    return dest if dest.suffix.lower() in (".yaml", ".yml") else dest.with_name(dest.name + ".yaml")


def copy_recipe(name: str, text: str, dest: str, *, force: bool) -> Path:
    """Write `text` (shipped recipe `name`) to where `dest` says (:func:`target_path`), atomically.

    Raises:
        OutputError: the file exists (without `force`), the folder does not exist, or the place is not
            writable; the message names the path and the fix.
    """
    from nnrun.errors import OutputError
    from nnrun.files import write_text_atomic

    path = target_path(name, dest)
    parent = path.parent
    if dest.endswith(("/", os.sep)) and not Path(dest).is_dir():
        raise OutputError(f"cannot copy recipe {name} to {dest}: no such folder",
                          hint=f"create it first (mkdir -p {_quoted(Path(dest))}) or give a file path such as my.yaml")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"cannot copy recipe {name} to {path}: the folder {parent} {what}",
                          hint=f"create it first (mkdir -p {_quoted(parent)}) or choose another path")
    if path.is_dir():
        raise OutputError(f"cannot copy recipe {name} to {path}: a folder of that name is in the way",
                          hint="choose another path")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; not overwriting it with recipe {name}",
                          hint=f"add --force to overwrite it, or choose another path: "
                               f"nnrun recipes {name} --copy OTHER.yaml")
    write_text_atomic(path, text, what=f"recipe {name} to {path}", hint="choose a writable place for --copy")
    return path


def _quoted(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))
