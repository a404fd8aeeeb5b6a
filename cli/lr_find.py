"""`nnrun lr-find RECIPE [key=value ...]`: the learning-rate range test.

Progress, the terminal chart, the summary table, warnings and errors go to stderr; the recommended
learning rate (alone, so `$(nnrun lr-find ...)` works) goes to stdout.
"""

from __future__ import annotations

import math

import click

from nnrun.cli.common import device_option, err_console, out_console, print_notes, recipe_argument, split_recipe_args

BLOCKS = " ▁▂▃▄▅▆▇█"


@click.command("lr-find", context_settings={"ignore_unknown_options": True})
@recipe_argument()
@click.option("--start", type=float, default=1e-7, show_default=True, help="First learning rate.")
@click.option("--end", type=float, default=10.0, show_default=True, help="Last learning rate.")
@click.option("--steps", type=click.IntRange(min=2), default=100, show_default=True,
              help="Training steps (mini-batches; continues into the next epochs when needed).")
@click.option("--mode", type=click.Choice(["exp", "linear"]), default="exp", show_default=True,
              help="Ramp: exponential (equal steps per decade) or linear.")
@click.option("--smooth", type=float, default=0.05, show_default=True,
              help="EMA weight of the newest loss (beta = 1 - smooth), bias-corrected; 1: no smoothing.")
@click.option("--diverge", type=float, default=4.0, show_default=True,
              help="Stop when the smoothed loss exceeds this many times its best.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output folder (default runs/<name>/lr-find-<timestamp>/).")
@click.option("--write-recipe", type=click.Path(dir_okay=False),
              help="Write a copy of the recipe with optimizer.lr set to the recommendation.")
@device_option()
def command(args, start, end, steps, mode, smooth, diverge, out_dir, write_recipe, device):
    """Learning-rate range test of RECIPE: suggestions by several rules, a plot and a CSV.

    \b
    nnrun lr-find quickstart
    nnrun lr-find quickstart optimizer.name=sgd --end 1 --write-recipe tuned.yaml
    nnrun train quickstart optimizer.lr=$(nnrun lr-find quickstart)
    """
    from pathlib import Path

    from nnrun import recipe as recipe_io
    from nnrun.errors import NnrunError
    from nnrun.tools.lr_find import RangeTestSettings
    from nnrun.workflows.lr_find import run

    name, overrides = split_recipe_args(args)
    recipe = recipe_io.load(name, overrides)
    settings = RangeTestSettings(start=start, end=end, steps=steps, mode=mode, smooth=smooth, diverge=diverge)
    settings.check()
    console = err_console()
    console.print(f"[bold]nnrun lr-find[/] {recipe.name}: {recipe.model.arch} on {recipe.data.source}, "
                  f"{recipe.optimizer.name}, lr {start:g} -> {end:g} over {steps} steps ({mode})")
    with _progress(console, steps) as on_step:
        result = run(recipe, settings=settings, out_dir=Path(out_dir) if out_dir else None,
                     write_recipe_to=Path(write_recipe) if write_recipe else None, device=device,
                     on_step=on_step)
    render(console, result)
    s = result.suggestions
    if s.lr is None:
        curve_file = result.files.get("plot") or result.files.get("csv") or result.out_dir
        raise NnrunError(f"no learning rate suggested: {s.refused}",
                         hint=f"change the range as said, after a look at the curve in {curve_file}")
    out_console().print(f"{s.lr:g}")


