"""What `nnrun report` shows, as text cells (the terminal and the HTML page render the same ones),
a PNG of the curves (matplotlib), and one self-contained HTML page.

The PNG is 2x2 panels against optimizer steps: training loss, validation loss, the compared
metric, and the learning rate (log scale), one colour per run, and one legend under the panels
naming each run and its values of the differing recipe keys. Its size is fixed by the number of
runs (:func:`figure_size`), never by the text (no tight bounding box).

The HTML page is one file with nothing external: inline CSS, no script, the PNG as a base64
`data:` URI, the tables as HTML tables, and each run's resolved recipe in `<details><pre>`; every
piece of text from a run folder goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import math

from nnrun.errors import NnrunError
from nnrun.tools.report.curves import Curve
from nnrun.tools.report.runs import Report, Run

WIDTH_PX, PANELS_PX, LEGEND_ROW_PX, LEGEND_PAD_PX, DPI = 1200, 800, 22, 16, 100
MAX_POINTS = 4000  # per curve in the PNG: a panel is ~500 pixels wide, more points only cost time
LEGEND_COLUMNS = 2
NA = "-"


# ---------------------------------------------------------------------------------------------
# cells


def seconds_text(seconds: float | None) -> str:
    """`12.3 s`, `4 min 05 s`, `2 h 03 min`."""
    if seconds is None:
        return NA
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def number_text(value: float | None, name: str = "") -> str:
    if value is None:
        return NA
    return f"{value:.4f}" if not name.endswith("loss") else f"{value:.4g}"


def run_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """(column titles, one row of cells per run): the table the terminal and the page show."""
    metric = report.metric or "metric"
    columns = ["run", f"best {metric}", "epoch", "last", "steps", "wall time", "stopped", *report.keys]
    rows = []
    for run, values in zip(report.runs, report.values):
        best = run.best(report.metric, report.mode) if report.metric else None
        last = "  ".join(f"{k}={number_text(v, k)}" for k, v in run.last().items()) or NA
        epoch = f"{best['epoch']:g}" if best and isinstance(best.get("epoch"), (int, float)) else NA
        rows.append([run.label, number_text(best["value"]) if best else NA, epoch, last,
                     str(run.steps) if run.steps is not None else NA, seconds_text(run.seconds),
                     run.stop_reason or NA, *(values[k] for k in report.keys)])
    return columns, rows


def last_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """The last evaluation of each run, one column per loss or metric."""
    names = list(dict.fromkeys(k for run in report.runs for k in run.last()))
    rows = [[run.label, *(number_text(run.last().get(k), k) for k in names)] for run in report.runs]
    return ["run", *names], rows


def panels(report: Report) -> list[tuple[str, bool, list[list[Curve]]]]:
    """(title, log scale, per run its curves) of the four panels; the PNG and the terminal draw these."""
    def of(run: Run, pick) -> list[Curve]:
        return pick(run.curves) if run.curves is not None else []

    return [
        ("training loss", False, [of(r, lambda c: [c.train_loss]) for r in report.runs]),
        ("validation loss", False, [of(r, lambda c: [c.val_loss]) for r in report.runs]),
        (report.metric or "metric", False, [of(r, lambda c: [c.metric]) for r in report.runs]),
        ("learning rate", True, [of(r, lambda c: list(c.lrs.values())) for r in report.runs]),
    ]


# ---------------------------------------------------------------------------------------------
# PNG


def figure_size(n_runs: int) -> tuple[int, int]:
    """The PNG's (width, height) in pixels: the panels plus one legend row per two runs."""
    rows = math.ceil(n_runs / LEGEND_COLUMNS)
    return WIDTH_PX, PANELS_PX + rows * LEGEND_ROW_PX + LEGEND_PAD_PX


