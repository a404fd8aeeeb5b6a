"""The learning-rate range test (Smith 2015, §3.3; fastai / pytorch-lr-finder style) and its suggestions.

The test trains on the recipe's own batches, through :meth:`nnrun.trainer.Trainer.train_step` (so
clipping, accumulation of `clip.accumulate` micro-batches per step and the non-finite guard act as in
`nnrun train`), while
the learning rate rises every step from ``start`` to ``end`` (exponentially by default). The loss is
smoothed with a bias-corrected EMA (fastai ``AvgSmoothLoss``) and the test stops early when the
smoothed loss exceeds ``diverge`` times its best or the loss is not finite (a plain ``>`` is never
true for NaN: the bug in Lightning's and torch-lr-finder's stop). Afterwards the model (weights and
BatchNorm buffers), the optimizer (state and learning rates) and every RNG are put back exactly, in a
``finally`` (Lightning #6675, fastai #3013, torch-lr-finder #11 leak the test into the real run).

With several parameter groups every group's rate is its base-rate ratio times a common ramp, so the
ratios are kept (design notes §1, "Multiple param groups"); the curve's x-axis is the base rate,
``optimizer.lr`` of the recipe.

The suggestion rules (steep, valley, minimum/10, slide) run on the smoothed curve, trimmed as fastai
trims it, and are reported side by side with their spread in decades. The recommendation is the
median in log-lr of the three scale-free rules (steep, valley, minimum), so a single rule fooled by
noise (Lightning #1767, torch-lr-finder #106) cannot move it; rules at or past the loss minimum are
excluded. Curves that are too short or too flat get no suggestion rather than a garbage one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnrun.checkpoint import capture_rng, restore_rng
from nnrun.errors import NnrunError
from nnrun.training.trainer import LoopSettings, Trainer

MIN_POINTS = 10          # trimmed points needed before any rule is trusted
FLAT_DROP = 0.05         # the smoothed loss must fall by at least 5 % of its starting value
NOISE_RATIO = 0.1        # smoothed-curve noise above 10 % of the drop: "too noisy"
DISAGREE_DECADES = 2.0   # rules further apart than this (100x): warn; ~10x is usual
CYCLIC_DIV = 4           # Smith 2015: base_lr = max_lr / 3 .. / 4
ONE_CYCLE_DIV = 25       # PyTorch OneCycleLR / fastai div: initial lr = max_lr / 25
RULES = ("steep", "valley", "minimum", "slide")
# slide compares slopes with an absolute threshold (0.005 loss units), so it depends on the loss's
# scale; it is shown, but only the scale-free rules vote for the recommendation.
VOTING = ("steep", "valley", "minimum")


@dataclass(frozen=True)
class RangeTestSettings:
    """The knobs of one range test (the CLI options of `nnrun lr-find`)."""

    start: float = 1e-7
    end: float = 10.0
    steps: int = 100
    mode: str = "exp"
    smooth: float = 0.05
    diverge: float = 4.0

    def check(self) -> None:
        """Raise NnrunError for settings that cannot give a curve."""
        problems = []
        if not (self.start > 0 and math.isfinite(self.start)):
            problems.append(f"--start must be a positive number, got {self.start:g}")
        if not (self.end > self.start and math.isfinite(self.end)):
            problems.append(f"--end ({self.end:g}) must be larger than --start ({self.start:g})")
        if self.steps < 2:
            problems.append(f"--steps must be at least 2, got {self.steps}")
        if self.mode not in ("exp", "linear"):
            problems.append(f"--mode must be exp or linear, got {self.mode!r}")
        if not 0 < self.smooth <= 1:
            problems.append(f"--smooth must be in (0, 1] (weight of the newest loss), got {self.smooth:g}")
        if not self.diverge > 1:
            problems.append(f"--diverge must be larger than 1, got {self.diverge:g}")
        if problems:
            raise NnrunError("; ".join(problems), hint="e.g. --start 1e-7 --end 10 --steps 100 --smooth 0.05")


def ramp(settings: RangeTestSettings) -> np.ndarray:
    """The base learning rate of each step: `lr_i = start·(end/start)^(i/(N−1))` or linear.

    Uses D = N−1 (pytorch-lr-finder) so the last rate is exactly `end`.
    """
    s = settings
    t = np.arange(s.steps, dtype=np.float64) / (s.steps - 1)
    if s.mode == "exp":
        return s.start * (s.end / s.start) ** t
    return s.start + t * (s.end - s.start)


class Smoother:
    """Bias-corrected EMA: `v_k = β·v_{k−1} + (1−β)·x_k`, reported as `v_k / (1 − β^k)`, β = 1 − smooth."""

    def __init__(self, smooth: float):
        self.beta, self.avg, self.k = 1.0 - smooth, 0.0, 0

    def update(self, value: float) -> float:
        self.k += 1
        self.avg = self.beta * self.avg + (1.0 - self.beta) * value
        return self.avg / (1.0 - self.beta ** self.k)


def stop_reason(loss: float, smoothed: float, best: float, diverge: float) -> str | None:
    """Why the test must stop after this point, or None. Non-finite is tested explicitly."""
    if not (math.isfinite(loss) and math.isfinite(smoothed)):
        return "non-finite"
    if smoothed > diverge * best:
        return "diverged"
    return None


@dataclass
class Curve:
    """The recorded range test: base rate, raw and smoothed loss of every step run."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stop: str                     # "end", "diverged" or "non-finite"
    message: str
    settings: RangeTestSettings
    group_ratios: list[float] = field(default_factory=lambda: [1.0])

    def __len__(self) -> int:
        return len(self.lrs)


