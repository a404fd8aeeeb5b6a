"""Gradient clipping against exploding gradients (Pascanu, Mikolov and Bengio 2013).

A deep, narrow tanh MLP (8 hidden layers of 64, no normalization, nnrun's default He init, whose
tanh gain of 5/3 puts a deep tanh net in the regime where gradients grow with depth) trains on the
built-in digits with SGD (momentum 0.9) at a learning rate of 0.15, 1.5x the highest rate at which
it trains without clipping. The learning rate was chosen from runs without clipping only (0.1
trains to 0.7-0.8, 0.15 and 0.2 collapse to chance), before any clipped run. The same runs are
repeated with each `clip.policy` at nnrun's default parameters: none, global_norm (max_norm 1),
value (1), agc (clipping 0.01, output layer excluded) and autoclip (10th percentile of the last
1000 norms). Per policy: how many seeds diverge and the final validation accuracy of the others.

Divergence (decided before the runs): the run stopped on a non-finite loss or gradient, or its
final validation accuracy is below half of the best final validation accuracy of all runs of the
experiment (chance is 0.10 on the 10 digits).
"""

from __future__ import annotations

import statistics

import numpy as np

from benchmarks.evidence.runner import Context, Report, log, mean, recipe, train
from nnrun.training.callbacks import Callback

LOG_EVERY = 10  # optimizer steps between the logged gradient norms (nnrun's `grad_norm`, before clipping)

NAME = "clipping"
TITLE = "8. Gradient clipping"
CLAIM = ("Exploding gradients make training diverge; rescaling the gradient when its norm is too large "
         "(clipping) keeps training stable.")
SOURCE = "Pascanu, Mikolov and Bengio, On the difficulty of training recurrent neural networks (ICML 2013)"
LR = 0.15
POLICIES = {"none": {"policy": "none"},
            "global_norm": {"policy": "global_norm", "max_norm": 1.0},
            "value": {"policy": "value", "value": 1.0},
            "agc": {"policy": "agc", "clipping": 0.01},
            "autoclip": {"policy": "autoclip", "percentile": 10.0, "window": 1000}}
SHOWN = {"none": "-", "global_norm": "max_norm 1", "value": "value 1", "agc": "clipping 0.01, head excluded",
         "autoclip": "10th percentile, window 1000"}


def verdict_of(rate: dict, acc: dict) -> str:
    """The rule, fixed before the runs: reproduced when global-norm clipping removes at least half of
    the unclipped runs' divergences and its surviving runs average at least 0.9 validation accuracy;
    partly when it removes some (or another policy meets that bar); otherwise not reproduced (also
    when the unclipped runs never diverge: the setting then shows nothing)."""

    def meets(p: str) -> bool:
        return rate[p] <= rate["none"] / 2 and acc[p] == acc[p] and acc[p] >= 0.9

    if rate["none"] == 0:
        return "not reproduced"
    if meets("global_norm"):
        return "reproduced"
    if rate["global_norm"] < rate["none"] or any(meets(p) for p in rate if p != "none"):
        return "partly"
    return "not reproduced"


class GradLog(Callback):
    """An nnrun callback keeping the gradient norm (before clipping) and the share of clipped steps that
    nnrun logs every `log.every_n_steps` steps."""

    def __init__(self):
        self.norms: list[float] = []
        self.fractions: list[float] = []

    def on_log(self, trainer, logs: dict) -> None:
        if logs.get("grad_norm") is not None:
            self.norms.append(float(logs["grad_norm"]))
        if logs.get("clip/fraction") is not None:
            self.fractions.append(float(logs["clip/fraction"]))


def base_recipe(ctx: Context, epochs: int) -> dict:
    """The recipe every run starts from: the deep tanh MLP with SGD at LR, stopping on a non-finite loss."""
    data = {"source": "digits", "batch_size": 32, "val_fraction": 0.2}
    if ctx.quick:
        data["limit"] = 400
    return recipe(data=data,
                  model={"arch": "mlp", "hidden": [64] * 8, "activation": "tanh", "norm": "none", "dropout": 0.0},
                  optimizer={"name": "sgd", "lr": LR, "momentum": 0.9},
                  train={"epochs": epochs, "on_nonfinite": "stop"},
                  log={"every_n_steps": LOG_EVERY})


