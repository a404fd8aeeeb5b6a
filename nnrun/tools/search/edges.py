"""The boundary warning (CS231n: "careful with best values on border").

When the best value of a numeric parameter lies in the outer 10% of its range, measured on the
range's own scale (log for log distributions), the optimum may lie outside: widen that side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nnrun.recipe.search import Param

EDGE = 0.1


def edge_position(param: Param, value: float) -> float:
    """Where `value` sits in the range of `param`, 0 (low end) to 1 (high end), on its scale."""
    lo, hi = param.scale(param.low), param.scale(param.high)
    return (param.scale(value) - lo) / (hi - lo) if hi > lo else 0.5


def edge_warnings(best: dict[str, Any], params: Sequence[Param], *, edge: float = EDGE) -> list[str]:
    """One warning per numeric parameter whose best value lies in the outer `edge` of its range.

    Args:
        best: the best trial's {key: value}.
        params: the search section's (original, un-narrowed) distributions.
        edge: the share of the range at each end that counts as "near the edge".
    """
    out = []
    for p in params:
        if not p.numeric or p.key not in best:
            continue
        pos = edge_position(p, best[p.key])
        if pos >= edge and pos <= 1 - edge:
            continue
        side, bound = ("low", p.low) if pos < edge else ("high", p.high)
        scale = " on a log scale" if p.log else ""
        direction = "below" if side == "low" else "above"
        out.append(f"best {p.key} = {best[p.key]:.4g} lies in the {side} {edge:.0%} of its range "
                   f"[{p.low:.4g}, {p.high:.4g}]{scale}: widen the range {direction} {bound:.4g} and search again")
    return out
