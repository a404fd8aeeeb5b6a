"""The learning-rate range test (Smith 2015/2017): does `nnrun lr-find`'s suggestion train as well as
the best rate of a grid search at the same budget?

Folds in the logic of the former ``benchmarks/lr_find_rank.py`` (its 7-point grid, 1e-4 .. 1e-1 in half-decade
steps). For the shipped ``quickstart`` recipe on the built-in digits (10 epochs) and, with --mnist,
the shipped ``mnist-mlp`` recipe on the first 20,000 MNIST training images (2 epochs): for every
seed, run the range test (``nnrun.workflows.lr_find.run``, the CLI's defaults: 1e-7 to 10 in 100
steps) and train at its recommendation, at each voting rule's rate and at every grid rate, all for
the same budget. Reported: the final validation accuracy of each (mean over seeds), the
recommendation's rank among the grid and its gap to the grid's best.

Verdict rule (fixed before the full run, the aim the former lr_find_rank.py stated): the recommendation's mean
accuracy within 1 point of the grid's best on every dataset run: reproduced; within 3 points on every
dataset, or within 1 point on at least one: partly; otherwise not reproduced.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.evidence.runner import Context, Report, log, mean, recipe, train, validate

GRID = [10 ** (-4 + k / 2) for k in range(7)]  # 1e-4, 3.2e-4, ..., 1e-1: half-decade steps

NAME = "range-test"
TITLE = "3. The learning-rate range test"
CLAIM = ("One short run with a rising learning rate (the LR range test) finds a good learning rate: "
         "training at the rate it suggests is about as good as the best rate of a grid search at the same budget.")
SOURCE = ("Smith, Cyclical Learning Rates for Training Neural Networks (2015/2017), section 3.3; "
          "the suggestion rules of fastai's lr_find")
RULES = ("steep", "valley", "minimum")
AIM, PARTLY = 1.0, 3.0  # points of accuracy
THREADS = 1  # torch threads per run: the machine is shared, and 2 threads contend badly there


def shipped(name: str) -> dict:
    """A shipped recipe (nnrun/recipes/NAME.yaml) as a dict."""
    from nnrun.recipe import locate, parse_text

    text, source = locate(name)
    return parse_text(text, source)[0]


def lr2(lr: float) -> float:
    """Two significant digits, as lr-find prints its rates ."""
    return float(f"{lr:.2g}")


def bench(ctx: Context, label: str, base: dict, seeds: int, grid_lrs: list[float], rules: tuple[str, ...]) -> dict:
    """Per seed: the range test, then training at the recommendation, each rule's rate and each grid rate."""
    from nnrun.workflows import lr_find

    cache: dict[tuple[float, int], float] = {}

    def acc(lr: float, seed: int) -> float:
        key = (lr2(lr), seed)
        if key not in cache:
            log(f"range-test: {label}, lr {key[0]:g}, seed {seed}")
            res = train(ctx, recipe(base, seed=seed, optimizer={"lr": key[0]}), f"{label}-lr{key[0]:g}-s{seed}")
            cache[key] = res.history[-1]["val_acc"] if res.history else float("nan")
        return cache[key]

    finds = []
    for seed in range(seeds):
        log(f"range-test: {label}, lr-find, seed {seed}")
        found = lr_find.run(validate(recipe(base, seed=seed), f"{label}-find-s{seed}"),
                            out_dir=ctx.folder(f"{label}-lr-find-s{seed}"))
        s = found.suggestions
        finds.append({"seed": seed, "lr": s.lr, "recommended": s.recommended, "refused": s.refused,
                      "spread_decades": s.spread_decades, "warnings": s.warnings, "seconds": found.seconds,
                      "rules": {k: r.lr for k, r in s.rules.items()},
                      "curve": {"lr": found.curve.lrs, "loss": found.curve.losses,
                                "smoothed": found.curve.smoothed}})
    grid = {lr2(lr): [acc(lr, seed) for seed in range(seeds)] for lr in grid_lrs}
    rec = [acc(f["lr"], f["seed"]) if f["lr"] else float("nan") for f in finds]
    rules_acc = {k: [acc(f["rules"][k], f["seed"]) if f["rules"].get(k) else float("nan") for f in finds]
                 for k in rules}
    grid_mean = {lr: mean(v) for lr, v in grid.items()}
    best_lr = max(grid_mean, key=lambda lr: grid_mean[lr])
    rec_mean = mean(rec)
    return {"dataset": label, "epochs": base["train"]["epochs"], "finds": finds, "grid": grid, "grid_mean": grid_mean,
            "recommended_acc": rec, "recommended_mean": rec_mean, "rules_acc": rules_acc, "best_lr": best_lr,
            "best_acc": grid_mean[best_lr], "gap_points": 100 * (grid_mean[best_lr] - rec_mean),
            "rank": 1 + sum(a > rec_mean for a in grid_mean.values()) if math.isfinite(rec_mean) else None}