def pyplot():
    """matplotlib's pyplot on the Agg backend, or the error that says how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise NnrunError("the PNG and HTML reports need matplotlib",
                         hint="pip install 'nnrun[plot]' (or matplotlib)") from exc
    return plt


def png_bytes(report: Report) -> bytes:
    """The 2x2 panels as PNG bytes (see the module docstring)."""
    plt = pyplot()
    width, height = figure_size(len(report.runs))
    fig, axes = plt.subplots(2, 2, figsize=(width / DPI, height / DPI), dpi=DPI)
    try:
        for ax, (title, log, per_run) in zip(axes.flat, panels(report)):
            _panel(ax, title, log, per_run, report.runs)
        handles = [plt.Line2D([], [], color=run.color, linewidth=2.5) for run in report.runs]
        fig.legend(handles, [report.legend(i) for i in range(len(report.runs))], loc="lower center",
                   ncol=min(LEGEND_COLUMNS, len(report.runs)), fontsize=9, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
        legend_px = height - PANELS_PX
        fig.subplots_adjust(left=0.07, right=0.98, top=1 - 70 / height, bottom=(legend_px + 45) / height,
                            hspace=0.3, wspace=0.18)
        fig.suptitle(f"nnrun report: {len(report.runs)} run(s), compared by {report.metric or '-'}", fontsize=12,
                     y=1 - 12 / height)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _panel(ax, title: str, log: bool, per_run: list[list[Curve]], runs: list[Run]) -> None:
    styles = ("-", "--", ":", "-.")
    drawn = False
    for run, curves in zip(runs, per_run):
        for k, curve in enumerate(c for c in curves if c):
            stride = max(1, math.ceil(len(curve.values) / MAX_POINTS))
            xs = curve.steps[::stride]
            ys = [math.nan if v is None or (log and v <= 0) else v for v in curve.values[::stride]]
            marker = "o" if len(ys) <= 30 else None  # a curve of a few evaluations: show where they are
            ax.plot(xs, ys, color=run.color, linewidth=1.8, linestyle=styles[k % len(styles)],
                    marker=marker, markersize=3)
            drawn = True
    ax.set_title(title + (" (log scale)" if log else ""), fontsize=10)
    ax.set_xlabel("optimizer step", fontsize=9)
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#777777")
    elif log:
        ax.set_yscale("log")


# ---------------------------------------------------------------------------------------------
# HTML

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.best td { font-weight: bold; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em; vertical-align: middle; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 13px; }
.notes li { color: #8a5a00; }
"""


def _table(columns: list[str], rows: list[list[str]], runs: list[Run], table_id: str, best: Run | None) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for run, cells in zip(runs, rows):
        first = f'<span class="swatch" style="background:{esc(run.color)}"></span>{esc(cells[0])}'
        rest = "".join(f"<td>{esc(c)}</td>" for c in cells[1:])
        mark = ' class="best"' if run is best else ""
        body.append(f"<tr{mark}><td>{first}</td>{rest}</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def html_page(report: Report, png: bytes, *, generated: str) -> str:
    """The self-contained report page (see the module docstring)."""
    esc = html.escape
    best = report.best_run()
    keys = ", ".join(f"<code>{esc(k)}</code>" for k in report.keys) or "none (the recipes are the same)"
    direction = {"max": "higher is better", "min": "lower is better"}.get(report.mode or "", "direction unknown")
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.notes)
    recipes = "".join(
        f'<details class="recipe"><summary><span class="swatch" style="background:{esc(run.color)}"></span>'
        f"{esc(run.label)} <small>({esc(str(run.path))})</small></summary><pre>{esc(run.recipe_text)}</pre></details>"
        for run in report.runs)
    image = base64.b64encode(png).decode("ascii")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>nnrun report: {len(report.runs)} run(s)</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        f"<h1>nnrun report: {len(report.runs)} run(s)</h1>",
        f"<p>Compared by <code>{esc(report.metric or '-')}</code> ({direction}); generated {esc(generated)}. "
        f"Recipe keys that differ: {keys}.</p>",
        f'<ul class="notes">{notes}</ul>' if notes else "",
        "<h2>Runs</h2>", _table(*run_table(report), report.runs, "runs", best),
        "<h2>Curves</h2>",
        f'<img id="curves" alt="training loss, validation loss, {esc(report.metric or "metric")} and learning rate '
        f'of each run against optimizer steps" src="data:image/png;base64,{image}">',
        "<h2>Last evaluation</h2>", _table(*last_table(report), report.runs, "last", best),
        "<h2>Recipes</h2>", f'<div id="recipes">{recipes}</div>',
        "</body>", "</html>", ""])
