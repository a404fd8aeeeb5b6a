"""Random search against grid search with one important and one unimportant hyperparameter
(Bergstra and Bengio, Random Search for Hyper-Parameter Optimization, JMLR 2012).

A plain MLP (128-64, no normalization) trains for 2 epochs on the built-in digits with Adam; the two
hyperparameters are `optimizer.lr` (log-uniform in [1e-5, 1e-1]: after 2 epochs it decides between
chance and ~97%) and `optimizer.weight_decay` (log-uniform in [1e-7, 1e-4]: an L2 penalty this small
barely changes 2 epochs of Adam; a real recipe key rather than a dummy, so the search cannot tell it is
unimportant). The experiment measures how much each one matters from the 4x4 grid itself.

Random search is nnrun's own (`nnrun search`, nnrun.workflows.search.run, sampler random, 16 trials;
its first 9 trials are a 9-trial random search, since random trials are independent draws). nnrun
has no grid sampler, so the grids (3x3 = 9 and 4x4 = 16 trials) are explicit trials through
`nnrun train` (runner.train) at the centers of equal cells on the log scale of each range (the
fair grid: endpoints would spend trials on the extremes). Each repeat uses one seed for the random
sampler and for training (grid and random trials of a repeat share the training seed); the score of
a search is the best validation accuracy of its trials (each trial's best evaluation).
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from benchmarks.evidence.runner import Context, Report, log, mean, recipe, train, validate

NAME = "random-search"
TITLE = "6. Random search vs grid search"
CLAIM = ("When only a few hyperparameters matter, random search finds better settings than a grid with the "
         "same number of trials, because it tries a new value of the important ones in every trial.")
SOURCE = "Bergstra and Bengio, Random Search for Hyper-Parameter Optimization (JMLR 2012)"
LR = (1e-5, 1e-1)
WD = (1e-7, 1e-4)
BUDGETS = (9, 16)
MARGIN = 0.002  # a difference in mean best validation accuracy smaller than this is a tie


def grid_axis(low: float, high: float, n: int) -> list[float]:
    """`n` values at the centers of `n` equal cells of [low, high] on the log scale."""
    a, b = math.log10(low), math.log10(high)
    return [10 ** (a + (b - a) * (i + 0.5) / n) for i in range(n)]


def best_value(res) -> float:
    """A trial's score: its best validation accuracy (0 when it never evaluated)."""
    if res.best is not None and res.best.get("value") is not None:
        return float(res.best["value"])
    return max((h["val_acc"] for h in res.history if h.get("val_acc") is not None), default=0.0)


def verdict_of(diffs: dict[int, float]) -> str:
    """The rule, fixed before the runs: random search wins at a budget when its mean best validation
    accuracy beats the grid's by more than MARGIN, loses when it trails by more than MARGIN.
    Reproduced: it wins at both budgets (9 and 16); partly: it wins at one and does not lose at the
    other; otherwise not reproduced."""
    wins = [d > MARGIN for d in diffs.values()]
    losses = [d < -MARGIN for d in diffs.values()]
    if all(wins):
        return "reproduced"
    if any(wins) and not any(losses):
        return "partly"
    return "not reproduced"


def side_of(n: int) -> int:
    """The number of values per key of an `n`-trial square grid."""
    return int(round(math.sqrt(n)))