def _endless(batches: Any, per_step: int) -> Iterator[list[tuple]]:
    """The micro-batches of each step (`clip.accumulate` of them), epoch after epoch, so a test
    longer than one epoch keeps going."""
    epoch, group = 0, []
    while True:
        for batch in batches.epoch(epoch):
            group.append(batch)
            if len(group) == per_step:
                yield group
                group = []
        epoch += 1


def _stop_message(stop: str, lr: float, loss: float, smoothed: float, best: float, s: RangeTestSettings) -> str:
    if stop == "non-finite":
        return f"stopped: the loss became non-finite ({loss}) at lr {lr:.3g}"
    if stop == "diverged":
        return (f"stopped: smoothed loss {smoothed:.4g} exceeded {s.diverge:g}x its best ({best:.4g}) "
                f"at lr {lr:.3g}")
    return f"reached --end {s.end:g} without diverging"


def range_test(components: Any, settings: RangeTestSettings = RangeTestSettings(), *,
               base_lr: float | None = None, on_step: Callable[[int, float, float, float], None] | None = None
               ) -> Curve:
    """Run the range test on built components and put every state back afterwards.

    Args:
        components: :class:`nnrun.build.Components` (model, optimizer, loss_fn, train_batches).
        settings: the ramp, smoothing and stop settings.
        base_lr: the rate the x-axis refers to; every group keeps its ratio to it. Default: the
            recipe's `optimizer.lr`.
        on_step: called as `on_step(step, lr, loss, smoothed)` after each step (progress display).

    Returns:
        The recorded curve; the model, optimizer and RNG states are exactly as before the call.
    """
    settings.check()
    model, optimizer = components.model, components.optimizer
    base = float(base_lr if base_lr is not None else components.recipe.optimizer.lr)
    ratios = [g["lr"] / base for g in optimizer.param_groups]
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    saved_rng, modes = capture_rng(), [(m, m.training) for m in model.modules()]
    trainer = Trainer(components, LoopSettings(total_steps=settings.steps, log_every=settings.steps,
                                               eval_every=1, monitor="val_loss", mode="min", patience=None))
    per_step = components.recipe.clip.accumulate
    lrs, losses, smoothed = [], [], []
    smoother, best, stop = Smoother(settings.smooth), math.inf, "end"
    try:
        trainer.begin_epoch(0)  # frozen layers and BatchNorm modes exactly as training's first epoch
        for i, (lr, micro) in enumerate(zip(ramp(settings), _endless(components.train_batches, per_step))):
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = float(lr) * ratio
            loss_t, _, _ = trainer.train_step(micro)
            optimizer.zero_grad(set_to_none=True)
            loss = float(loss_t)  # one host sync per step: the test needs every value
            smooth = smoother.update(loss)
            lrs.append(float(lr)), losses.append(loss), smoothed.append(smooth)
            if on_step is not None:
                on_step(i, float(lr), loss, smooth)
            best = min(best, smooth) if math.isfinite(smooth) else best
            reason = stop_reason(loss, smooth, best, settings.diverge)
            if reason:
                stop = reason
                break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
        optimizer.zero_grad(set_to_none=True)
        restore_rng(saved_rng)
        for module, training in modes:  # per module: frozen BatchNorm layers may sit in eval mode
            module.training = training
    message = _stop_message(stop, lrs[-1], losses[-1], smoothed[-1], best, settings)
    return Curve(lrs, losses, smoothed, stop, message, settings, ratios)


