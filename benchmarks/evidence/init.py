"""Weight initialization of a deep net (He et al. 2015; Glorot & Bengio 2010).

A 20-hidden-layer MLP (width 128) on an MNIST subset (the built-in digits without --mnist) trains with
`init.weights` normal (std 0.01), xavier_normal (gain 1, Glorot and Bengio's formula), kaiming_normal
(He), lsuv and zeros (which nnrun refuses). At init, a callback's forward hooks record the standard
deviation of every linear layer's output (the pre-activations) on the first training batch; then the
validation loss after the first epoch and the final validation accuracy, mean over seeds. The same net
with tanh compares PyTorch's default init (Glorot's "standard" U(-1/sqrt(n), 1/sqrt(n))), Xavier and
He's ReLU init.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.evidence.runner import Context, Report, log, mean, recipe, train, validate
from nnrun.errors import RecipeError
from nnrun.training.callbacks import Callback

NAME = "init"
TITLE = "1. Weight initialization of deep nets"
CLAIM = ("In a deep ReLU net, a small fixed-std init and Glorot/Xavier init shrink the signal layer after layer "
         "and slow or stall training, while He (Kaiming) init keeps its scale through the depth and trains; "
         "for tanh nets Xavier is the right scale; all-zero weights never break the symmetry.")
SOURCE = ("He, Zhang, Ren and Sun, Delving Deep into Rectifiers (ICCV 2015), section 2.2; Glorot and Bengio, "
          "Understanding the difficulty of training deep feedforward neural networks (AISTATS 2010)")
DEPTH, WIDTH = 20, 128
# (net, label, init section); `normal` uses init.std, xavier gets Glorot's own gain 1 (nnrun's default
# gain is the activation's, sqrt(2) for ReLU, which makes it He init on square layers).
RELU = [("relu", "normal std 0.01", {"weights": "normal", "std": 0.01}),
        ("relu", "xavier_normal (gain 1)", {"weights": "xavier_normal", "gain": 1.0}),
        ("relu", "kaiming_normal", {"weights": "kaiming_normal"}),
        ("relu", "lsuv", {"weights": "lsuv"}),
        ("relu", "zeros", {"weights": "zeros"})]
TANH = [("tanh", "default (PyTorch)", {"weights": "default"}),
        ("tanh", "xavier_normal (gain 1)", {"weights": "xavier_normal", "gain": 1.0}),
        ("tanh", "kaiming_normal (ReLU gain)", {"weights": "kaiming_normal", "nonlinearity": "relu"})]


class ActivationScale(Callback):
    """A callback: the std of every nn.Linear output (pre-activations, head last) in the first forward
    of training, i.e. with the initial weights on the first training batch; then the hooks go."""

    def __init__(self):
        self.stds: list[float] = []
        self.handles: list = []

    def on_fit_start(self, trainer) -> None:
        from torch import nn

        layers = [m for m in trainer.model.modules() if isinstance(m, nn.Linear)]

        def hook(module, inputs, out):
            if len(self.stds) < len(layers):
                self.stds.append(float(out.detach().float().std()))

        self.handles = [m.register_forward_hook(hook) for m in layers]

    def on_step_end(self, trainer) -> None:
        self.close()

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def refusal(spec: dict, name: str) -> str | None:
    """nnrun's refusal message for a recipe (None: it is accepted)."""
    try:
        validate(spec, name)
    except RecipeError as exc:
        return "; ".join(p.message for p in exc.problems)
    return None


def data_section(ctx: Context, limit: int) -> tuple[dict, str]:
    """The recipe's data section (without the batch size) and a sentence saying what data it is."""
    if ctx.mnist is not None:
        data = {"source": "mnist", "path": str(ctx.mnist), "download": False, "limit": limit,
                "val_fraction": 1 / 6}
        where = (f"MNIST, the first {limit} training images (5/6 train, 1/6 validation)")
    else:
        data = {"source": "digits", "val_fraction": 0.2, **({"limit": limit} if ctx.quick else {})}
        where = "the built-in digits (no --mnist given; 80% train, 20% validation)"
    return data, where


def train_all(ctx: Context, base: dict, seeds: int) -> tuple[dict, dict[str, str]]:
    """Train every (net, init) configuration over the seeds: the raw runs per key, and nnrun's refusals."""
    raw: dict = {}
    refused: dict[str, str] = {}
    for net, label, init in RELU + TANH:
        key = f"{net}: {label}"
        slug = f"{net}-{init['weights']}{'-relu' if 'nonlinearity' in init else ''}"
        runs = []
        for seed in range(seeds):
            spec = recipe(base, seed=seed, model={"activation": net}, init=init)
            message = refusal(spec, slug)
            if message is not None:
                refused[key] = message
                break
            log(f"init: {key}, seed {seed}")
            scale = ActivationScale()
            res = train(ctx, spec, f"{slug}-s{seed}", callbacks=[scale])
            hist = res.history
            runs.append({"stds": scale.stds, "curve": [h.get("val_acc") for h in hist],
                         "val_loss_1": hist[0].get("val_loss") if hist else None,
                         "train_loss_1": hist[0].get("train_loss") if hist else None,
                         "final": hist[-1].get("val_acc") if hist else None, "stop": res.stop_reason})
        raw[key] = {"net": net, "init": label, "recipe_init": init, "runs": runs, "refused": refused.get(key)}
    return raw, refused