def train_one(ctx: Context, base: dict, policy: str, seed: int) -> dict:
    """One run with one clip policy and seed: its stop, validation curve and logged gradient norms."""
    log(f"clipping: {policy}, seed {seed}")
    grads = GradLog()
    res = train(ctx, recipe(base, seed=seed, clip=POLICIES[policy]), f"{policy}-s{seed}", callbacks=[grads])
    curve = [h.get("val_acc") for h in res.history]
    finite = [v for v in curve if v is not None]
    return {"seed": seed, "stop_reason": res.stop_reason, "steps": res.steps,
            "nonfinite": res.stop_reason.startswith("non-finite"),
            "final": finite[-1] if finite else None, "best": max(finite) if finite else None,
            "curve": curve, "grad_norms": grads.norms,
            "clip_fraction": mean(grads.fractions) if grads.fractions else None}


def mark_diverged(raw: dict) -> tuple[float, float]:
    """Mark each run diverged or not; returns the best final accuracy and the divergence threshold."""
    best_final = max((r["final"] for runs in raw.values() for r in runs if r["final"] is not None), default=0.0)
    threshold = best_final / 2
    for runs in raw.values():
        for r in runs:
            r["diverged"] = r["nonfinite"] or r["final"] is None or r["final"] < threshold
    return best_final, threshold


def table(raw: dict, rate: dict, acc: dict) -> list[list]:
    """One table row per policy: divergences, accuracies, gradient norms and the share of clipped steps."""
    rows = []
    for p, runs in raw.items():
        kept = [r["final"] for r in runs if not r["diverged"]]
        rows.append([p, SHOWN[p], f"{sum(r['diverged'] for r in runs)}/{len(runs)}", rate[p],
                     sum(r["nonfinite"] for r in runs), acc[p],
                     statistics.pstdev(kept) if len(kept) > 1 else float("nan"),
                     mean([r["best"] for r in runs]),
                     statistics.median([g for r in runs for g in r["grad_norms"]] or [float("nan")]),
                     max([g for r in runs for g in r["grad_norms"] if np.isfinite(g)] or [float("nan")]),
                     mean([r["clip_fraction"] for r in runs if r["clip_fraction"] is not None])])
    return rows


def because_of(rate: dict, acc: dict, seeds: int) -> str:
    """The verdict's sentence: the divergence rate (and surviving accuracy) of each policy."""
    others = ", ".join(f"{p} {rate[p]:.0%}" + (f" ({acc[p]:.3f})" if acc[p] == acc[p] else "")
                       for p in POLICIES if p not in ("none", "global_norm"))

    def survivors(p: str) -> str:
        return f" (the rest end at {acc[p]:.3f} validation accuracy)" if acc[p] == acc[p] else ""

    return (f"at lr {LR} the unclipped deep tanh MLP diverged in {rate['none']:.0%} of {seeds} seeds"
            f"{survivors('none')}, with global-norm clipping in {rate['global_norm']:.0%}"
            f"{survivors('global_norm')}; value, agc and autoclip: {others} (divergence rate, final accuracy "
            f"of the runs that did not diverge).")


def notes_of(raw: dict, rows: list[list], best_final: float, threshold: float) -> list[str]:
    """The notes: the divergence threshold and non-finite stops, then the gradient norms and clipped shares."""
    return [f"Divergence threshold: final validation accuracy below {threshold:.3f} (half of the best final "
            f"accuracy of all runs, {best_final:.3f}) or a non-finite stop. "
            f"Non-finite stops: {sum(r['nonfinite'] for runs in raw.values() for r in runs)} of "
            f"{sum(len(runs) for runs in raw.values())} runs; with bounded tanh activations a run that blows "
            "up saturates its units and collapses to chance rather than overflowing, so divergence shows as "
            "a collapse of the accuracy.",
            f"Gradient norms before clipping (logged every {LOG_EVERY} steps): the unclipped runs' median is "
            f"{rows[0][8]:.3g} and their largest {rows[0][9]:.3g}; global-norm clipping (max_norm 1) clipped "
            f"{rows[1][10]:.0%} of the logged steps, value clipping (1.0 per element) {rows[2][10]:.1%}, agc "
            f"{rows[3][10]:.0%} and autoclip {rows[4][10]:.0%}. A share near 100% means the clip acts on every "
            "step, like a cap on the step length, not only on rare spikes; a share near 0% means the policy "
            "changed nothing at its default parameter."]


