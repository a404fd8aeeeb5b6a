"""`nnrun report` as a function: compare runs in a table, curves, a PNG and one HTML page.

The arguments are run folders, search folders (every trial) or any folders of runs
(:func:`nnrun.tools.report.runs.find_runs`). Runs are compared by one metric: `metric` when given,
else the metric the runs monitor (`train.monitor`; the most common one when they differ, with a
note). The recipe keys whose values differ between the runs are found by flattening each run's
resolved recipe (:mod:`nnrun.tools.report.diff`). Nothing here imports torch or loads a checkpoint.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nnrun.errors import NnrunError, did_you_mean
from nnrun.files import write_atomic, write_text_atomic
from nnrun.progress import task
from nnrun.tools.report import diff
from nnrun.tools.report.curves import colors, from_history, run_curves
from nnrun.tools.report.render import html_page, png_bytes, pyplot
from nnrun.tools.report.runs import Report, Run, find_runs, labels, mode_of, read_run

POSITION = ("epoch", "step")


@dataclass
class ReportResult:
    report: Report
    png: Path | None
    html: Path | None


def collect(paths: list[str | Path], *, metric: str | None = None, curves: bool = True) -> Report:
    """Find and read the runs, pick the metric, find the differing recipe keys; with `curves`, read
    each run's curves too (its TensorBoard events: the slow part with long runs).

    Raises:
        NnrunError: no runs (a missing path, a folder without runs), or a `metric` no run recorded.
        RecipeError: a run's recipe.yaml that is not readable YAML.
    """
    folders = find_runs(paths)
    runs: list[Run] = []
    with task("reading runs", len(folders)) as handle:
        for folder, label, color in zip(folders, labels(folders), colors(len(folders))):
            run = read_run(folder, label)
            run.color = color
            run.curves = run_curves(folder, run.history, None, run.notes) if curves else None
            runs.append(run)
            handle.advance()
    name, mode, notes = choose_metric(runs, metric)
    for run in runs:
        if run.curves is not None and name:
            run.curves.metric = from_history(run.history, name)
    keys = diff.differing_keys([r.recipe for r in runs])
    return Report(runs=runs, metric=name, mode=mode, keys=keys, values=[diff.values(r.recipe, keys) for r in runs],
                  notes=notes + [n for r in runs for n in r.notes])


def recorded(runs: list[Run]) -> list[str]:
    """The losses and metrics the runs recorded (not the position or the rates)."""
    names = dict.fromkeys(k for r in runs for rec in r.history for k in rec)
    return [k for k in names if k not in POSITION and not k.startswith(("lr/", "momentum/"))]


def choose_metric(runs: list[Run], wanted: str | None) -> tuple[str | None, str | None, list[str]]:
    """(metric, its direction, notes): `wanted` (which some run must have recorded), else the
    metric most runs monitor."""
    if wanted:
        seen = recorded(runs)
        if wanted not in seen:
            raise NnrunError(f"no run recorded `{wanted}`{did_you_mean(wanted, seen)}", where="--metric",
                             hint=f"choose one the runs recorded: {', '.join(seen) or 'none yet'}")
        modes = {r.mode for r in runs if r.monitor == wanted and r.mode}
        return wanted, modes.pop() if len(modes) == 1 else mode_of(wanted), []
    monitors = Counter(r.monitor for r in runs if r.monitor)
    if not monitors:
        return None, None, []
    name = monitors.most_common(1)[0][0]
    mode = next((r.mode for r in runs if r.monitor == name and r.mode), None) or mode_of(name)
    notes = []
    if len(monitors) > 1:
        notes.append(f"the runs monitor different metrics ({', '.join(monitors)}): all are compared by {name}; "
                     "choose the metric with --metric")
    return name, mode, notes


def check_outputs(out: str | Path | None, html: str | Path | None) -> None:
    """Refuse output names that say another format, and a missing matplotlib, before reading any run."""
    if out is not None and Path(out).suffix.lower() != ".png":
        raise NnrunError(f"{out} does not end in .png: the report image is a PNG", where="--out",
                         hint=f"name it with .png, e.g. --out {Path(out).with_suffix('.png')}")
    if html is not None and Path(html).suffix.lower() not in (".html", ".htm"):
        raise NnrunError(f"{html} does not end in .html: the report page is HTML", where="--html",
                         hint=f"name it with .html, e.g. --html {Path(html).with_suffix('.html')}")
    if out is not None or html is not None:
        pyplot()


def run(paths: list[str | Path], *, out: str | Path | None = None, html: str | Path | None = None,
        metric: str | None = None, curves: bool = True) -> ReportResult:
    """Compare the runs; with `out` write the PNG, with `html` the self-contained page.

    Args:
        paths: run folders, search folders or folders of runs.
        out: the PNG to write (needs matplotlib).
        html: the HTML page to write (needs matplotlib for its image).
        metric: the metric to compare by (default: the monitored one).
        curves: read the curves even without `out` or `html` (for the terminal charts).

    Raises:
        NnrunError: see :func:`collect`; an output name with another suffix; no matplotlib.
        OutputError: an output that cannot be written (the message names it).
    """
    check_outputs(out, html)
    report = collect(paths, metric=metric, curves=curves or out is not None or html is not None)
    png = png_bytes(report) if out is not None or html is not None else b""
    if out is not None:
        write_atomic(Path(out), lambda f: f.write(png), what=f"the report image {out}",
                     hint="choose a writable path with --out")
    if html is not None:
        page = html_page(report, png, generated=datetime.now().strftime("%Y-%m-%d %H:%M"))
        write_text_atomic(Path(html), page, what=f"the report page {html}", hint="choose a writable path with --html")
    return ReportResult(report=report, png=Path(out) if out is not None else None,
                        html=Path(html) if html is not None else None)