def stds_of(raw: dict, key: str) -> np.ndarray:
    """Per-layer std, mean over seeds (layer 1 .. DEPTH hidden, then the head)."""
    return np.array([r["stds"] for r in raw[key]["runs"]], dtype=float).mean(axis=0)


def summarize(raw: dict) -> tuple[list[list], dict]:
    """The table rows and the per-configuration summary (stds at init, loss after epoch 1, final accuracy)."""
    rows, summary = [], {}
    for key, entry in raw.items():
        if entry["refused"]:
            rows.append([entry["net"], entry["init"], "refused", "refused", "refused", "refused"])
            continue
        s = stds_of(raw, key)
        summary[key] = {"std_first": float(s[0]), "std_last": float(s[DEPTH - 1]),
                        "ratio": float(s[DEPTH - 1] / s[0]) if s[0] > 0 else float("nan"),
                        "val_loss_1": mean([r["val_loss_1"] for r in entry["runs"]]),
                        "final": mean([r["final"] for r in entry["runs"]])}
        m = summary[key]
        rows.append([entry["net"], entry["init"], m["std_first"], m["std_last"], m["val_loss_1"], m["final"]])
    return rows, summary


def relu_summaries(summary: dict) -> tuple[dict, dict, dict]:
    """The ReLU net's summaries for kaiming_normal, Xavier (gain 1) and normal std 0.01 ({} when absent)."""
    k, x, n = (summary.get(f"relu: {lbl}", {}) for lbl in ("kaiming_normal", "xavier_normal (gain 1)",
                                                            "normal std 0.01"))
    return k, x, n


def tanh_summaries(summary: dict) -> dict:
    """The tanh net's summaries, by key."""
    return {key: m for key, m in summary.items() if key.startswith("tanh")}


def judge(summary: dict, refused: dict[str, str]) -> tuple[str, dict[str, bool]]:
    """The verdict and the outcome of each of its checks."""
    # The verdict rule, fixed before the full run:
    #  1 scale:   ReLU net at init, std(layer 20)/std(layer 1) is within [1/4, 4] for kaiming_normal, below
    #             0.1 for Xavier (gain 1) and below 0.01 for normal std 0.01;
    #  2 stall:   kaiming's final accuracy beats normal std 0.01's by at least 0.3;
    #  3 faster:  kaiming's validation loss after epoch 1 is below Xavier's and its final accuracy is not
    #             lower by more than 0.005;
    #  4 tanh:    in the tanh net Xavier's final accuracy is within 0.005 of the best of the three;
    #  5 zeros:   nnrun refuses zeros.
    # reproduced: all five; not reproduced: neither 1 nor 3; partly: anything between.
    k, x, n = relu_summaries(summary)
    tanh = tanh_summaries(summary)
    tx = tanh.get("tanh: xavier_normal (gain 1)", {}).get("final", float("nan"))
    checks = {
        "scale": 0.25 <= k.get("ratio", math.nan) <= 4 and x.get("ratio", math.nan) < 0.1
        and n.get("ratio", math.nan) < 0.01,
        "stall": k.get("final", math.nan) - n.get("final", math.nan) >= 0.3,
        "faster": k.get("val_loss_1", math.nan) < x.get("val_loss_1", math.nan)
        and k.get("final", math.nan) >= x.get("final", math.nan) - 0.005,
        "tanh": bool(tanh) and tx >= max(m["final"] for m in tanh.values()) - 0.005,
        "zeros": "relu: zeros" in refused,
    }
    verdict = ("reproduced" if all(checks.values()) else
               "not reproduced" if not (checks["scale"] or checks["faster"]) else "partly")
    return verdict, checks


