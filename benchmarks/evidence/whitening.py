"""Whitening inputs with training-set statistics (the "20 tips"; LeCun et al., Efficient BackProp, 1998).

The built-in digits (64 pixel features, 0..16) with 8 of the features rescaled by 1000 and shifted by
500, as raw measurements in other units would be. The same MLP trains on them with `data.normalize:
none`, `standardize`, `minmax` and `standardize` + `tanh_scale: 2`: epochs to a target validation
accuracy and the final accuracy, mean over seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.evidence.runner import Context, Report, log, mean, recipe, train

NAME = "whitening"
TITLE = "7. Whitening inputs"
CLAIM = ("Inputs on very different scales slow or stall training; shifting and scaling each feature with "
         "training-set statistics (whitening) fixes it.")
SOURCE = "LeCun, Bottou, Orr and Müller, Efficient BackProp (1998), section 4.3; the '20 tips'"
TARGET = 0.95
CONFIGS = {"none": {"normalize": "none"}, "standardize": {"normalize": "standardize"},
           "minmax": {"normalize": "minmax"}, "standardize + tanh": {"normalize": "standardize", "tanh_scale": 2.0}}


def skewed_digits(folder: Path) -> Path:
    """The digits as an npz of 64 float features with features 0, 8, ..., 56 scaled by 1000 and shifted."""
    import nnrun.data

    digits = np.load(Path(nnrun.data.__file__).parent / "digits.npz")
    x = digits["x"].reshape(len(digits["x"]), 64).astype(np.float32)
    x[:, ::8] = x[:, ::8] * 1000.0 + 500.0
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "skewed-digits.npz"
    np.savez(path, x=x, y=digits["y"].astype(np.int64))
    return path


def epochs_to(history: list[dict], target: float) -> float:
    """The first evaluation's epoch at or above `target` (nan: never)."""
    return next((float(h["epoch"]) for h in history if h.get("val_acc", 0) >= target), float("nan"))


def run(ctx: Context) -> Report:
    data = skewed_digits(ctx.tmp)
    epochs, seeds = (2, 1) if ctx.quick else (20, ctx.seeds)
    base = recipe(data={"source": "npz", "path": str(data), "batch_size": 32, "val_fraction": 0.2,
                        "task": "classification"},
                  model={"arch": "mlp", "hidden": [64, 32], "norm": "none", "dropout": 0.0},
                  optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, train={"epochs": epochs})
    raw: dict = {}
    for label, data_keys in CONFIGS.items():
        runs = []
        for seed in range(seeds):
            log(f"whitening: {label}, seed {seed}")
            res = train(ctx, recipe(base, seed=seed, data=data_keys), f"{label.replace(' ', '')}-s{seed}")
            runs.append({"curve": [h.get("val_acc") for h in res.history], "final": res.history[-1]["val_acc"],
                         "to_target": epochs_to(res.history, TARGET), "stop": res.stop_reason})
        raw[label] = runs
    rows = []
    for label, runs in raw.items():
        reached = [r["to_target"] for r in runs if r["to_target"] == r["to_target"]]
        rows.append([label, mean([r["final"] for r in runs]), f"{len(reached)}/{len(runs)}",
                     mean(reached) if reached else float("nan")])
    none_final, std_final = rows[0][1], rows[1][1]
    verdict = "reproduced" if std_final - none_final >= 0.05 else ("partly" if std_final > none_final else
                                                                   "not reproduced")
    because = (f"with 8 features 1000x larger, unnormalized inputs end at {none_final:.3f} validation accuracy "
               f"against {std_final:.3f} standardized (mean of {seeds} seed(s), {epochs} epochs, SGD momentum).")

    stops = sorted({r["stop"] for r in raw["none"]})
    best_none = max(max((v for v in r["curve"] if v is not None), default=0.0) for r in raw["none"])
    notes = [f"Without normalization the best validation accuracy of any epoch of any seed was {best_none:.3f} "
             f"(10 classes: chance is about 0.10); how those runs ended: {'; '.join(stops)}."]

    def plot(fig) -> None:
        ax = fig.add_subplot(1, 1, 1)
        for label, runs in raw.items():
            curves = np.array([[v if v is not None else np.nan for v in r["curve"]] for r in runs], dtype=float)
            ax.plot(range(1, curves.shape[1] + 1), np.nanmean(curves, axis=0), marker=".", label=label)
        ax.axhline(TARGET, color="grey", lw=0.8, ls="--")
        ax.set(xlabel="epoch", ylabel="validation accuracy", title="skewed digits: input normalization")
        ax.legend()

    return Report(columns=["normalize", "final val_acc", f"runs reaching {TARGET}", "epochs to target"],
                  rows=rows, verdict=verdict, because=because,
                  setup=(f"digits as 64 features, features 0, 8, ..., 56 times 1000 plus 500; MLP 64-32 (no "
                         f"normalization layers), SGD lr 0.05 momentum 0.9, batch 32, {epochs} epochs, "
                         f"{seeds} seed(s); 20% validation split."),
                  plot=plot, raw=raw, notes=notes)
