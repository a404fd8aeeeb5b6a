"""`nnrun schedule RECIPE [key=value ...]`."""

from __future__ import annotations

import click

from nnrun.cli.common import err_console, out_console, recipe_argument, split_recipe_args


@click.command("schedule", context_settings={"ignore_unknown_options": True})
@recipe_argument()
@click.option("--out", type=click.Path(dir_okay=False), help="Also write a PNG plot (needs matplotlib).")
def command(args, out):
    """Draw the learning rate of every group and the momentum over the whole run, without training.

    \b
    nnrun schedule quickstart schedule.name=sgdr schedule.cycle_len=5 train.epochs=15
    nnrun schedule quickstart schedule.name=one_cycle --out schedule.png
    """
    from rich.markup import escape

    from nnrun import recipe as recipe_io
    from nnrun.cli.charts import labelled_chart
    from nnrun.workflows.schedule import plot, preview

    name, overrides = split_recipe_args(args)
    recipe = recipe_io.load(name, overrides)
    result = preview(recipe)
    console = err_console()
    console.print(f"[bold]{escape(recipe.name)}[/]: schedule {recipe.schedule.name}, {result.total_steps} steps "
                  f"({result.steps_per_epoch} per epoch, {recipe.train.epochs:g} epochs)")
    for group, values in result.lrs.items():
        console.print(escape(labelled_chart(values, label=f"lr/{group} (log scale)", log=True)))
    if result.momentum and max(result.momentum) - min(result.momentum) > 1e-12:
        console.print(escape(labelled_chart(result.momentum, label="momentum / beta1")))
    elif result.momentum:
        console.print(f"momentum / beta1: constant {result.momentum[0]:g}")
    for note in result.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    if out:
        path = plot(result, out, f"{recipe.name}: {recipe.schedule.name}")
        console.print(f"plot: {escape(str(path))}")
    first = next(iter(result.lrs.values()))
    out_console().print(f"lr start={first[0]:.4g} max={max(first):.4g} end={first[-1]:.4g}")