# ---------------------------------------------------------------------------------------------
# suggestion rules: each takes (lrs, smoothed losses) of the trimmed curve and returns an index


def steep(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, int]:
    """fastai `steep`: the steepest descent of the loss against ln(lr)."""
    g = np.diff(losses) / np.diff(np.log(lrs))
    i = int(np.argmin(g))
    return float(lrs[i]), i


def minimum(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, int]:
    """fastai `minimum`: the rate of the lowest loss, divided by 10 (index: the minimum itself)."""
    i = int(np.argmin(losses))
    return float(lrs[i]) / 10, i


def valley(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, int]:
    """fastai `valley`: about half way down the longest decreasing stretch of the curve.

    `lds[i]` is the length of the longest strictly decreasing subsequence ending at i; with `end`
    the first index of the longest, `start = end − lds[end]` and the point is
    `start + int(sec) + int(sec/2)`, `sec = (end − start)/3` (fastai, verbatim).
    """
    n = len(losses)
    lds = np.ones(n, dtype=np.int64)
    for i in range(1, n):
        higher = losses[:i] > losses[i]
        if higher.any():
            lds[i] = lds[:i][higher].max() + 1
    end = int(np.argmax(lds))
    start = end - int(lds[end])
    sec = (end - start) / 3
    i = min(max(start + int(sec) + int(sec / 2), 0), n - 1)
    return float(lrs[i]), i


def slide(lrs: np.ndarray, losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005) -> tuple[float, int]:
    """fastai `slide`: walk left from the end until the gradient `lr_diff` points apart levels off."""
    n = len(losses)
    g = np.gradient(losses)
    r, left = n - 1, n - 1 - lr_diff
    i = max(left, 0)
    while left >= 0 and abs(g[r] - g[left]) > thresh:
        i, r, left = left, r - 1, left - 1
    return float(lrs[i]), i


RULE_FUNCS = {"steep": steep, "valley": valley, "minimum": minimum, "slide": slide}
RULE_DOCS = {
    "steep": "steepest descent vs log lr",
    "valley": "middle of the longest descent",
    "minimum": "lowest-loss lr / 10",
    "slide": "where the slope levels off",
}


@dataclass
class Rule:
    """One rule's suggestion: the rate, and the curve point it was read from (index into the curve)."""

    name: str
    lr: float
    index: int
    loss: float


@dataclass
class Suggestions:
    """All rules side by side, the recommendation and why, and what makes the curve hard to trust."""

    rules: dict[str, Rule]
    recommended: str | None = None
    lr: float | None = None
    reason: str = ""
    spread_decades: float | None = None
    warnings: list[str] = field(default_factory=list)
    refused: str | None = None
    min_lr: float | None = None
    bounds: dict[str, float] = field(default_factory=dict)


def round_lr(lr: float) -> float:
    """Two significant digits: the precision a range test supports (and what recipes should hold)."""
    return float(f"{lr:.2g}")


def trimmed_range(curve: Curve) -> tuple[int, int]:
    """[lo, hi) of the points the rules may use: fastai drops the first 10 % of the asked steps and
    the last 5 points, after truncating at the first non-finite value."""
    finite = [math.isfinite(a) and math.isfinite(b) for a, b in zip(curve.losses, curve.smoothed)]
    n = finite.index(False) if False in finite else len(finite)
    return curve.settings.steps // 10, n - 5


def _noise(raw: np.ndarray, smooth: float) -> float:
    """Robust per-step noise of the raw loss (MAD of first differences), scaled to the EMA output."""
    d = np.diff(raw)
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2)
    return sigma * math.sqrt(smooth / (2 - smooth))


