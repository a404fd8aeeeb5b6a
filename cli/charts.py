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
