"""`nnrun overfit-one-batch RECIPE [key=value ...]`: the debugging checklist as one command."""

from __future__ import annotations

import math
import sys

import click

from nnrun.cli.common import device_option, err_console, out_console, recipe_argument, split_recipe_args

STYLES = {"PASS": "bold green", "WARN": "bold yellow", "FAIL": "bold red", "INFO": "cyan"}
BARS = "▁▂▃▄▅▆▇█"


@click.command("overfit-one-batch", context_settings={"ignore_unknown_options": True})
@recipe_argument()
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Examples in the fixed batch (default: the recipe's data.batch_size).")
@click.option("--examples", type=click.IntRange(min=1),
              help="Same as --batch-size; --examples 1 memorizes a single example.")
@click.option("--steps", type=click.IntRange(min=1), default=500, show_default=True,
              help="Step budget; stops early once the batch is memorized.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Also write the report (verdict, each check's status and evidence) as JSON.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output folder for TensorBoard scalars and report.json "
                   "(default runs/<name>/overfit-<timestamp>/).")
@device_option()
def command(args, batch_size, examples, steps, json_path, out, device):
    """Can the model memorize one fixed batch? Runs the debugging checklist around it.

    Exit code 0 on PASS (memorized, no check failed), 1 on FAIL, 2 on a usage error.

    \b
    nnrun overfit-one-batch quickstart
    nnrun overfit-one-batch my.yaml --examples 1 --steps 200 --json report.json
    nnrun overfit-one-batch quickstart optimizer.lr=1e-2 --batch-size 16
    """
    from pathlib import Path

    from nnrun import recipe as recipe_io
    from nnrun.cli.progress import make_progress
    from nnrun.runtime import is_main_process
    from nnrun.workflows.overfit import run

    if batch_size and examples and batch_size != examples:
        raise click.UsageError("--batch-size and --examples both set the size of the fixed batch; give one")
    name, overrides = split_recipe_args(args)
    recipe = recipe_io.load(name, overrides)
    console = err_console()
    console.print(f"[bold]nnrun overfit-one-batch[/] {recipe.name}: {recipe.model.arch} on {recipe.data.source}, "
                  f"{recipe.optimizer.name} lr={recipe.optimizer.lr:g}, up to {steps} steps")
    progress = make_progress(recipe.log.progress, console, recipe.log.refresh_per_second)
    result = run(recipe, steps=steps, batch_size=examples or batch_size, device=device,
                 out=Path(out) if out else None, callbacks=[progress] if progress else [])
    render(console, result)
    if json_path and is_main_process():
        result.write_json(json_path)
    out_console().print(result.summary + (f" ({result.out_dir})" if result.out_dir else ""))
    sys.exit(result.exit_code)


def render(console, result) -> None:
    """The report table, the loss curve and the verdict, on the stderr console."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"overfit one batch: {escape(result.recipe)}", show_lines=True)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("evidence", overflow="fold")
    table.add_column("advice", overflow="fold")
    for row in result.rows:
        style = STYLES.get(row.status, "")
        table.add_row(escape(row.check), f"[{style}]{row.status}[/]", escape(row.evidence), escape(row.advice))
    console.print(table)
    if result.loss_curve:
        console.print(f"loss  {escape(sparkline_text(result.loss_curve))}")
    colour = STYLES["PASS" if result.verdict == "PASS" else "FAIL"]
    console.print(f"[{colour}]{escape(result.summary)}[/]  ({result.seconds:.1f} s)")


def sparkline(values: list[float], width: int = 60) -> str:
    """A unicode sparkline of ``values`` on a log scale (x for NaN/Inf), at most ``width`` wide."""
    if not values:
        return ""
    step = max(1, math.ceil(len(values) / width))
    points = [values[i:i + step] for i in range(0, len(values), step)]
    points = [min(p) if all(math.isfinite(v) for v in p) else math.nan for p in points]
    logs = [math.log10(max(v, 1e-12)) for v in points if math.isfinite(v)]
    if not logs:
        return "x" * len(points)
    lo, hi = min(logs), max(logs)
    out = []
    for v in points:
        if not math.isfinite(v):
            out.append("x")
            continue
        frac = 0.0 if hi == lo else (math.log10(max(v, 1e-12)) - lo) / (hi - lo)
        out.append(BARS[min(int(frac * len(BARS)), len(BARS) - 1)])
    return "".join(out)


def sparkline_text(values: list[float]) -> str:
    """``2.31 ▇▆▅▃▂▁ 0.0312  (log scale, 87 steps, min 0.0312)``."""
    finite = [v for v in values if math.isfinite(v)]
    low = f", min {min(finite):.3g}" if finite else ""
    return f"{values[0]:.3g} {sparkline(values)} {values[-1]:.3g}  (log scale, {len(values)} steps{low})"
