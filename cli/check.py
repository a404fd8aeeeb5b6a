"""`nnrun check RECIPE [key=value ...]`."""

from __future__ import annotations

import click

from nnrun.cli.common import err_console, out_console, recipe_argument, split_recipe_args


@click.command("check", context_settings={"ignore_unknown_options": True})
@recipe_argument()
def command(args):
    """Validate RECIPE and print it fully resolved (every default filled in).

    Exit code 0 when valid, 2 with every problem listed when not.
    """
    from rich.markup import escape

    from nnrun import recipe as recipe_io

    name, overrides = split_recipe_args(args)
    recipe = recipe_io.load(name, overrides)
    out_console().print(escape(recipe_io.dump(recipe)), end="")
    err_console().print(f"[green]ok[/]: {escape(name)} is valid")