def explain(summary: dict, checks: dict[str, bool]) -> str:
    """The sentence behind the verdict: the scale ratios, accuracies and losses, and which checks held."""
    k, x, n = relu_summaries(summary)
    tanh = tanh_summaries(summary)
    held = [name for name, ok in checks.items() if ok]
    failed = [name for name, ok in checks.items() if not ok]
    return (f"at init the ReLU net's pre-activation std goes from layer 1 to layer {DEPTH} by a factor "
            f"{k.get('ratio', math.nan):.3g} with kaiming_normal, {x.get('ratio', math.nan):.3g} with Xavier "
            f"(gain 1) and {n.get('ratio', math.nan):.3g} with normal std 0.01; final validation accuracy "
            f"{k.get('final', math.nan):.3f} (kaiming) vs {x.get('final', math.nan):.3f} (Xavier) vs "
            f"{n.get('final', math.nan):.3f} (std 0.01), validation loss after epoch 1 "
            f"{k.get('val_loss_1', math.nan):.3f} vs {x.get('val_loss_1', math.nan):.3f} vs "
            f"{n.get('val_loss_1', math.nan):.3f}; tanh net: "
            + ", ".join(f"{key[6:]} {m['final']:.3f}" for key, m in tanh.items())
            + f"; zeros {'refused' if checks['zeros'] else 'accepted'}. Checks held: {', '.join(held) or 'none'}"
            + (f"; failed: {', '.join(failed)}." if failed else "."))


def write_notes(refused: dict[str, str], checks: dict[str, bool]) -> list[str]:
    """The notes: nnrun's refusal messages, the Xavier gain, and each check's outcome."""
    notes = [f"nnrun refuses `init.weights: zeros` ({key}): \"{msg}\"" for key, msg in refused.items()]
    notes.append("Xavier runs set `init.gain: 1` (Glorot and Bengio's formula). Without it nnrun's xavier uses "
                 "the activation's recommended gain (sqrt(2) for ReLU, 5/3 for tanh), which on the square "
                 "hidden layers is exactly He init.")
    notes.append("Verdict checks (rule in benchmarks/evidence/init.py): "
                 + ", ".join(f"{name} {'held' if ok else 'failed'}" for name, ok in checks.items()) + ".")
    return notes


def plot_stds(fig, raw: dict, net: str, index: int) -> None:
    """One panel: the per-layer pre-activation std at init of one net, one line per init."""
    ax = fig.add_subplot(1, 3, index)
    for key, entry in raw.items():
        if entry["net"] != net or entry["refused"]:
            continue
        s = stds_of(raw, key)
        s = np.where(s > 0, s, np.nan)
        ax.plot(range(1, len(s) + 1), s, marker=".", label=entry["init"])
    ax.set_yscale("log")
    ax.set(xlabel="linear layer (last: output)", ylabel="pre-activation std at init",
           title=f"{net} net, {DEPTH} hidden layers")
    ax.legend(fontsize=7)


def plot_curves(fig, raw: dict) -> None:
    """The last panel: validation accuracy per epoch, mean over seeds, for every configuration."""
    ax = fig.add_subplot(1, 3, 3)
    for key, entry in raw.items():
        if entry["refused"] or not entry["runs"]:
            continue
        curves = np.array([[v if v is not None else np.nan for v in r["curve"]] for r in entry["runs"]],
                          dtype=float)
        ax.plot(range(1, curves.shape[1] + 1), np.nanmean(curves, axis=0), marker=".",
                ls="-" if entry["net"] == "relu" else "--", label=key)
    ax.set(xlabel="epoch", ylabel="validation accuracy", title="training (solid: relu, dashed: tanh)")
    ax.legend(fontsize=6)


def run(ctx: Context) -> Report:
    """Train every configuration, then report the table, the verdict, the notes and the plot."""
    if ctx.quick:
        epochs, seeds, limit, width = 1, 1, 256, 16
    else:
        epochs, seeds, limit, width = 4, ctx.seeds, 12000, WIDTH
    data, where = data_section(ctx, limit)
    base = recipe(data={**data, "batch_size": 64},
                  model={"arch": "mlp", "hidden": [width] * DEPTH, "norm": "none", "dropout": 0.0},
                  optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9},
                  train={"epochs": epochs, "threads": 1})
    raw, refused = train_all(ctx, base, seeds)
    rows, summary = summarize(raw)
    verdict, checks = judge(summary, refused)

    def plot(fig) -> None:
        for i, net in enumerate(("relu", "tanh")):
            plot_stds(fig, raw, net, i + 1)
        plot_curves(fig, raw)

    return Report(
        columns=["net", "init", "std layer 1", f"std layer {DEPTH}", "val loss after epoch 1", "final val acc"],
        rows=rows, verdict=verdict, because=explain(summary, checks),
        setup=(f"{where}; MLP with {DEPTH} hidden layers of {width} units, no normalization, no dropout; SGD lr "
               f"0.01 momentum 0.9, batch 64, {epochs} epochs, inputs standardized, {seeds} seed(s), mean "
               f"shown. Std: each linear layer's output on the first training batch before any update "
               f"(forward hooks in a callback's on_fit_start), mean over seeds."),
        plot=plot, raw={"runs": raw, "summary": summary, "checks": checks}, notes=write_notes(refused, checks))
