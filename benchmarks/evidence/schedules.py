"""Learning-rate schedules at the same epoch budget (Smith 2017 cyclical rates; Loshchilov & Hutter 2017 SGDR;
Smith 2018 one-cycle; the step and 1/t decays of the CS231n notes).

One recipe, seven `schedule.name` values, the same number of epochs and the same peak rate: an MLP 128-64
(no normalization layers) with SGD, momentum 0.9, `optimizer.lr` 0.05 on the first 10,000 MNIST training
images with --mnist (the built-in digits without). Each schedule's parameters are fixed from the budget E
(15 epochs) by the rules in SCHEDULES, not tuned. Reported: the final validation accuracy, the epochs to a
target accuracy, and the validation curve (mean over seeds); the lr curves come from nnrun's schedule preview
(`nnrun.workflows.schedule.preview`, what `nnrun schedule` draws).

Verdict rule (fixed before the full run): the claim is that the cyclical family (sgdr, cyclic, one_cycle)
reaches the target in fewer epochs than a constant or step-decayed rate and ends at least as accurate.
"faster": the cyclical family's best mean epochs-to-target (a seed that never reaches counts as E + 1) is
below the best of constant and step; "as accurate": its best mean final accuracy is at most 0.2 points below
the best of constant and step. Both: reproduced; one: partly; neither: not reproduced.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from benchmarks.evidence.runner import Context, Report, log, mean, recipe, train, validate

NAME = "schedules"
TITLE = "4. Learning-rate schedules"
CLAIM = ("Cyclical learning rates (triangular cycles, warm restarts, one cycle) reach a given accuracy in fewer "
         "epochs than a constant or step-decayed rate, and end at least as accurate.")
SOURCE = ("Smith, Cyclical Learning Rates for Training Neural Networks (2017); Loshchilov and Hutter, SGDR: "
          "Stochastic Gradient Descent with Warm Restarts (2017); Smith and Topin, Super-Convergence (2018)")
LR = 0.05
CYCLICAL, BASELINES = ("sgdr", "cyclic", "one_cycle"), ("constant", "step")
TOLERANCE = 0.002  # "as accurate": within 0.2 points


def schedules(epochs: float) -> dict[str, dict]:
    """Every schedule's keys for a budget of `epochs`, by fixed rules (none tuned on the results)."""
    return {
        "constant": {"name": "constant"},
        # x0.1 at 1/3 and 2/3 of the run (CS231n's step decay)
        "step": {"name": "step", "step_size": epochs / 3, "gamma": 0.1},
        # lr / (1 + k t): k so that the last epoch runs at a tenth of the rate
        "inverse_time": {"name": "inverse_time", "k": 9 / epochs},
        # one half cosine over the whole run, down to 0
        "cosine": {"name": "cosine", "min_lr": 0.0},
        # restarts after 1, 3, 7, 15 of 15 epochs (T0 = E/15, T_mult = 2; every cycle ends with the run)
        "sgdr": {"name": "sgdr", "cycle_len": epochs / 15, "cycle_mult": 2.0, "min_lr": 0.0},
        # triangular between lr/4 and lr, 3 whole cycles (half cycle E/6 = 2.5 epochs; Smith: 2-10 epochs)
        "cyclic": {"name": "cyclic", "mode": "triangular", "step_size": epochs / 6},
        # PyTorch OneCycleLR defaults: 30% up from lr/25, down to lr/25/1e4, momentum 0.95-0.85 inversely
        "one_cycle": {"name": "one_cycle"},
    }


def epochs_to(history: list[dict], target: float) -> float:
    """The first evaluation's epoch at or above `target` (nan: never)."""
    return next((float(h["epoch"]) for h in history if h.get("val_acc", 0) >= target), float("nan"))


def describe(keys: dict) -> str:
    """A schedule's keys other than its name, as the table shows them."""
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in keys.items()
                     if k != "name") or "-"


def setting(ctx: Context) -> tuple[str, float, dict]:
    """The dataset's name, the target accuracy and the recipe's data section (MNIST with --mnist)."""
    if ctx.mnist and not ctx.quick:
        data = {"source": "mnist", "path": str(ctx.mnist), "limit": 10000, "batch_size": 64, "val_fraction": 0.2}
        return "MNIST, first 10,000 training images", 0.95, data
    data = {"source": "digits", "batch_size": 32, "val_fraction": 0.2} | ({"limit": 400} if ctx.quick else {})
    return "digits", 0.97, data


