"""`nnrun train RECIPE [key=value ...]`."""

from __future__ import annotations

import sys

import click

from nnrun.cli.common import device_option, err_console, out_console, split_recipe_args


@click.command("train", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, metavar="[RECIPE] [KEY=VALUE]...")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run folder (default runs/<name>/<timestamp>/).")
@click.option("--resume", "resume", type=click.Path(), help="Checkpoint or run folder to continue exactly.")
@device_option()
def command(args, run_dir, resume, device):
    """Train RECIPE (a .yaml file or a shipped recipe name) with dotted overrides.

    \b
    nnrun train quickstart
    nnrun train recipes/quickstart.yaml optimizer.lr=3e-4 train.epochs=3
    nnrun train --resume runs/quickstart/20261124-101500 train.epochs=20
    """
    from pathlib import Path

    from rich.markup import escape

    from nnrun import recipe as recipe_io
    from nnrun.cli.progress import make_progress
    from nnrun.workflows.train import resume_recipe, run

    name, overrides = split_recipe_args(args, required=resume is None)
    recipe = recipe_io.load(name, overrides) if name else resume_recipe(resume, overrides)
    console = err_console()
    progress = make_progress(recipe.log.progress, console, recipe.log.refresh_per_second)
    console.print(f"[bold]nnrun train[/] {recipe.name}: {recipe.model.arch} on {recipe.data.source}, "
                  f"{recipe.optimizer.name} lr={recipe.optimizer.lr:g}, {recipe.train.epochs:g} epochs")
    def show_notes(lines: list[str]) -> None:
        for line in lines:
            console.print(f"  {escape(line)}")

    result = run(recipe,
                 notes=show_notes,
                 run_dir=Path(run_dir) if run_dir else None,
                 resume=resume,
                 device=device,
                 callbacks=[progress] if progress else [])
    _summary(console, result)
    out_console().print(str(result.best_checkpoint or result.last_checkpoint or result.run_dir))
    if result.interrupted:
        sys.exit(130 if result.signal == "SIGINT" else 143)
    if result.stop_reason.startswith("non-finite"):
        sys.exit(1)  # the run failed; last.pt (if any) still holds the last finite weights


def _summary(console, result) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="run summary", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    best = result.best
    table.add_row("run folder", escape(str(result.run_dir)))
    table.add_row("stopped", escape(result.stop_reason) + (f" ({result.signal})" if result.signal else ""))
    table.add_row("steps", f"{result.steps} in {result.seconds:.1f} s")
    if best:
        table.add_row("best", f"{result.monitor} = {best['value']:.4f} at epoch {best['epoch']}")
    if result.history:
        last = result.history[-1]
        table.add_row("last", "  ".join(f"{k}={v:.4f}" for k, v in last.items()
                                        if k.startswith(("val_", "train_")) and v is not None))
    for member in result.members:  # ensemble.seeds
        value = f"{result.monitor} = {member.best['value']:.4f}" if member.best else "-"
        table.add_row(f"  {member.run_dir.name}", f"{value}  ({escape(member.stop_reason)})")
    table.add_row("best checkpoint", escape(str(result.best_checkpoint or "-")))
    table.add_row("last checkpoint", escape(str(result.last_checkpoint or "-")))
    if result.diagnostic_checkpoint:
        table.add_row("diagnostic checkpoint", escape(str(result.diagnostic_checkpoint)))
    console.print(table)
    if result.interrupted:
        console.print(f"[yellow]interrupted by {result.signal}[/]: resume exactly with "
                      f"[bold]nnrun train --resume {escape(str(result.run_dir))}[/]")
