"""Batch normalization widens the range of usable learning rates (Ioffe & Szegedy 2015).

A deep MLP (8 hidden layers of 64) on the built-in digits trains with SGD + momentum at 10 learning
rates from 1e-4 to 10^0.5 (about 3.2) in half-decade steps, with `model.norm` none, batch and group
(`model.groups` 8). Per norm: the best accuracy over the rates, and the width in decades of the
contiguous range of rates around the best whose accuracy is within 1 point of it.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.evidence.runner import Context, Report, log, mean, recipe, train

NAME = "batchnorm"
TITLE = "2. Batch normalization and the learning-rate range"
CLAIM = ("Batch normalization lets a deep net train at much higher learning rates, so the range of rates that "
         "reach the best accuracy is wider than without it.")
SOURCE = ("Ioffe and Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal "
          "Covariate Shift (ICML 2015), section 3.3; Wu and He, Group Normalization (ECCV 2018) for `group`")
NORMS = ("none", "batch", "group")
RATES = [10 ** (-4 + k / 2) for k in range(10)]  # 1e-4 .. 3.16, half-decade steps
WITHIN = 0.01  # "within 1 point of the best"
CHANCE = 0.1   # the score of a run that nnrun stopped for a non-finite loss (ten classes)


def good_range(rates: list[float], accs: list[float]) -> tuple[float, float, float, float]:
    """(best accuracy, lowest and highest rate of the contiguous run of rates around the best one whose
    accuracy is within WITHIN of the best, that run's width in decades)."""
    best_i = int(np.nanargmax(accs))
    best = accs[best_i]
    lo = hi = best_i
    while lo > 0 and accs[lo - 1] >= best - WITHIN:
        lo -= 1
    while hi < len(accs) - 1 and accs[hi + 1] >= best - WITHIN:
        hi += 1
    return best, rates[lo], rates[hi], math.log10(rates[hi] / rates[lo])


def train_grid(ctx: Context, base: dict, rates: list[float], seeds: int) -> dict:
    """Train every norm at every rate over the seeds: the runs per norm and rate (diverged runs score CHANCE)."""
    raw: dict = {}
    for norm in NORMS:
        raw[norm] = {}
        for lr in rates:
            runs = []
            for seed in range(seeds):
                log(f"batchnorm: {norm}, lr {lr:.3g}, seed {seed}")
                res = train(ctx, recipe(base, seed=seed, model={"norm": norm}, optimizer={"lr": lr}),
                            f"{norm}-lr{lr:.0e}-s{seed}")
                diverged = res.stop_reason.startswith("non-finite")
                final = res.history[-1].get("val_acc") if res.history else None
                runs.append({"final": CHANCE if diverged or final is None else final, "diverged": diverged,
                             "stop": res.stop_reason, "curve": [h.get("val_acc") for h in res.history]})
            raw[norm][f"{lr:.6g}"] = runs
    return raw


def summarize(raw: dict, rates: list[float], seeds: int) -> tuple[dict, dict, list[list]]:
    """The mean accuracy per norm and rate, the per-norm summary (best, good range, divergences), the rows."""
    accs = {norm: [mean([r["final"] for r in raw[norm][f"{lr:.6g}"]]) for lr in rates] for norm in NORMS}
    summary = {}
    rows = []
    for norm in NORMS:
        best, lo, hi, width = good_range(rates, accs[norm])
        diverged = sum(r["diverged"] for runs in raw[norm].values() for r in runs)
        best_lr = rates[int(np.nanargmax(accs[norm]))]
        summary[norm] = {"best": best, "best_lr": best_lr, "lo": lo, "hi": hi, "width": width,
                         "diverged": diverged, "accs": accs[norm]}
        rows.append([norm, best, f"{best_lr:.2g}", f"{lo:.2g} to {hi:.2g}", width,
                     f"{diverged}/{len(rates) * seeds}"])
    return accs, summary, rows


def judge(summary: dict) -> str:
    """The verdict: BatchNorm's good range against no normalization's."""
    # The verdict rule, fixed before the full run: reproduced when batch's good range is at least half a
    # decade (one grid step) wider than none's, reaches a higher rate, and its best accuracy is not lower by
    # more than 1 point; partly when its range is wider or reaches a higher rate (not both, or a lower best);
    # not reproduced otherwise. GroupNorm is reported, not judged.
    b, n = summary["batch"], summary["none"]
    wider, higher = b["width"] >= n["width"] + 0.5 - 1e-9, b["hi"] > n["hi"]
    if wider and higher and b["best"] >= n["best"] - WITHIN:
        return "reproduced"
    if b["width"] > n["width"] or higher:
        return "partly"
    return "not reproduced"


def explain(summary: dict, seeds: int, epochs: int) -> str:
    """The sentence behind the verdict: each norm's good range and best accuracy."""
    b, n, g = summary["batch"], summary["none"], summary["group"]
    return (f"rates within 1 point of the best span {b['width']:.1f} decades with BatchNorm "
            f"({b['lo']:.2g} to {b['hi']:.2g}, best {b['best']:.3f}) against {n['width']:.1f} without "
            f"({n['lo']:.2g} to {n['hi']:.2g}, best {n['best']:.3f}); GroupNorm {g['width']:.1f} decades "
            f"({g['lo']:.2g} to {g['hi']:.2g}, best {g['best']:.3f}); mean of {seeds} seed(s), {epochs} "
            f"epochs, SGD momentum 0.9.")


def write_notes() -> list[str]:
    """The notes: how a run is scored and how the width is measured."""
    return ["Final validation accuracy after the whole budget (the last 20% of steps decay the rate linearly "
            "to 0); a run that nnrun stopped for a non-finite loss (`train.on_nonfinite: stop`) counts as "
            f"chance ({CHANCE}). Width: log10(highest/lowest rate) of the contiguous run of grid rates around "
            "the best whose mean accuracy is within 1 point of the best (0: only the best rate)."]


def plot_accuracy(fig, rates: list[float], accs: dict, summary: dict) -> None:
    """The panel: final accuracy against the learning rate per norm, each good range shaded."""
    ax = fig.add_subplot(1, 1, 1)
    for norm in NORMS:
        line, = ax.plot(rates, accs[norm], marker="o", label=f"norm: {norm}")
        s = summary[norm]
        ax.axvspan(s["lo"], s["hi"], color=line.get_color(), alpha=0.08)
    ax.set_xscale("log")
    ax.axhline(CHANCE, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="learning rate (SGD, momentum 0.9)", ylabel="final validation accuracy",
           title="digits, MLP 8x64: accuracy vs learning rate (shaded: within 1 point of the best)")
    ax.legend()


def run(ctx: Context) -> Report:
    """Train the grid of norms and rates, then report the table, the verdict, the notes and the plot."""
    if ctx.quick:
        epochs, seeds, rates, limit = 1, 1, RATES[::4], 256
    else:
        epochs, seeds, rates, limit = 10, ctx.seeds, RATES, None
    base = recipe(data={"source": "digits", "batch_size": 32, "val_fraction": 0.2, "drop_last": True,
                        **({"limit": limit} if limit else {})},
                  model={"arch": "mlp", "hidden": [64] * 8, "groups": 8, "dropout": 0.0},
                  optimizer={"name": "sgd", "momentum": 0.9},
                  schedule={"name": "constant", "final_decay": 0.2},
                  train={"epochs": epochs, "threads": 1, "on_nonfinite": "stop"})
    raw = train_grid(ctx, base, rates, seeds)
    accs, summary, rows = summarize(raw, rates, seeds)
    return Report(columns=["norm", "best val acc", "best lr", "lrs within 1 point", "width (decades)",
                           "diverged runs"],
                  rows=rows, verdict=judge(summary), because=explain(summary, seeds, epochs),
                  setup=(f"built-in digits (80% train, 20% validation{f', first {limit}' if limit else ''}); MLP "
                         f"8 hidden layers of 64, He init, model.norm none / batch / group (model.groups 8), "
                         f"no dropout; SGD momentum 0.9, batch 32, {epochs} epochs, constant rate with the last "
                         f"20% decaying linearly to 0 (schedule.final_decay 0.2); {len(rates)} rates "
                         f"{rates[0]:.0e} to {rates[-1]:.2g} in half-decade steps; {seeds} seed(s), mean "
                         f"shown."),
                  plot=lambda fig: plot_accuracy(fig, rates, accs, summary),
                  raw={"rates": rates, "runs": raw, "summary": summary}, notes=write_notes())