class _progress:
    """A transient rich progress bar on a terminal; nothing elsewhere."""

    def __init__(self, console, steps: int):
        self.console, self.steps, self.bar = console, steps, None

    def __enter__(self):
        if not self.console.is_terminal:
            return None
        from rich.progress import BarColumn, Progress, TextColumn

        self.bar = Progress(TextColumn("range test"), BarColumn(), TextColumn("{task.description}"),
                            console=self.console, transient=True)
        self.bar.start()
        task = self.bar.add_task("", total=self.steps)

        def on_step(i, lr, loss, smoothed):
            self.bar.update(task, completed=i + 1, description=f"lr {lr:.2e}  loss {smoothed:.4g}")
        return on_step

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def chart(curve, suggestions, width: int = 60, height: int = 6) -> list[str]:
    """The smoothed loss against log lr as block columns, with the recommendation marked below."""
    import numpy as np

    pts = [(math.log10(lr), v) for lr, v in zip(curve.lrs, curve.smoothed) if math.isfinite(v)]
    if len(pts) < 2:
        return []
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    cols = np.interp(np.linspace(x[0], x[-1], width), x, y)
    lo, hi = float(y.min()), float(min(y.max(), y[0] + 0.3 * abs(y[0]) + 1e-12))
    levels = np.clip((cols - lo) / max(hi - lo, 1e-12), 0, 1) * height * 8
    rows = []
    for r in range(height - 1, -1, -1):
        cell = np.clip(levels - r * 8, 0, 8).astype(int)
        rows.append("".join(BLOCKS[c] for c in cell))
    rows[0] = rows[0] + f" {hi:.3g}"
    rows[-1] = rows[-1] + f" {lo:.3g}"
    axis = f"{10 ** x[0]:<10.2g}".ljust(width - 10) + f"{10 ** x[-1]:>10.2g}"
    rows.append(axis)
    if suggestions.lr is not None and x[-1] > x[0]:
        pos = int(round((math.log10(suggestions.lr) - x[0]) / (x[-1] - x[0]) * (width - 1)))
        pos = min(max(pos, 0), width - 1)
        rows.append(" " * pos + f"^ {suggestions.lr:g} ({suggestions.recommended})")
    return rows


def _agreement(spread: float) -> str:
    if spread <= 0.5:
        return "good agreement"
    if spread <= 1.0:
        return "usual disagreement (~10x)"
    return "wide disagreement" if spread <= 2.0 else "poor agreement"


def render(console, result) -> None:
    """Chart, summary table, warnings and notes on the stderr console."""
    from rich.markup import escape
    from rich.table import Table

    from nnrun.tools.lr_find import RULE_DOCS, VOTING

    curve, s = result.curve, result.suggestions
    lines = chart(curve, s)
    if lines:
        console.print("smoothed loss vs learning rate (log axis)")
        console.print("\n".join(escape(line) for line in lines), soft_wrap=True)
    table = Table(title="lr-find summary")
    for col in ("", "lr", "smoothed loss", "note"):
        table.add_column(col, overflow="fold")
    table.add_row("range", f"{curve.lrs[0]:.2g} .. {curve.lrs[-1]:.2g}", "",
                  f"{len(curve)} of {curve.settings.steps} steps; {escape(curve.message)}")
    if s.min_lr is not None:
        table.add_row("loss minimum", f"{s.min_lr:.2g}", f"{min(curve.smoothed[:len(curve)]):.4g}", "smoothed curve")
    for name, rule in s.rules.items():
        star = name == s.recommended
        table.add_row(f"[bold green]{name} *[/]" if star else name, f"{rule.lr:.2g}", f"{rule.loss:.4g}",
                      RULE_DOCS[name] + ("" if name in VOTING else " (shown, does not vote)"))
    if s.spread_decades is not None:
        voting = [s.rules[k] for k in VOTING]
        lo_rule, hi_rule = min(voting, key=lambda r: r.lr), max(voting, key=lambda r: r.lr)
        table.add_row("spread", f"{s.spread_decades:.2f} decades", "",
                      f"{_agreement(s.spread_decades)} ({lo_rule.name} .. {hi_rule.name})")
    if s.lr is not None:
        table.add_row("[bold]recommended[/]", f"[bold green]{s.lr:g}[/]", "", f"{s.recommended}: {escape(s.reason)}")
        b = s.bounds
        table.add_row("cyclic", f"{b['cyclic_base_lr']:g} .. {b['cyclic_max_lr']:g}", "",
                      "base_lr .. max_lr (max_lr = max(recommended, minimum rule); base_lr = max_lr/4)")
        table.add_row("one_cycle", f"{b['one_cycle_max_lr']:g}", "",
                      f"max_lr (starts at max_lr/25 = {b['one_cycle_start_lr']:g})")
    for key in ("csv", "plot", "tb"):
        if key in result.files:
            table.add_row(key, "", "", escape(str(result.files[key])))
    if result.written_recipe is not None:
        table.add_row("recipe written", "", "", escape(str(result.written_recipe)))
    console.print(table)
    print_notes(console, warnings=s.warnings, notes=result.notes)
