"""`nnrun recipes`."""

from __future__ import annotations

import click

from nnrun.cli.common import out_console


@click.command("recipes")
def command():
    """List the shipped recipes; run one by name: `nnrun train NAME`."""
    from rich.markup import escape
    from rich.table import Table

    from nnrun.recipe import shipped_recipes

    table = Table("name", "what it trains")
    for name, resource in sorted(shipped_recipes().items()):
        first = next((line.lstrip("# ").strip() for line in resource.read_text().splitlines()
                      if line.startswith("#")), "")
        table.add_row(name, escape(first))
    out_console().print(table)