def _quality(curve: Curve, lo: int, hi: int) -> tuple[str | None, list[str]]:
    """(why no suggestion can be trusted or None, warnings) for the trimmed stretch [lo, hi)."""
    if hi - lo < MIN_POINTS:
        return (f"too few points to suggest a rate ({max(hi - lo, 0)} usable of {len(curve)} recorded; "
                f"{curve.message}): lower --start or raise --steps", [])
    lrs, sm = np.asarray(curve.lrs[lo:hi]), np.asarray(curve.smoothed[lo:hi])
    i_min = int(np.argmin(sm))
    drop, scale = float(sm[0] - sm[i_min]), max(abs(float(sm[0])), 1e-12)
    if float(sm.max() - sm.min()) < FLAT_DROP * scale:
        return (f"the curve is too flat to trust: the smoothed loss moves by only {np.ptp(sm) / scale:.1%} "
                "over the range; widen it (--start/--end), raise --steps, or check the model learns", [])
    if i_min <= 1:
        return (f"the loss never falls: it is lowest at the start of the range (lr {lrs[0]:.2g}); "
                "lower --start", [])
    if drop < FLAT_DROP * scale:
        return (f"the curve is too flat to trust: the smoothed loss falls by only {drop / scale:.1%} "
                "before its minimum; widen the range (--start/--end) or raise --steps", [])
    warnings = []
    noise = _noise(np.asarray(curve.losses[lo:hi]), curve.settings.smooth)
    if noise > NOISE_RATIO * drop:
        warnings.append(f"the curve is noisy (smoothed-loss noise {noise / drop:.0%} of its drop): the rules "
                        "can be fooled; lower --smooth, raise --steps or use a larger batch")
    if i_min >= len(sm) - 1 and curve.stop == "end":
        warnings.append(f"the minimum sits at the upper edge of the range (lr {lrs[i_min]:.2g}): "
                        "raise --end to see where the loss turns")
    elif i_min >= len(sm) - 1:
        warnings.append(f"the loss was still falling where the usable curve ends (lr {lrs[i_min]:.2g}; "
                        f"{curve.message}): the minimum rule is a lower bound")
    return None, warnings


def _recommend(rules: dict[str, Rule], min_lr: float) -> tuple[str, str]:
    """The median of the voting rules in log-lr (the closest one when an even number remain), among
    those below the loss minimum's rate."""
    voting = {k: rules[k] for k in VOTING}
    usable = {k: r for k, r in voting.items() if r.lr < min_lr} or voting
    logs = {k: math.log10(r.lr) for k, r in usable.items()}
    mid = float(np.median(list(logs.values())))
    name = min(RULES, key=lambda k: (abs(logs[k] - mid), RULES.index(k)) if k in logs else (math.inf, 0))
    left_out = sorted(set(voting) - set(usable))
    why = (f"the median of {', '.join(usable)} in log-lr" + ("" if len(usable) % 2 else f" (closest to "
           f"{10 ** mid:.2g})") + ": one rule fooled by noise cannot decide")
    if left_out:
        why += f"; left out {', '.join(left_out)} (at or past the loss minimum)"
    return name, why


def _bounds(lr: float, min_lr: float) -> dict[str, float]:
    """Cyclic / one-cycle bounds. max_lr: the largest rate the loss still clearly falls at (Smith:
    where it stops improving), taken as the minimum rule, lowest-loss lr / 10 (fastai's lr_max for
    fit_one_cycle; a decade below the minimum also absorbs the EMA's lag), never below the
    recommendation. Cyclic base_lr = max_lr/4 (Smith: 1/3-1/4 of max_lr); one-cycle starts at
    max_lr/25 (PyTorch OneCycleLR div_factor, fastai div)."""
    top = max(lr, min_lr / 10)
    return {"cyclic_max_lr": round_lr(top), "cyclic_base_lr": round_lr(top / CYCLIC_DIV),
            "one_cycle_max_lr": round_lr(top), "one_cycle_start_lr": round_lr(top / ONE_CYCLE_DIV)}


def suggest(curve: Curve) -> Suggestions:
    """Apply every rule to the trimmed smoothed curve, report their agreement and recommend one."""
    lo, hi = trimmed_range(curve)
    refused, warnings = _quality(curve, lo, hi)
    if refused:
        return Suggestions(rules={}, refused=refused, warnings=warnings)
    lrs, sm = np.asarray(curve.lrs[lo:hi]), np.asarray(curve.smoothed[lo:hi])
    rules = {}
    for name in RULES:
        lr, i = RULE_FUNCS[name](lrs, sm)
        rules[name] = Rule(name, lr, lo + i, float(sm[i]))
    min_lr = float(lrs[int(np.argmin(sm))])
    logs = [math.log10(rules[k].lr) for k in VOTING]
    spread = max(logs) - min(logs)
    if spread > DISAGREE_DECADES:
        warnings.append(f"the rules disagree by {spread:.1f} decades (more than {DISAGREE_DECADES:g}): "
                        "look at the plot before trusting any")
    name, reason = _recommend(rules, min_lr)
    lr = round_lr(rules[name].lr)
    return Suggestions(rules=rules, recommended=name, lr=lr, reason=reason, spread_decades=spread,
                       warnings=warnings, min_lr=min_lr, bounds=_bounds(lr, min_lr))
