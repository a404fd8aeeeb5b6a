"""`nnrun recipes [NAME] [--copy PATH [--force]]`: list the shipped recipes, print one, or copy one
to edit (torchtune's `tune cp`). Imports no torch."""

from __future__ import annotations

import click

from nnrun.cli.common import err_console, out_console
from nnrun.cli.completion import complete_name
from nnrun.recipe import starters


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
    text = starters.shipped_text(name)
    if copy_to is None:
        if force:
            raise click.UsageError("--force only applies with --copy PATH")
        click.echo(text, nl=not text.endswith("\n"))
        return
    path = starters.copy_recipe(name, text, copy_to, force=force)
    from rich.markup import escape

    err_console().print(f"wrote {escape(str(path))} (shipped recipe {escape(name)}); edit it, then run: "
                        f"nnrun train {escape(starters.quoted(path))}", soft_wrap=True)
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
