"""The checks of ``nnrun overfit-one-batch``, each returning one report :class:`Row`.

A row is ``(check, status, evidence, advice)``: PASS (checked, fine), WARN (a heuristic says
something is off), FAIL (a definite bug: training cannot work as intended) or INFO (context, or
nothing to judge). Thresholds are module constants, documented in the README. The checks follow
design/algorithms.md section 10 (CS231n, Karpathy's *A Recipe for Training Neural Networks*).
Activation probes and their rows live in :mod:`nnrun.diagnostics_activations`; what the training
steps show (gradients, updates, non-finite values, the loss trend) in :mod:`nnrun.diagnostics_training`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

PASS, WARN, FAIL, INFO = "PASS", "WARN", "FAIL", "INFO"

INITIAL_LOSS_TOL = 0.5
"""Classification: flag |L0 - ln C| > 0.5 ln C (a heuristic, design/algorithms.md section 10)."""
REGRESSION_INITIAL_FACTOR = 3.0
"""Regression: flag L0 > 3x the loss of predicting 0 for every target."""
INPUT_ABS_MAX = 100.0
"""Whitened inputs rarely exceed this magnitude; larger values mean a huge dynamic range."""
INPUT_MEAN_MAX, INPUT_STD_BAND = 1.0, (0.1, 10.0)
"""What the model receives should be roughly mean 0, std 1."""
BN_SMALL_BATCH = 8
"""BatchNorm statistics of fewer examples than this are noisy (GroupNorm paper: below ~8-16)."""


@dataclass
class Row:
    """One line of the report."""

    check: str
    status: str
    evidence: str
    advice: str = ""
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"check": self.check, "status": self.status, "evidence": self.evidence,
                "advice": self.advice, "details": self.details}


def lr_text(lr: float, factor: float) -> str:
    """``optimizer.lr=3e-4 (x0.1)``: a concrete value to try."""
    return f"optimizer.lr={float(f'{lr * factor:.2g}'):g} (x{factor:g})"


# -- before training --------------------------------------------------------------------------

def initial_loss_row(loss0: float, expected: float, *, task: str, num_classes: int | None) -> Row:
    """Loss at init against chance: ln C for C-class cross-entropy, the loss of predicting 0 otherwise."""
    if not math.isfinite(loss0):
        return Row("initial loss", FAIL, f"loss at init is {loss0}", "see the non-finite rows")
    if task == "classification":
        ref = f"ln {num_classes} = {expected:.3f} (uniform predictions)"
        bad = abs(loss0 - expected) > INITIAL_LOSS_TOL * expected
    else:
        ref = f"{expected:.4g} (the loss of predicting 0)"
        bad = loss0 > REGRESSION_INITIAL_FACTOR * expected + 1e-12
    evidence = f"{loss0:.4g} vs expected {ref}"
    if not bad:
        return Row("initial loss", PASS, evidence)
    if loss0 > expected:
        advice = ("outputs are too large at init: a smaller init of the output layer, whitened inputs, "
                  "or no activation on the output layer")
    else:
        advice = ("lower than chance at init: is the output bias set to class priors, or do labels leak "
                  "into the inputs?")
    return Row("initial loss", WARN, evidence + " (far off)", advice)


def chance_loss(loss_fn: nn.Module, outputs: torch.Tensor, y: torch.Tensor, *, task: str,
                num_classes: int | None) -> float:
    """The expected loss at init: ln C for classification, loss of all-zero outputs for regression."""
    if task == "classification":
        return math.log(num_classes or outputs.shape[-1])
    with torch.no_grad():
        return float(loss_fn(torch.zeros_like(outputs), y))


def _span(t: torch.Tensor) -> str:
    lo, hi = float(t.min()), float(t.max())
    return f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}..{hi:.3g} per feature/channel"


def input_row(x: torch.Tensor, normalizer: dict) -> Row:
    """Statistics of the batch the model receives, and of the raw training inputs behind it."""
    t = x.detach().float()
    finite = torch.isfinite(t)
    n_bad = int((~finite).sum())
    v = t[finite]
    mean, std = (float(v.mean()), float(v.std())) if v.numel() > 1 else (0.0, 0.0)
    peak = float(v.abs().max()) if v.numel() else 0.0
    evidence = f"model input: mean {mean:.3g}, std {std:.3g}, max |x| {peak:.4g}"
    mode = normalizer.get("mode", "none")
    if mode == "standardize":
        shift, scale = normalizer["shift"].flatten(), normalizer["scale"].flatten()
        raw = f"raw training inputs: mean {_span(shift)}, std {_span(scale)} (standardized)"
    elif mode == "minmax":
        lo, hi = normalizer["shift"].flatten(), (normalizer["shift"] + normalizer["scale"]).flatten()
        raw = f"raw training inputs: {float(lo.min()):.4g}..{float(hi.max()):.4g} (min-max scaled)"
    else:
        raw = "data.normalize: none, so the model sees the raw values"
    evidence += f"; {raw}"
    details = {"mean": mean, "std": std, "max_abs": peak, "non_finite": n_bad, "normalize": mode}
    fix = ("set data.normalize=standardize" if mode == "none"
           else "add data.tanh_scale=3 to squash outliers after whitening")
    if n_bad:
        return Row("input statistics", FAIL, f"{n_bad} NaN/Inf input value(s); {evidence}",
                   "remove or impute invalid values before training", details)
    if peak > INPUT_ABS_MAX:
        return Row("input statistics", WARN, f"huge dynamic range: {evidence}",
                   f"{fix}: inputs in the hundreds or more saturate units and need a tiny learning rate",
                   details)
    lo, hi = INPUT_STD_BAND
    if abs(mean) > INPUT_MEAN_MAX or (std > 0 and not lo <= std <= hi):
        return Row("input statistics", WARN, f"not whitened (want mean ~0, std ~1): {evidence}", fix, details)
    return Row("input statistics", PASS, evidence, "", details)


_RANGES = {nn.ReLU: (0.0, math.inf), nn.ReLU6: (0.0, 6.0), nn.Softplus: (0.0, math.inf),
           nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0), nn.Softmax: (0.0, 1.0)}


def is_activation(module: nn.Module) -> bool:
    """An element-wise or softmax activation module (``torch.nn.modules.activation``)."""
    return (type(module).__module__ == "torch.nn.modules.activation"
            and not isinstance(module, nn.MultiheadAttention))


def output_layer_row(last: tuple[str, nn.Module] | None, outputs: torch.Tensor, y: torch.Tensor, *,
                     task: str, loss: str) -> Row:
    """An activation or softmax on the output layer, by the last module run and by the values."""
    name, module = last if last else ("?", None)
    kind = type(module).__name__ if module is not None else "?"
    out = outputs.detach().float()
    evidence = f"last module run: `{name}` ({kind})"
    if task == "classification":
        return _classification_output(module, out, evidence, loss)
    if module is not None and is_activation(module):
        lo, hi = _RANGES.get(type(module), (-math.inf, math.inf))
        if y.is_floating_point() and (float(y.min()) < lo or float(y.max()) > hi):
            return Row("output layer", FAIL, f"{evidence} bounds outputs to [{lo:g}, {hi:g}] but targets span "
                       f"[{float(y.min()):.3g}, {float(y.max()):.3g}]",
                       "remove the activation on the output layer")
        return Row("output layer", WARN, f"{evidence}: regression outputs pass through an activation",
                   "regression outputs are usually unbounded: remove it unless targets live in its range")
    return Row("output layer", PASS, evidence + ", raw outputs")


def _classification_output(module, out: torch.Tensor, evidence: str, loss: str) -> Row:
    advice = (f"remove the activation: {loss} expects raw logits (CrossEntropyLoss applies log-softmax "
              "itself; a softmax before it squashes gradients)")
    if isinstance(module, nn.LogSoftmax):
        return Row("output layer", WARN, f"{evidence}: log-probabilities, not logits",
                   "harmless for cross_entropy (log-softmax is idempotent) but redundant: remove it")
    if module is not None and is_activation(module):
        return Row("output layer", FAIL, f"{evidence}: an activation on the logits", advice)
    if out.dim() == 2 and out.shape[1] >= 2 and torch.isfinite(out).all():
        sums = out.sum(dim=1)
        if bool((out >= 0).all()) and torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            return Row("output layer", FAIL, f"{evidence}: outputs are >= 0 and sum to 1 per row "
                       "(probabilities: a softmax in forward)", advice)
        # equal logits in every row come from a constant head, not from an activation
        varies = bool((out.std(dim=1) > 1e-5 * float(out.abs().max())).any())
        if bool((out >= 0).all()) and out.numel() >= 16 and varies:
            return Row("output layer", WARN, f"{evidence}: all {out.numel()} outputs are >= 0 "
                       "(F.relu/sigmoid on the logits?)", advice)
    return Row("output layer", PASS, evidence + ", raw logits")


def symmetric_layers(model: nn.Module) -> dict[str, str]:
    """Linear/conv layers whose units are identical: ``{name: 'constant' | 'identical rows'}``."""
    found = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2 or w.shape[0] < 2:
            continue
        rows = w.detach().reshape(w.shape[0], -1)
        if not torch.equal(rows, rows[:1].expand_as(rows)):
            continue
        b = getattr(m, "bias", None)
        if isinstance(b, torch.Tensor) and not torch.equal(b, b[:1].expand_as(b)):
            continue  # the bias breaks the symmetry
        found[name] = "constant" if bool((rows == rows.flatten()[0]).all()) else "identical rows"
    return found


def symmetry_row(at_init: dict[str, str], after: dict[str, str] | None, *, output: str | None,
                 steps: int) -> Row:
    """Symmetric init (all units of a layer equal): they get equal gradients and never differ."""
    hidden = {n: k for n, k in at_init.items() if n != output}
    if not at_init:
        return Row("symmetric init", PASS, "every linear/conv layer has distinct units")
    listed = ", ".join(f"`{n}` ({k})" for n, k in list(at_init.items())[:4])
    if not hidden:
        return Row("symmetric init", INFO, f"only the output layer is symmetric: {listed}",
                   "fine for the output layer (distinct inputs break the symmetry)")
    still = [n for n in hidden if after and n in after]
    evidence = f"units identical at init in {listed}"
    if still:
        evidence += f"; still identical after {steps} steps in {', '.join(f'`{n}`' for n in still[:4])}"
    return Row("symmetric init", FAIL, evidence,
               "identical units get identical gradients and never become different: use a random init "
               "(init.weights: kaiming_normal), never zeros/constants for hidden layers",
               {"at_init": at_init, "after": after or {}})


def labels_row(y: torch.Tensor, *, task: str, num_classes: int | None, num_outputs: int) -> Row:
    """Labels of the batch: dtype, shape, range, and how many classes it holds."""
    n = int(y.shape[0]) if y.dim() else 0
    if task == "classification":
        if y.is_floating_point() or y.dtype == torch.bool:
            return Row("labels", FAIL, f"targets have dtype {y.dtype}; class indices must be int64",
                       "store integer class indices (a float target is read as class probabilities)")
        if y.dim() != 1:
            return Row("labels", FAIL, f"targets have shape {tuple(y.shape)}; expected [{n}] class indices",
                       "one integer per example (not one-hot)")
        c = num_classes or num_outputs
        bad = (y < 0) | (y >= c)
        if bool(bad.any()):
            first = int(y[bad][0])
            return Row("labels", FAIL, f"{int(bad.sum())} of {n} label(s) outside 0..{c - 1} (e.g. {first})",
                       f"class labels must be 0..{c - 1}; check the label mapping or the class count")
        classes = sorted(set(y.tolist()))
        evidence = f"{n} int64 labels, {len(classes)} of {c} classes present"
        if len(classes) == 1 and n > 1:
            return Row("labels", WARN, evidence + f": every example is class {classes[0]}",
                       "a constant output memorizes this batch: a larger --batch-size holds several classes")
        return Row("labels", PASS if n > 1 else INFO, evidence)
    if not y.is_floating_point():
        return Row("labels", WARN, f"regression targets have dtype {y.dtype}", "use float targets")
    if not bool(torch.isfinite(y).all()):
        return Row("labels", FAIL, "regression targets hold NaN/Inf", "remove or impute them")
    width = 1 if y.dim() == 1 else int(y.shape[-1])
    if y.dim() > 2 or width != num_outputs:
        return Row("labels", FAIL, f"targets have shape {tuple(y.shape)} for {num_outputs} model output(s)",
                   "targets must be [N] or [N, outputs]")
    return Row("labels", PASS, f"{n} float targets, variance {float(y.float().var()) if n > 1 else 0.0:.4g}")


def batchnorm_row(model: nn.Module, batch_size: int, error: str | None) -> Row:
    """BatchNorm in training mode with one or few examples per batch."""
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return Row("BatchNorm batch size", PASS, "no BatchNorm layers")
    evidence = f"{len(bns)} BatchNorm layer(s) in training mode, batch of {batch_size}"
    advice = ("use model.norm=group (batch-size independent) or a larger batch; note that BatchNorm "
              "rescales every layer, which can hide exploding activations/gradients from a bad init")
    if error:
        return Row("BatchNorm batch size", FAIL, f"{evidence}: the forward pass fails ({error})", advice)
    if batch_size < BN_SMALL_BATCH:
        return Row("BatchNorm batch size", WARN, f"{evidence}: statistics of < {BN_SMALL_BATCH} examples are "
                   "noisy and differ from the running statistics used in eval mode", advice)
    return Row("BatchNorm batch size", PASS, evidence)


def settings_row(recipe, n: int, changes: list[str]) -> Row:
    """What was turned off for the overfit run of `recipe` on `n` examples, and what it keeps."""
    off = "; ".join(changes) if changes else "nothing (no dropout or weight decay in the recipe)"
    kept = f"{recipe.optimizer.name} lr={recipe.optimizer.lr:g}"
    if recipe.train.label_smoothing:
        kept += f", label smoothing {recipe.train.label_smoothing:g} (the loss floor accounts for it)"
    return Row("settings", INFO, f"one fixed batch of {n} training example(s), normalized as in training, used "
               f"for training and evaluation; turned off: {off}; no augmentation in nnrun; kept: {kept}",
               details={"changes": list(changes), "batch_size": n})