def base_recipe(ctx: Context, epochs: int) -> dict:
    """The recipe every trial starts from: the digits MLP with Adam."""
    data = {"source": "digits", "batch_size": 32, "val_fraction": 0.2}
    if ctx.quick:
        data["limit"] = 300
    return recipe(data=data, model={"arch": "mlp", "hidden": [128, 64], "norm": "none", "dropout": 0.0},
                  optimizer={"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
                  train={"epochs": epochs})


def random_trials(ctx: Context, base: dict, r: int, trials: int) -> list[dict]:
    """One repeat of nnrun's random search: each trial's lr, weight decay, score and state, in trial order."""
    from nnrun.recipe.search import parse
    from nnrun.workflows import search

    space = {"optimizer.lr": {"log_uniform": list(LR)}, "optimizer.weight_decay": {"log_uniform": list(WD)}}
    spec = validate(recipe(base, seed=r, search={"trials": trials, "sampler": "random", "space": space}),
                    f"random-r{r}")
    result = search.run(spec, parse(spec.search, spec), out=ctx.folder(f"random-r{r}"))
    trials_run = sorted(result.trials, key=lambda t: t.number)
    return [{"lr": t.params["optimizer.lr"], "wd": t.params["optimizer.weight_decay"],
             "acc": t.value if t.value is not None and math.isfinite(t.value) else 0.0,
             "state": t.state} for t in trials_run]


def grid_trials(ctx: Context, base: dict, r: int, n: int) -> list[dict]:
    """One repeat of the `n`-trial grid: each point's lr, weight decay and score."""
    side = side_of(n)
    points = []
    for lr in grid_axis(*LR, side):
        for wd in grid_axis(*WD, side):
            res = train(ctx, recipe(base, seed=r, optimizer={"lr": lr, "weight_decay": wd}), f"grid{n}-r{r}")
            points.append({"lr": lr, "wd": wd, "acc": best_value(res)})
    return points


def train_all(ctx: Context, base: dict, repeats: int, budgets: tuple[int, ...]) -> dict:
    """Every search of every repeat: the raw trials of the random searches and of the grids."""
    raw: dict = {"random": [], "grid": {str(n): [] for n in budgets}}
    for r in range(repeats):
        log(f"random-search: repeat {r + 1}/{repeats}: random search, {max(budgets)} trials")
        raw["random"].append(random_trials(ctx, base, r, max(budgets)))
        for n in budgets:
            side = side_of(n)
            log(f"random-search: repeat {r + 1}/{repeats}: {side}x{side} grid")
            raw["grid"][str(n)].append(grid_trials(ctx, base, r, n))
    return raw


def best_random(rep: list[dict], n: int) -> float:
    """The score of a random search cut to its first `n` trials."""
    return max(t["acc"] for t in rep[:n])


def best_grid(raw: dict, n: int) -> list[float]:
    """The score of each repeat's `n`-trial grid."""
    return [max(p["acc"] for p in rep) for rep in raw["grid"][str(n)]]


def table(raw: dict, budgets: tuple[int, ...], repeats: int) -> tuple[list, dict, dict]:
    """The table rows, and per budget the difference and the pair of mean scores (random, grid)."""
    rows, diffs, means = [], {}, {}
    for n in budgets:
        rnd = [best_random(rep, n) for rep in raw["random"]]
        grd = best_grid(raw, n)
        diffs[n] = mean(rnd) - mean(grd)
        means[n] = (mean(rnd), mean(grd))
        wins = sum(a > b for a, b in zip(rnd, grd))
        for label, values, distinct in (("random", rnd, n), ("grid", grd, side_of(n))):
            rows.append([n, label, mean(values), statistics.stdev(values) if len(values) > 1 else float("nan"),
                         min(values), distinct])
        rows.append([n, "random - grid", diffs[n], float("nan"), float("nan"), f"random ahead in {wins}/{repeats}"])
    return rows, diffs, means


def importance_of(raw: dict, budgets: tuple[int, ...]) -> dict:
    """How much each hyperparameter matters, read off the largest grids."""
    # The spread of the mean accuracy over the values of one key (averaged over the other key and the repeats).
    side = side_of(max(budgets))
    cube = np.array([[p["acc"] for p in rep] for rep in raw["grid"][str(max(budgets))]]).reshape(-1, side, side)
    by_lr, by_wd = cube.mean(axis=(0, 2)), cube.mean(axis=(0, 1))
    return {"lr": float(by_lr.max() - by_lr.min()), "weight_decay": float(by_wd.max() - by_wd.min()),
            "mean_acc_by_lr": by_lr.tolist(), "mean_acc_by_weight_decay": by_wd.tolist()}


def because_of(budgets: tuple[int, ...], repeats: int, diffs: dict, means: dict, importance: dict) -> str:
    """The verdict's sentence: the mean scores per budget and how much each key matters."""
    side = side_of(max(budgets))
    per_budget = ", ".join(f"at {n} trials random {means[n][0]:.4f} vs grid {means[n][1]:.4f} "
                           f"({100 * diffs[n]:+.2f} points)" for n in budgets)
    return (f"mean best validation accuracy over {repeats} search seeds: {per_budget}; on the {side}x{side} grid "
            f"the learning rate moves the mean accuracy by {importance['lr']:.3f} and the weight decay by "
            f"{importance['weight_decay']:.3f}, and a grid tries only {side} learning rates where random "
            f"search tries {max(budgets)}.")


def notes_of(raw: dict, budgets: tuple[int, ...]) -> list[str]:
    """The notes: where the good learning rates lie against the grid values, and how the grids are run."""
    # Why the grid does or does not miss: the learning rates of the random trials within 0.02 of the best
    # trial of the whole experiment, and which grid values fall inside their span.
    top = max(t["acc"] for rep in raw["random"] for t in rep)
    good = sorted(t["lr"] for rep in raw["random"] for t in rep if t["acc"] >= top - 0.02)
    share = sum(t["acc"] >= top - 0.02 for rep in raw["random"] for t in rep) / sum(len(rep) for rep in raw["random"])
    inside = {n: [v for v in grid_axis(*LR, side_of(n)) if good[0] <= v <= good[-1]] for n in budgets}
    return [f"Good region: {share:.0%} of the random trials score within 0.02 of the best trial ({top:.4f}); their "
            f"learning rates span {good[0]:.2g} to {good[-1]:.2g}, "
            f"{math.log10(good[-1] / good[0]) / math.log10(LR[1] / LR[0]):.0%} of the log range, and hold "
            + " and ".join(f"{len(v)} of the {side_of(n)} grid values "
                           f"({', '.join(f'{x:.2g}' for x in v) or '-'})" for n, v in inside.items())
            + ". When a grid value lands in the good region, the grid's other axis (the unimportant weight decay) "
            "gives it several noisy evaluations of that learning rate to pick the best from; random search's "
            "advantage needs a good region narrower than the grid's spacing (Bergstra and Bengio's Figure 1) "
            "or more hyperparameters.",
            "nnrun's search has no grid sampler (samplers: random, tpe; `choice` draws at random too), so the "
            "grid trials are explicit `nnrun train` runs with the same recipe, seed and scoring as the search's "
            f"trials. Grid values (log-cell centers): lr {', '.join(f'{v:.2g}' for v in grid_axis(*LR, 3))} "
            f"(3x3) and {', '.join(f'{v:.2g}' for v in grid_axis(*LR, 4))} (4x4)."]


def plot_progress(ax, raw: dict, budgets: tuple[int, ...], epochs: int, repeats: int) -> None:
    """Left panel: the best score so far of the random searches against the number of trials, with the grids."""
    curves = np.array([np.maximum.accumulate([t["acc"] for t in rep]) for rep in raw["random"]])
    x = np.arange(1, curves.shape[1] + 1)
    ax.plot(x, curves.mean(axis=0), color="tab:blue", marker=".", label="random (nnrun search), mean")
    ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color="tab:blue", alpha=0.15,
                    label="random, min-max over seeds")
    for n in budgets:
        grd = best_grid(raw, n)
        ax.errorbar([n], [mean(grd)], yerr=[[mean(grd) - min(grd)], [max(grd) - mean(grd)]], fmt="s",
                    color="tab:red", capsize=4, label="grid (mean, min-max)" if n == budgets[0] else None)
    ax.set(xlabel="trials", ylabel="best validation accuracy so far",
           title=f"digits MLP, {epochs} epoch(s) per trial, {repeats} search seeds")
    grid_all = [score for n in budgets for score in best_grid(raw, n)]
    top = max(curves.max(), *grid_all)
    low = min(curves[:, min(2, curves.shape[1] - 1)].min(), *grid_all)
    ax.set_ylim(max(0.0, low - 0.02), min(1.0, top + 0.01))
    ax.legend(fontsize=8, loc="lower right")


