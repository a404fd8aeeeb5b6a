"""Compact terminal charts (rendering only: the numbers come from the library)."""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = " ▁▂▃▄▅▆▇█"


def line_chart(values: Sequence[float], *, width: int = 64, height: int = 8, log: bool = False) -> list[str]:
    """Rows of a bar-style chart of `values` resampled to `width` columns (top row first)."""
    pts = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not pts:
        return ["(nothing to draw)"]
    cols = [values[min(len(values) - 1, int(i * len(values) / width))] for i in range(min(width, len(values)))]
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    ys = [f(v) if v is not None and math.isfinite(v) and (v > 0 or not log) else None for v in cols]
    finite = [y for y in ys if y is not None]
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    rows = []
    for r in range(height - 1, -1, -1):
        line = ""
        for y in ys:
            level = 0 if y is None else (y - lo) / span * height - r
            line += BLOCKS[max(0, min(8, int(round(level * 8))))] if level < 1 else BLOCKS[8]
        rows.append(line)
    return rows


def labelled_chart(values: Sequence[float], *, label: str, log: bool = False, width: int = 64,
                   height: int = 6) -> str:
    """A chart with its max/min on the left edge."""
    pts = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not pts:
        return f"{label}: (no finite values)"
    rows = line_chart(values, width=width, height=height, log=log)
    top, bottom = f"{max(pts):.3g}", f"{min(pts):.3g}"
    pad = max(len(top), len(bottom))
    body = [f"{(top if i == 0 else bottom if i == len(rows) - 1 else ''):>{pad}} ┤{row}" for i, row in enumerate(rows)]
    return "\n".join([label] + body)


def overlay(series: Sequence[tuple[Sequence[float], Sequence[float | None]]], *, width: int = 48,
            log: bool = False) -> tuple[list[str], float, float, float, float] | None:
    """One sparkline row per (steps, values) series on a shared step axis and a shared value scale,
    so rows compare at a glance: a column holds the mean of its points, columns between points are
    interpolated, and columns before a series' first point or past its last stay blank.

    Returns (rows, lowest value, highest value, first step, last step), or None with nothing to draw.
    """
    def ok(v) -> bool:
        return v is not None and math.isfinite(v) and (v > 0 or not log)

    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    points = [[(x, f(v)) for x, v in zip(xs, vs) if ok(v)] for xs, vs in series]
    every = [p for pts in points for p in pts]
    if not every:
        return None
    x0, x1 = min(x for x, _ in every), max(x for x, _ in every)
    lo, hi = min(y for _, y in every), max(y for _, y in every)
    rows = [_spark(pts, x0, x1, lo, hi, width) for pts in points]
    back = (lambda y: 10 ** y) if log else (lambda y: y)
    return rows, back(lo), back(hi), x0, x1


def _spark(points: list[tuple[float, float]], x0: float, x1: float, lo: float, hi: float, width: int) -> str:
    columns: list[list[float]] = [[] for _ in range(width)]
    for x, y in points:
        columns[min(width - 1, int((x - x0) / (x1 - x0) * width)) if x1 > x0 else 0].append(y)
    known = {i: sum(c) / len(c) for i, c in enumerate(columns) if c}
    if not known:
        return " " * width
    used = sorted(known)
    out = ""
    for i in range(width):
        if i < used[0] or i > used[-1]:
            out += " "
            continue
        if i not in known:
            a = max(j for j in used if j < i)
            b = min(j for j in used if j > i)
            known[i] = known[a] + (known[b] - known[a]) * (i - a) / (b - a)
        out += BLOCKS[4 if hi == lo else 1 + int(round((known[i] - lo) / (hi - lo) * 7))]
    return out