def train_all(ctx: Context, base: dict, epochs: int, seeds: int, target: float) -> dict[str, dict]:
    """Every schedule: its keys, each seed's validation curve and result, and nnrun's preview of its rates."""
    from nnrun.workflows.schedule import preview

    out = {}
    for label, keys in schedules(epochs).items():
        spec = recipe(base, schedule=keys)
        shown = preview(validate(spec, f"preview-{label}"), max_points=400)
        runs = []
        for seed in range(seeds):
            log(f"schedules: {label}, seed {seed}")
            res = train(ctx, recipe(spec, seed=seed), f"{label}-s{seed}")
            runs.append({"curve": [h.get("val_acc") for h in res.history], "final": res.history[-1]["val_acc"],
                         "best": max(h.get("val_acc", 0) for h in res.history),
                         "to_target": epochs_to(res.history, target), "stop": res.stop_reason})
        out[label] = {"keys": keys, "runs": runs,
                      "preview": {"epoch": [s / shown.steps_per_epoch for s in shown.steps],
                                  "lr": shown.lrs["default"], "momentum": shown.momentum}}
    return out


def summarize(found: dict[str, dict], epochs: int) -> tuple[list[list], dict, dict, dict]:
    """The table rows and, per schedule, the mean final accuracy, mean epochs to target and seed spread."""
    rows, final, fast, spread = [], {}, {}, {}
    for label, entry in found.items():
        runs = entry["runs"]
        final[label] = mean([r["final"] for r in runs])
        fast[label] = mean([r["to_target"] if math.isfinite(r["to_target"]) else epochs + 1 for r in runs])
        spread[label] = statistics.stdev([r["final"] for r in runs]) if len(runs) > 1 else 0.0
        reached = sum(math.isfinite(r["to_target"]) for r in runs)
        rows.append([label, describe(entry["keys"]), final[label], spread[label], mean([r["best"] for r in runs]),
                     f"{reached}/{len(runs)}", fast[label]])
    return rows, final, fast, spread


def decide(final: dict, fast: dict, target: float, seeds: int, epochs: int, dataset: str) -> tuple[str, str]:
    """The verdict ("faster" and "as accurate", the rule in the module's docstring) and its sentence."""
    best_cyc = min(CYCLICAL, key=lambda k: (fast[k], -final[k]))
    best_base = min(BASELINES, key=lambda k: (fast[k], -final[k]))
    top_cyc, top_base = max(CYCLICAL, key=final.get), max(BASELINES, key=final.get)
    faster = fast[best_cyc] < fast[best_base]
    as_good = final[top_cyc] >= final[top_base] - TOLERANCE
    verdict = "reproduced" if faster and as_good else "partly" if faster or as_good else "not reproduced"
    because = (f"to {target:.2f} validation accuracy the fastest cyclical schedule ({best_cyc}) takes "
               f"{fast[best_cyc]:.1f} epochs against {fast[best_base]:.1f} for the faster of constant and step "
               f"({best_base}); the best cyclical final accuracy ({top_cyc}) is {final[top_cyc]:.4f} against "
               f"{final[top_base]:.4f} ({top_base}) (mean of {seeds} seed(s), {epochs} epochs, {dataset}).")
    return verdict, because


def notes_for(final: dict, fast: dict, spread: dict, seeds: int, epochs: int) -> list[str]:
    """The ranking, how far apart the annealed schedules end, and why one_cycle and sgdr start slowly."""
    ranked = sorted(final, key=final.get, reverse=True)
    notes = [f"Final accuracy, best first: {', '.join(f'{k} {final[k]:.4f}' for k in ranked)}. Epochs to target "
             f"count evaluations at the end of each epoch; a seed that never reaches it counts as {epochs + 1}."]
    annealed = [k for k in final if k != "constant" and math.isfinite(final[k])]
    if seeds > 1 and annealed:
        top, low = max(final[k] for k in annealed), min(final[k] for k in annealed)
        notes.append(f"The schedules that lower the rate ({', '.join(annealed)}) end within {100 * (top - low):.2f} "
                     f"points of each other, with a seed-to-seed standard deviation of {100 * min(spread.values()):.2f}"
                     f" to {100 * max(spread.values()):.2f} points: their final accuracies are not told apart by this "
                     f"run. The constant rate ends {100 * (top - final['constant']):.2f} points below the best.")
    notes.append(f"one_cycle spends its first 30% ({0.3 * epochs:g} epochs) rising from lr/25 to the peak rate, so it "
                 f"reaches the target after {fast['one_cycle']:.1f} epochs (mean); sgdr's first cycles end after "
                 f"{epochs / 15:g} and {3 * epochs / 15:g} of {epochs} epochs with the rate annealed to 0, so early "
                 "evaluations see a model at a low rate (the 'anytime' behaviour the SGDR paper reports); it reaches "
                 f"the target after {fast['sgdr']:.1f} epochs.")
    return notes