def jobs(ctx: Context) -> list[tuple[str, dict]]:
    """The (label, recipe) pairs to run: the digits, and MNIST's first 20,000 images with --mnist."""
    digits = recipe(shipped("quickstart"), train={"epochs": 1 if ctx.quick else 10, "threads": THREADS},
                    data={"limit": 400} if ctx.quick else {})
    out = [("digits", digits)]
    if ctx.mnist and not ctx.quick:
        out.append(("mnist-20k", recipe(shipped("mnist-mlp"), train={"epochs": 2, "threads": THREADS},
                                        data={"path": str(ctx.mnist), "limit": 20000})))
    return out


def table_rows(results: list[dict], grid_lrs: list[float]) -> list[list]:
    """One table row per dataset: the suggestions, their accuracy, the grid's best, the rank and the gap."""
    rows = []
    for r in results:
        lrs = " / ".join(f"{f['lr']:.2g}" if f["lr"] else "none" for f in r["finds"])
        rule_accs = ", ".join(f"{k} {mean(v):.4f}" for k, v in r["rules_acc"].items()) or "-"
        rank = f"{r['rank']} of {len(grid_lrs) + 1}" if r["rank"] else "-"
        rows.append([r["dataset"], f"{r['epochs']:g}", lrs, r["recommended_mean"], f"{r['best_lr']:.2g}",
                     r["best_acc"], rank, r["gap_points"], rule_accs])
    return rows


def decide(results: list[dict]) -> str:
    """The verdict from each dataset's gap to the grid's best (the rule in the module's docstring)."""
    gaps = [r["gap_points"] for r in results]
    finite = all(math.isfinite(g) for g in gaps)
    if finite and all(g <= AIM for g in gaps):
        return "reproduced"
    if finite and (all(g <= PARTLY for g in gaps) or any(g <= AIM for g in gaps)):
        return "partly"
    return "not reproduced"


def because_text(results: list[dict], grid_lrs: list[float], seeds: int) -> str:
    """The verdict's sentence: per dataset, the recommendation's accuracy against the grid's best."""
    return "; ".join(
        f"on {r['dataset']} ({r['epochs']:g} epochs) training at lr-find's rate gives {r['recommended_mean']:.4f} "
        f"validation accuracy against the grid's best {r['best_acc']:.4f} (lr {r['best_lr']:.2g}), rank "
        f"{r['rank'] or '-'} of {len(grid_lrs) + 1}, a gap of {r['gap_points']:.2f} points" for r in results) + \
        f" (mean of {seeds} seed(s); the aim is within {AIM:g} point)."


def notes_for(results: list[dict], grid_lrs: list[float]) -> list[str]:
    """Per dataset: the grid's accuracy per rate, the cost of a range test, and any lr-find warnings."""
    notes = []
    for r in results:
        grid_text = ", ".join(f"{lr:.2g}: {a:.4f}" for lr, a in r["grid_mean"].items())
        secs = mean([f["seconds"] for f in r["finds"]])
        notes.append(f"{r['dataset']}: the grid's mean validation accuracy per rate: {grid_text}. One range test "
                     f"took {secs:.1f} s; the grid costs {len(grid_lrs)} full trainings per seed.")
        warns = sorted({w for f in r["finds"] for w in f["warnings"]})
        refused = [f["refused"] for f in r["finds"] if f["refused"]]
        if warns or refused:
            notes.append(f"{r['dataset']}: lr-find warned: {'; '.join(warns + refused)}.")
    return notes