def plot_points(fig, ax, raw: dict, budgets: tuple[int, ...]) -> None:
    """Right panel: the points each search tried in the first repeat, colored by their score."""
    rep0 = raw["random"][0]
    pts = [(f"random ({len(rep0)})", rep0, "o")]
    pts += [(f"grid {side_of(n)}x{side_of(n)}", raw["grid"][str(n)][0], m) for n, m in zip(budgets, "^s")]
    for label, points, marker in pts:
        sc = ax.scatter([p["lr"] for p in points], [p["wd"] for p in points], c=[p["acc"] for p in points],
                        cmap="viridis", vmin=0.0, vmax=1.0, marker=marker, s=45, edgecolors="black",
                        linewidths=0.5, label=label)
    fig.colorbar(sc, ax=ax, label="best validation accuracy")
    ax.set(xscale="log", yscale="log", xlabel="optimizer.lr (important)",
           ylabel="optimizer.weight_decay (unimportant)", title="points tried (search seed 0)")
    ax.legend(fontsize=8, loc="upper left")


def run(ctx: Context) -> Report:
    """Train the random searches and the grids, then compare their best validation accuracies per budget."""
    # 2 search seeds per --seeds (6 by default); --quick: budgets of 1 and 4 trials, 1 seed
    epochs, repeats, budgets = (1, 1, (1, 4)) if ctx.quick else (2, 2 * ctx.seeds, BUDGETS)
    raw = train_all(ctx, base_recipe(ctx, epochs), repeats, budgets)
    rows, diffs, means = table(raw, budgets, repeats)
    importance = importance_of(raw, budgets)

    def plot(fig) -> None:
        """The figure: the search progress and the points tried."""
        plot_progress(fig.add_subplot(1, 2, 1), raw, budgets, epochs, repeats)
        plot_points(fig, fig.add_subplot(1, 2, 2), raw, budgets)

    return Report(columns=["trials", "search", "best val_acc (mean)", "std", "worst seed", "distinct lr values"],
                  rows=rows, verdict=verdict_of(diffs), because=because_of(budgets, repeats, diffs, means, importance),
                  setup=(f"digits (20% validation); MLP 128-64, no normalization; Adam, batch 32, {epochs} epoch(s) "
                         f"per trial; lr log-uniform in [{LR[0]:g}, {LR[1]:g}], weight decay log-uniform in "
                         f"[{WD[0]:g}, {WD[1]:g}]; random: `nnrun search` (sampler random, 16 trials, its first 9 "
                         f"for the 9-trial budget); grid: 3x3 and 4x4 log-cell centers; {repeats} repeats with "
                         "search and training seeds 0, 1, ..."),
                  plot=plot, raw={**raw, "importance": importance, "diffs": {str(k): v for k, v in diffs.items()}},
                  notes=notes_of(raw, budgets))
