"""`nnrun report RUN_OR_FOLDER...`: compare runs in a table, terminal curves, a PNG and an HTML page."""

from __future__ import annotations

import click

from nnrun.cli.common import err_console, out_console, print_notes

LABEL_WIDTH = 28


@click.command("report")
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="RUN_OR_FOLDER...")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Also write a PNG: training and validation loss, the metric and the learning rate against "
                   "steps (needs matplotlib).")
@click.option("--html", type=click.Path(dir_okay=False),
              help="Also write one self-contained HTML page: the tables, the PNG and each run's recipe "
                   "(needs matplotlib).")
@click.option("--metric", help="Compare the runs by this metric (default: the one they monitor, train.monitor).")
@click.option("--curves/--no-curves", default=True, show_default=True, help="Draw the curves in the terminal.")
def command(paths, out, html, metric, curves):
    """Compare runs: run folders, a search folder (every trial) or any folder of runs.

    \b
    nnrun report runs/quickstart
    nnrun report runs/quickstart/search-20261201-101500 --out report.png --html report.html
    nnrun report runs/a runs/b --metric val_loss --no-curves
    """
    from nnrun.workflows import report as wf

    result = wf.run(list(paths), out=out, html=html, metric=metric, curves=curves)
    report = result.report
    console = err_console()
    _table(console, report)
    if curves:
        _curves(console, report)
    print_notes(console, notes=report.notes)
    for path in (result.png, result.html):
        if path is not None:
            out_console().print(str(path), markup=False, highlight=False)


def _wide(console):
    """The console to print a wide table on: logs and CI get the whole table, not 80 folded columns."""
    if console.is_terminal:
        return console
    from rich.console import Console

    return Console(stderr=True, highlight=False, width=max(console.width, 220))


def _table(console, report) -> None:
    from rich.markup import escape
    from rich.table import Table

    from nnrun.tools.report.render import run_table

    columns, rows = run_table(report)
    direction = {"max": "higher is better", "min": "lower is better"}.get(report.mode or "", "direction unknown")
    keys = ", ".join(report.keys) if report.keys else "none"
    table = Table(title=escape(f"{len(report.runs)} run(s) by {report.metric or '-'} ({direction}); "
                               f"differing recipe keys: {keys}"))
    for col in columns:
        table.add_column(escape(col), overflow="fold")
    best = report.best_run()
    for run, cells in zip(report.runs, rows):
        label = f"[{run.color}]■[/] {escape(cells[0])}"
        table.add_row(label, *(escape(c) for c in cells[1:]), style="bold" if run is best else None)
    _wide(console).print(table)


def _curves(console, report) -> None:
    from rich.markup import escape

    from nnrun.cli.charts import overlay
    from nnrun.tools.report.render import panels

    for title, log, per_run in panels(report):
        rows = [(run, curve, f" {name}" if len(curves) > 1 else "")
                for run, curves in zip(report.runs, per_run)
                for name, curve in zip(_names(run, title, curves), curves)]
        drawn = overlay([(c.steps, c.values) for _, c, _ in rows], log=log)
        if drawn is None:
            console.print(f"[bold]{escape(title)}[/]: (no values)")
            continue
        sparks, lo, hi, x0, x1 = drawn
        pad = min(LABEL_WIDTH, max(len(run.label + suffix) for run, _, suffix in rows))
        console.print(f"[bold]{escape(title)}[/]{' (log scale)' if log else ''}: {lo:.3g} … {hi:.3g} over steps "
                      f"{x0:g}–{x1:g}", soft_wrap=True)
        for (run, curve, suffix), spark in zip(rows, sparks):
            label = (run.label + suffix)[-pad:]
            last = f"{curve.last:.4g}" if curve.last is not None else "-"
            console.print(f"  [{run.color}]{escape(f'{label:<{pad}}')} {spark}[/] {last}", soft_wrap=True)


def _names(run, title: str, curves) -> list[str]:
    """The group names of a run's learning-rate curves (one curve per group), else blanks."""
    if title == "learning rate" and run.curves is not None:
        return list(run.curves.lrs)
    return [""] * len(curves)