def plot_range_tests(ax, results: list[dict]) -> None:
    """Left panel: seed 0's range-test loss curves (raw and smoothed) and each suggestion."""
    for k, r in enumerate(results):
        f = r["finds"][0]
        ax.plot(f["curve"]["lr"], f["curve"]["loss"], color=f"C{k}", alpha=0.25, lw=0.8)
        ax.plot(f["curve"]["lr"], f["curve"]["smoothed"], color=f"C{k}", lw=1.8,
                label=f"{r['dataset']} (seed 0), smoothed")
        if f["lr"]:
            ax.axvline(f["lr"], color=f"C{k}", ls="--", label=f"{r['dataset']} suggestion {f['lr']:.2g}")
    losses = [v for r in results for v in r["finds"][0]["curve"]["smoothed"] if math.isfinite(v)]
    if losses:
        ax.set_ylim(0, min(max(losses), 2 * np.median(losses) + 1.0))
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="range test (lr-find)")
    ax.legend(fontsize=8)


def plot_grid(ax, results: list[dict], seeds: int) -> None:
    """Right panel: the grid's mean accuracy per rate, with each seed's suggestion as a star."""
    for k, r in enumerate(results):
        lrs = list(r["grid_mean"])
        ax.plot(lrs, [r["grid_mean"][lr] for lr in lrs], marker="o", color=f"C{k}", label=f"{r['dataset']} grid")
        for f, a in zip(r["finds"], r["recommended_acc"]):
            if f["lr"]:
                ax.plot([f["lr"]], [a], marker="*", ms=14, color=f"C{k}", mec="black", ls="none")
        ax.plot([], [], marker="*", ms=12, color=f"C{k}", mec="black", ls="none",
                label=f"{r['dataset']} lr-find suggestion (each seed)")
    ax.set(xscale="log", xlabel="learning rate", ylabel="final validation accuracy",
           title=f"grid at equal budget (mean of {seeds} seed(s))")
    ax.legend(fontsize=8)


def setup_text(ctx: Context, results: list[dict], seeds: int) -> str:
    """The setup sentence: the recipes, budgets, seeds and the grid."""
    return ("digits: the shipped `quickstart` recipe (MLP 128-64 with BatchNorm, Adam, batch 32, 20% validation) "
            f"for {results[0]['epochs']:g} epochs" + (" on the first 400 examples" if ctx.quick else "") +
            ("; MNIST: the shipped `mnist-mlp` recipe (MLP 256-128, BatchNorm, dropout 0.1, Adam, batch 128, 10% "
             "validation) on the first 20,000 training images for 2 epochs" if len(results) > 1 else "") +
            f". Per seed ({seeds}): `nnrun lr-find` with its defaults (1e-7 to 10, 100 steps), then training at "
            "its recommendation, at each rule's rate and at every rate of the grid 1e-4, 3.2e-4, ..., 1e-1 "
            "(7 rates, half-decade steps); one CPU thread per run.")


def run(ctx: Context) -> Report:
    """Run the range test and the grid on every dataset; the table, verdict, notes and plot."""
    seeds = 1 if ctx.quick else ctx.seeds
    # --quick: every other grid rate and no extra rule runs (a check of the runner, not of the claim)
    grid_lrs, rules = (GRID[::2], ()) if ctx.quick else (GRID, RULES)
    results = [bench(ctx, label, base, seeds, grid_lrs, rules) for label, base in jobs(ctx)]

    def plot(fig) -> None:
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        plot_range_tests(ax1, results)
        plot_grid(ax2, results, seeds)

    return Report(columns=["dataset", "epochs", "lr-find suggests (per seed)", "its val_acc", "grid best lr",
                           "grid best val_acc", "rank", "gap (points)", "val_acc at each rule's rate"],
                  rows=table_rows(results, grid_lrs), verdict=decide(results),
                  because=because_text(results, grid_lrs, seeds), setup=setup_text(ctx, results, seeds), plot=plot,
                  raw={"grid": [lr2(lr) for lr in grid_lrs], "results": results}, notes=notes_for(results, grid_lrs))