def plot_rates(ax, raw: dict, rate: dict, seeds: int) -> None:
    """Left panel: the divergence rate of each policy, with the count of diverged seeds."""
    names = list(raw)
    x = np.arange(len(names))
    ax.bar(x, [rate[p] for p in names], color=["tab:red" if p == "none" else "tab:blue" for p in names])
    for i, p in enumerate(names):
        ax.text(i, rate[p] + 0.02, f"{sum(r['diverged'] for r in raw[p])}/{len(raw[p])}", ha="center")
    ax.set_xticks(x, names)
    ax.set(ylim=(0, 1.05), ylabel="divergence rate", title=f"deep tanh MLP, SGD lr {LR}: {seeds} seeds")


def plot_finals(ax, raw: dict, acc: dict, threshold: float) -> None:
    """Right panel: each seed's final validation accuracy per policy, with the mean of the runs that held."""
    names = list(raw)
    x = np.arange(len(names))
    for i, p in enumerate(names):
        finals = [r["final"] if r["final"] is not None else np.nan for r in raw[p]]
        colors = ["tab:red" if r["diverged"] else "tab:blue" for r in raw[p]]
        ax.scatter(i + np.linspace(-0.15, 0.15, len(finals)), finals, c=colors, s=18)
        if acc[p] == acc[p]:
            ax.hlines(acc[p], i - 0.3, i + 0.3, color="black")
    ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, names)
    ax.set(ylim=(0, 1.02), ylabel="final validation accuracy",
           title="per seed (red: diverged; line: mean of the others)")


def run(ctx: Context) -> Report:
    """Train every clip policy on the same seeds, then compare their divergence rates and final accuracies."""
    # Divergence rates need more seeds than means do: 4 per --seeds (12 by default).
    epochs, seeds = (1, 1) if ctx.quick else (10, 4 * ctx.seeds)
    base = base_recipe(ctx, epochs)
    raw = {policy: [train_one(ctx, base, policy, seed) for seed in range(seeds)] for policy in POLICIES}
    best_final, threshold = mark_diverged(raw)
    rate = {p: sum(r["diverged"] for r in runs) / len(runs) for p, runs in raw.items()}
    acc = {p: mean([r["final"] for r in runs if not r["diverged"]]) for p, runs in raw.items()}
    rows = table(raw, rate, acc)

    def plot(fig) -> None:
        """The figure: the divergence rates and the final accuracies per seed."""
        plot_rates(fig.add_subplot(1, 2, 1), raw, rate, seeds)
        plot_finals(fig.add_subplot(1, 2, 2), raw, acc, threshold)

    return Report(columns=["clip.policy", "parameters", "diverged", "divergence rate", "non-finite stops",
                           "final val_acc (not diverged)", "std", "best val_acc (all runs)",
                           "median grad norm", "max grad norm", "share of steps clipped"],
                  rows=rows, verdict=verdict_of(rate, acc), because=because_of(rate, acc, seeds),
                  setup=(f"digits (20% validation); MLP 8x64 tanh, no normalization, kaiming_normal init; SGD lr "
                         f"{LR} momentum 0.9, batch 32, {epochs} epochs, seeds 0-{seeds - 1} for every policy; "
                         "nnrun's default parameters for each clip policy; train.on_nonfinite stop."),
                  plot=plot, raw={"lr": LR, "threshold": threshold, "rate": rate, "accuracy": acc, "runs": raw},
                  notes=notes_of(raw, rows, best_final, threshold))
