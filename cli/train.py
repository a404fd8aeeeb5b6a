"""`nnrun train RECIPE [key=value ...]`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nnrun.cli.common import (
    device_option,
    err_console,
    is_rank_zero,
    is_worker,
    out_console,
    recipe_argument,
    split_recipe_args,
)


@click.command("train", context_settings={"ignore_unknown_options": True})
@recipe_argument("[RECIPE] [KEY=VALUE]...")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run folder (default runs/<name>/<timestamp>/).")
@click.option("--resume", "resume", type=click.Path(),
              help="Checkpoint or run folder to continue exactly; `auto` (with --run-dir): continue the run "
                   "folder's last.pt when it has one, else start.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train data-parallel in N processes on this machine (torchrun in-process; for several "
                   "machines call torchrun -m nnrun train ...).")
@click.option("--no-download", is_flag=True,
              help="Never download a public dataset (mnist, fashion-mnist, cifar10): data.download=false.")
@device_option()
def command(args, run_dir, resume, nproc, device, no_download):
    """Train RECIPE (a .yaml file or a shipped recipe name) with dotted overrides.

    \b
    nnrun train quickstart
    nnrun train recipes/quickstart.yaml optimizer.lr=3e-4 train.epochs=3
    nnrun train --resume runs/quickstart/20261124-101500 train.epochs=20
    nnrun train quickstart --nproc 2
    torchrun --nproc-per-node=4 -m nnrun train my.yaml --run-dir runs/job --resume auto
    """
    args = (*args, "data.download=false") if no_download else args
    recipe = _recipe(args, run_dir, resume)
    if nproc > 1 and not is_worker():
        argv = [*args] + [f"--{k}={v}" for k, v in (("run-dir", run_dir), ("resume", resume), ("device", device)) if v]
        from nnrun.distributed import launch_local

        err_console().print(f"[bold]nnrun train[/] {recipe.name}: {nproc} processes (torchrun)")
        sys.exit(launch_local(nproc, argv))
    _train(recipe, run_dir, resume, device)


def _recipe(args, run_dir, resume):
    """RECIPE (+ overrides), or the recipe stored in the checkpoint being resumed."""
    from nnrun import recipe as recipe_io
    from nnrun.workflows.train import auto_resume, resume_recipe

    name, overrides = split_recipe_args(args, required=resume is None)
    if name:
        return recipe_io.load(name, overrides)
    found = auto_resume(resume, Path(run_dir) if run_dir else None)
    if found is None:
        raise click.UsageError(f"{run_dir} holds no last.pt yet: give RECIPE to start the run (--resume auto "
                               "continues it from then on)")
    return resume_recipe(found, overrides)


def _train(recipe, run_dir, resume, device) -> None:
    from rich.markup import escape

    from nnrun.cli.progress import make_progress
    from nnrun.workflows.train import run

    main = not is_worker() or is_rank_zero()
    console = err_console()
    progress = make_progress(recipe.log.progress, console, recipe.log.refresh_per_second) if main else None
    if main:
        console.print(f"[bold]nnrun train[/] {recipe.name}: {recipe.model.arch} on {recipe.data.source}, "
                      f"{recipe.optimizer.name} lr={recipe.optimizer.lr:g}, {recipe.train.epochs:g} epochs")

    def show_notes(lines: list[str]) -> None:
        for line in lines if main else []:
            console.print(f"  {escape(line)}")

    result = run(recipe,
                 notes=show_notes,
                 run_dir=Path(run_dir) if run_dir else None,
                 resume=resume,
                 device=device,
                 callbacks=[progress] if progress else [])
    if main:
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
