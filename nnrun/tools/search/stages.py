"""Coarse-to-fine narrowing between search stages (CS231n: search wide with short runs, then
narrow around the best region with longer ones).

Each numeric range shrinks to the span of the best `keep_top` fraction of the previous stage's
trials on the range's own scale (log for log distributions), padded a little so the next stage
can still move, and clipped to the original range. Choices are kept whole: a categorical
winner of a few short runs is too noisy to drop the alternatives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from nnrun.recipe.search import Param

PAD = 0.1  # share of the kept span added on each side
MIN_PAD = 0.025  # ... and at least this share of the original span, so a single point still has room


def top_trials(trials: Sequence[tuple[float, dict]], keep_top: float, mode: str) -> list[tuple[float, dict]]:
    """The best `keep_top` fraction (at least one, at least two when there are two) of (value, params)."""
    ranked = sorted(trials, key=lambda t: t[0], reverse=(mode == "max"))
    n = max(min(2, len(ranked)), math.ceil(keep_top * len(ranked)))
    return ranked[:n]


def narrow_param(param: Param, values: Sequence[float], original: Param) -> Param:
    """The range of `param` narrowed to `values` (padded, on its scale) and clipped to `original`.

    Args:
        param: the current stage's distribution.
        values: this parameter's values in the kept trials.
        original: the distribution as written in the search section (the outer bounds).
    """
    if not param.numeric or not values:
        return param
    lo, hi = min(param.scale(v) for v in values), max(param.scale(v) for v in values)
    olo, ohi = original.scale(original.low), original.scale(original.high)
    pad = max(PAD * (hi - lo), MIN_PAD * (ohi - olo))
    new_lo, new_hi = param.unscale(max(olo, lo - pad)), param.unscale(min(ohi, hi + pad))
    new_lo, new_hi = max(new_lo, original.low), min(new_hi, original.high)  # exp/log round-off
    if param.integer:
        new_lo, new_hi = int(math.floor(new_lo + 1e-9)), int(math.ceil(new_hi - 1e-9))
    return replace(param, low=new_lo, high=new_hi)


def narrow(params: Sequence[Param], trials: Sequence[tuple[float, dict]], *, keep_top: float, mode: str,
           original: Sequence[Param]) -> tuple[list[Param], list[str]]:
    """Narrow every numeric range around the best trials of the previous stage.

    Args:
        params: the previous stage's distributions.
        trials: (metric value, {key: value}) of the previous stage's finished trials.
        keep_top: the fraction of those trials to narrow around.
        mode: "max" or "min" (which values are best).
        original: the search section's distributions, the outer bounds.

    Returns:
        (new distributions, one line per parameter saying what it narrowed to).
    """
    kept = top_trials(trials, keep_top, mode)
    by_key = {p.key: p for p in original}
    new, lines = [], []
    for p in params:
        values = [t[1][p.key] for t in kept if p.key in t[1]]
        q = narrow_param(p, values, by_key.get(p.key, p))
        new.append(q)
        if p.numeric:
            scale = " (log scale)" if p.log else ""
            lines.append(f"{p.key}: [{p.low:.4g}, {p.high:.4g}] -> [{q.low:.4g}, {q.high:.4g}]{scale}, "
                         f"around the best {len(kept)} of {len(trials)} trials")
        else:
            lines.append(f"{p.key}: kept all {len(p.choices)} choices")
    return new, lines