def plot_curves(ax, found: dict[str, dict], final: dict, target: float, title: str) -> None:
    """Left panel: each schedule's mean validation curve, with the target as a dotted line."""
    for k, (label, entry) in enumerate(found.items()):
        curves = np.array([[np.nan if v is None else v for v in r["curve"]] for r in entry["runs"]], dtype=float)
        style = "-" if label in CYCLICAL else "--"
        ax.plot(range(1, curves.shape[1] + 1), np.nanmean(curves, axis=0), ls=style, marker=".",
                color=f"C{k}", label=label)
    ax.axhline(target, color="grey", lw=0.8, ls=":")
    finals = [v for v in final.values() if math.isfinite(v)]
    if finals:
        ax.set_ylim(min(finals) - 0.04, max(finals) + 0.01)
    ax.set(xlabel="epoch", ylabel="validation accuracy", title=title)
    ax.legend(fontsize=8)


def plot_rates(ax, found: dict[str, dict]) -> None:
    """Right panel: each schedule's learning rate per epoch, from nnrun's schedule preview."""
    for k, (label, entry) in enumerate(found.items()):
        style = "-" if label in CYCLICAL else "--"
        lrs = np.array(entry["preview"]["lr"], dtype=float)
        ax.plot(entry["preview"]["epoch"], np.where(lrs > 0, lrs, np.nan), ls=style, color=f"C{k}", label=label)
    ax.set(yscale="log", xlabel="epoch", ylabel="learning rate", title="the rates (nnrun schedule preview)")
    ax.set_ylim(LR * 1e-4, LR * 2)
    ax.legend(fontsize=8)


def run(ctx: Context) -> Report:
    """Train every schedule at the same budget and peak rate; the table, verdict, notes and plot."""
    epochs, seeds = (3, 1) if ctx.quick else (15, ctx.seeds)
    dataset, target, data = setting(ctx)
    base = recipe(data=data, model={"arch": "mlp", "hidden": [128, 64], "norm": "none", "activation": "relu"},
                  init={"weights": "kaiming_normal"}, optimizer={"name": "sgd", "lr": LR, "momentum": 0.9},
                  train={"epochs": epochs, "threads": 1})
    raw = {"target": target, "epochs": epochs, "dataset": dataset,
           "schedules": train_all(ctx, base, epochs, seeds, target)}
    rows, final, fast, spread = summarize(raw["schedules"], epochs)
    verdict, because = decide(final, fast, target, seeds, epochs, dataset)

    def plot(fig) -> None:
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        plot_curves(ax1, raw["schedules"], final, target, f"{dataset}: mean of {seeds} seed(s)")
        plot_rates(ax2, raw["schedules"])

    return Report(columns=["schedule", "parameters", "final val_acc", "std (seeds)", "best val_acc",
                           f"runs reaching {target}", f"epochs to target (never: {epochs + 1})"],
                  rows=rows, verdict=verdict, because=because,
                  setup=(f"{dataset} (20% validation); MLP 128-64, ReLU, no normalization layers, He init; SGD "
                         f"momentum 0.9, peak rate {LR} for every schedule (cyclic: lr/4 to lr; one_cycle: up to "
                         f"lr), batch {data['batch_size']}, {epochs} epochs, {seeds} seed(s), one CPU thread per "
                         "run; schedule parameters set from the budget by fixed rules (see the table), not tuned."),
                  plot=plot, raw=raw, notes=notes_for(final, fast, spread, seeds, epochs))
