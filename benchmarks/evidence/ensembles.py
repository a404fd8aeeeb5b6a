"""Ensembles and weight averaging against a single model, on the test split (the lecture notes' "model
ensembles"; Huang et al. 2017, snapshot ensembles; Izmailov et al. 2018, SWA; Polyak averaging / EMA).

Every method trains through `nnrun train` with an `ensemble` section and is combined and scored with
`nnrun ensemble` (nnrun.workflows.ensemble.run) on the test split, never used for any choice:

- single model: one run of the base recipe (its final weights);
- seed ensemble: K runs that differ only in the seed (`ensemble.seeds: K`), probabilities averaged
  (K times the training cost); also the ensemble of their EMA weights;
- EMA: the same runs' exponential moving average of the weights (`ensemble.strategy: ema`, nnrun's
  default decay 0.999 with warm-up), scored per run;
- SWA: `ensemble.strategy: swa` (equal average of the end-of-epoch weights from 75% of the run on, at
  the base recipe's constant rate; BatchNorm statistics recomputed), scored per run;
- snapshot ensemble: one run on an SGDR schedule (M cosine cycles of equal length, restarts to the base
  rate) keeping a member at the end of each cycle (`ensemble.strategy: snapshots`);
- checkpoint ensemble: one run of the base recipe keeping a member every E/M epochs
  (`ensemble.strategy: checkpoints`), probabilities averaged, and the same members averaged in weight
  space (`--mode weights`, BatchNorm statistics chosen on the validation split).

The base recipes are nnrun's shipped ones: `quickstart` for the digits (MLP 128-64 with BatchNorm,
Adam 3e-3, batch 32, 20 epochs, constant rate) and `mnist-mlp` for MNIST (MLP 256-128 with BatchNorm
and dropout 0.1, Adam 1e-3, batch 128; here 10 epochs on the first 10,000 training images, scored on
all 10,000 test images). This folds in the former benchmarks/ensemble_gain.py (seeds with EMA, combined raw and
with EMA weights).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from benchmarks.evidence.runner import Context, Report, log, mean, recipe, train

NAME = "ensembles"
TITLE = "5. Ensembles and weight averaging"
CLAIM = ("Averaging the predictions of several models beats a single model; snapshots or checkpoints of one run "
         "(Huang et al.) and averaged weights (EMA, SWA) get part of that gain at the cost of one run.")
SOURCE = ("CS231n lecture notes, 'Model ensembles'; Huang et al., Snapshot Ensembles: Train 1, get M for free "
          "(ICLR 2017); Izmailov et al., Averaging Weights Leads to Wider Optima and Better Generalization "
          "(UAI 2018); Polyak and Juditsky 1992")
THRESHOLD = 0.002  # a method "beats" the single model when its mean test accuracy is this much higher
METHODS = ["single model", "EMA", "SWA", "snapshot ensemble", "checkpoint ensemble", "checkpoint average (weights)",
           "seed ensemble", "seed ensemble of EMA models"]
ONE_RUN = ["EMA", "SWA", "snapshot ensemble", "checkpoint ensemble"]  # what the verdict counts besides seeds


def mnist_subset(folder: Path, mnist: Path, n_train: int = 10_000) -> Path:
    """The first `n_train` MNIST training images and all 10,000 test images as one npz (read with nnrun's
    own IDX reader), so that each of the many runs loads 20,000 images instead of decoding 70,000."""
    from nnrun.data.idx import load_pair

    train_part, test_part = load_pair(mnist, "train", "mnist"), load_pair(mnist, "test", "mnist")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mnist-subset.npz"
    np.savez(path, x=train_part.x[:n_train].numpy().astype(np.uint8), y=train_part.y[:n_train].numpy(),
             x_test=test_part.x.numpy().astype(np.uint8), y_test=test_part.y.numpy())
    return path


def bases(ctx: Context) -> dict[str, dict]:
    """Per dataset: the base recipe, epochs E, seeds K, members M (snapshots, checkpoints)."""
    if ctx.quick:
        spec = recipe(data={"source": "digits", "batch_size": 32, "val_fraction": 0.2, "limit": 300},
                      model={"arch": "mlp", "hidden": [32], "norm": "batch"},
                      optimizer={"name": "adam", "lr": 3e-3}, train={"epochs": 2})
        return {"digits": {"spec": spec, "epochs": 2, "k": 2, "m": 2}}
    out = {"digits": {"spec": recipe(data={"source": "digits", "batch_size": 32, "val_fraction": 0.2,
                                           "normalize": "standardize"},
                                     model={"arch": "mlp", "hidden": [128, 64], "activation": "relu", "norm": "batch"},
                                     init={"weights": "kaiming_normal"}, optimizer={"name": "adam", "lr": 3e-3},
                                     train={"epochs": 20}),
                      "epochs": 20, "k": 5, "m": 5}}
    if ctx.mnist:
        path = mnist_subset(ctx.tmp / "data", ctx.mnist)
        out["MNIST 10k"] = {"spec": recipe(data={"source": "npz", "path": str(path), "task": "classification",
                                                 "batch_size": 128, "val_fraction": 0.1, "normalize": "standardize"},
                                           model={"arch": "mlp", "hidden": [256, 128], "activation": "relu",
                                                  "norm": "batch", "dropout": 0.1},
                                           init={"weights": "kaiming_normal"}, optimizer={"name": "adam", "lr": 1e-3},
                                           train={"epochs": 10}),
                            "epochs": 10, "k": 5, "m": 5}
    return out


def accs(result) -> list[float]:
    """Each member's test accuracy in an EnsembleResult, in the order of the members' file names (for
    snapshots and checkpoints: the order they were taken in; the result itself ranks them)."""
    return [m.metrics["test_acc"] for m in sorted(result.members, key=lambda m: m.path.name)]


def seed_ensemble(ctx: Context, spec: dict, name: str, k: int, seed: int, strategy: str):
    """K seeds of a recipe in one ensemble folder (the former ensemble_gain.py's study): the training result."""
    return train(ctx, recipe(spec, seed=seed, ensemble={"strategy": strategy, "seeds": k}), name)


def one_dataset(ctx: Context, label: str, cfg: dict, repeats: int) -> dict:
    """Every method on one dataset: the test accuracies per method (and per repeat)."""
    from nnrun.workflows import ensemble

    spec, epochs, k, m = cfg["spec"], cfg["epochs"], cfg["k"], cfg["m"]
    tag = label.split()[0].lower()
    found: dict[str, list] = {name: [] for name in METHODS}
    members: dict[str, list] = {"snapshot members": [], "checkpoint members": []}
    for r in range(repeats):
        seed = 100 * r
        log(f"ensembles: {label}, repeat {r + 1}/{repeats}: {k} seeds with EMA")
        a = seed_ensemble(ctx, spec, f"{tag}-seeds-ema-r{r}", k, seed, "ema")
        raw = ensemble.run([a.run_dir], split="test", use_ema=False)
        ema = ensemble.run([a.run_dir], split="test", use_ema=True)
        found["single model"] += accs(raw)
        found["EMA"] += accs(ema)
        found["seed ensemble"].append(raw.metrics["test_acc"])
        found["seed ensemble of EMA models"].append(ema.metrics["test_acc"])
        log(f"ensembles: {label}, repeat {r + 1}/{repeats}: {k} seeds with SWA")
        b = seed_ensemble(ctx, spec, f"{tag}-seeds-swa-r{r}", k, seed, "swa")
        found["SWA"] += accs(ensemble.run([b.run_dir], split="test", use_ema=True))
        log(f"ensembles: {label}, repeat {r + 1}/{repeats}: snapshots and checkpoints")
        c = train(ctx, recipe(spec, seed=seed, schedule={"name": "sgdr", "cycle_len": epochs / m, "cycle_mult": 1.0},
                              ensemble={"strategy": "snapshots"}), f"{tag}-snapshots-r{r}")
        snap = ensemble.run([c.run_dir], split="test")
        found["snapshot ensemble"].append(snap.metrics["test_acc"])
        members["snapshot members"].append(accs(snap))
        d = train(ctx, recipe(spec, seed=seed, ensemble={"strategy": "checkpoints", "every": max(1, epochs // m)}),
                  f"{tag}-checkpoints-r{r}")
        ckpt = ensemble.run([d.run_dir], split="test")
        found["checkpoint ensemble"].append(ckpt.metrics["test_acc"])
        members["checkpoint members"].append(accs(ckpt))
        soup = ensemble.run([d.run_dir], split="test", mode="weights")
        found["checkpoint average (weights)"].append(soup.metrics["test_acc"])
    return {"accuracy": found, **members, "examples": raw.examples, "epochs": epochs, "k": k, "m": m}


COST = {"single model": "1", "EMA": "1", "SWA": "1", "snapshot ensemble": "1", "checkpoint ensemble": "1",
        "checkpoint average (weights)": "1", "seed ensemble": "K", "seed ensemble of EMA models": "K"}


def judge(found: dict) -> tuple[str, float, list[str]]:
    """The rule, fixed before the runs, for one dataset: a method beats the single model when its mean
    test accuracy is at least THRESHOLD (0.2 points) higher. Reproduced: the seed ensemble beats it and
    at least 3 of the 4 one-run methods (EMA, SWA, snapshots, checkpoint ensemble) do; not reproduced:
    neither the seed ensemble nor any one-run method does; otherwise partly."""
    single = mean(found["single model"])
    seeds_win = mean(found["seed ensemble"]) - single >= THRESHOLD
    winners = [name for name in ONE_RUN if mean(found[name]) - single >= THRESHOLD]
    if seeds_win and len(winners) >= 3:
        return "reproduced", single, winners
    if not seeds_win and not winners:
        return "not reproduced", single, winners
    return "partly", single, winners


def method_rows(label: str, res: dict, single: float) -> list[list]:
    """The table rows of one dataset: each method's runs, mean and std test accuracy and gain vs single."""
    found = res["accuracy"]
    rows = []
    for name in METHODS:
        values = found[name]
        rows.append([label, name, COST[name].replace("K", str(res["k"])), mean(values),
                     statistics.stdev(values) if len(values) > 1 else float("nan"), len(values),
                     100 * (mean(values) - single)])
    return rows


def tabulate(data: dict, repeats: int) -> tuple[list[list], str, str]:
    """The rows over all datasets, the overall verdict (one per dataset, "partly" when they differ) and why."""
    rows, verdicts, sentences = [], [], []
    for label, res in data.items():
        found = res["accuracy"]
        verdict, single, winners = judge(found)
        verdicts.append(verdict)
        rows += method_rows(label, res, single)
        gains = ", ".join(f"{name} {100 * (mean(found[name]) - single):+.3f}" for name in METHODS[1:])
        sentences.append(f"{label} ({res['examples']} test images): single models {single:.4f}; gains in points: "
                         f"{gains}; {len(winners)} of 4 one-run methods gain at least {100 * THRESHOLD:.1f} "
                         f"({', '.join(winners) or 'none'}) [{verdict}]")
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "partly"
    because = "; ".join(sentences) + f" (mean of {repeats} repeat(s))."
    return rows, verdict, because


def write_notes(data: dict) -> list[str]:
    """The notes: how EMA and SWA are scored, and per dataset how the snapshot and checkpoint members score."""
    notes = ["Single-model, EMA and SWA rows average every run (K per repeat); ensemble rows one value per "
             "repeat. `nnrun predict` scores a checkpoint's raw weights only (it ignores the EMA/SWA weights "
             "stored beside them) and `nnrun ensemble` needs at least 2 members, so EMA and SWA are scored as "
             "the members of a K-seed folder (`nnrun ensemble RUN --split test` lists each member's score)."]
    for label, res in data.items():
        snaps = [f"{v:.4f}" for v in np.mean(res["snapshot members"], axis=0)]
        ckpts = [f"{v:.4f}" for v in np.mean(res["checkpoint members"], axis=0)]
        single = mean(res["accuracy"]["single model"])
        notes.append(f"{label}: the snapshot members (one per cycle, first to last) score {', '.join(snaps)} and the "
                     f"checkpoint members (every {res['epochs'] // res['m']} epochs) {', '.join(ckpts)} on their own "
                     f"(mean over repeats), against {single:.4f} for a single model's final weights. Each snapshot "
                     f"cycle lasts {res['epochs'] / res['m']:g} epochs from a restart at the full rate (Huang et al. "
                     "ran cycles of tens of epochs with SGD), and the checkpoints share one trajectory, so at this "
                     "budget their members are weaker or less diverse than independently seeded models.")
    return notes


def plot_dataset(ax, label: str, res: dict) -> None:
    """One panel: each method's mean test accuracy on one dataset (bars), its std (whiskers) and runs (dots)."""
    found = res["accuracy"]
    x = np.arange(len(METHODS))
    means = [mean(found[n]) for n in METHODS]
    spread = [statistics.stdev(found[n]) if len(found[n]) > 1 else 0.0 for n in METHODS]
    ax.bar(x, means, yerr=spread, capsize=3, color=["tab:grey"] + ["tab:blue"] * 5 + ["tab:orange"] * 2)
    for j, n in enumerate(METHODS):
        ax.scatter(np.full(len(found[n]), j) + np.linspace(-0.2, 0.2, len(found[n])), found[n],
                   s=8, color="black", zorder=3)
    low = min(min(found[n]) for n in METHODS)
    ax.set_ylim(max(0.0, low - 0.01), min(1.0, max(max(found[n]) for n in METHODS) + 0.005))
    ax.axhline(means[0], color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, [n.replace(" ensemble", "\nensemble").replace(" average", "\naverage")
                      .replace(" of EMA", "\nof EMA") for n in METHODS], fontsize=7, rotation=45,
                  ha="right")
    ax.set(ylabel="test accuracy", title=f"{label}: bars mean, whiskers std, dots runs")


def describe_setup(data: dict, repeats: int) -> str:
    """The setup paragraph: the base recipes, the methods' settings and each dataset's budget."""
    setup_parts = [f"{label}: {res['epochs']} epochs per run, K={res['k']} seeds, M={res['m']} snapshots / "
                   f"checkpoints, {repeats} repeat(s) (seeds 0, 100, 200, ...)" for label, res in data.items()]
    return ("digits: nnrun's quickstart recipe (MLP 128-64, BatchNorm, Adam 3e-3 constant, batch 32); "
            "MNIST (with --mnist): mnist-mlp (MLP 256-128, BatchNorm, dropout 0.1, Adam 1e-3, batch "
            "128) on the first 10,000 training images; snapshots: SGDR with M equal cycles, "
            "checkpoints: every E/M epochs; EMA decay 0.999, SWA from 75% of the run; "
            + "; ".join(setup_parts) + ". Scored on the test split with `nnrun ensemble`.")


def run(ctx: Context) -> Report:
    """Run every method on every dataset, then report the table, the verdict, the notes and the plot."""
    repeats = 1 if ctx.quick else ctx.seeds
    data = {label: one_dataset(ctx, label, cfg, repeats) for label, cfg in bases(ctx).items()}
    rows, verdict, because = tabulate(data, repeats)

    def plot(fig) -> None:
        for i, (label, res) in enumerate(data.items()):
            plot_dataset(fig.add_subplot(1, len(data), i + 1), label, res)

    return Report(columns=["data", "method", "training runs", "test_acc", "std", "n", "gain vs single (points)"],
                  rows=rows, verdict=verdict, because=because, setup=describe_setup(data, repeats),
                  plot=plot, raw=data, notes=write_notes(data))
