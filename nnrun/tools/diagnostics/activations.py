"""Forward-hook probes behind ``nnrun overfit-one-batch``: what every layer outputs.

* :func:`probe_forward` runs one forward pass (in the training mode) with a hook on every leaf module and
  records, per module in execution order, the output's mean and std, dead ReLU units (a unit is
  dead when its output is 0 for every example of the batch, reduced over the batch and spatial
  dimensions) and the share of saturated tanh/sigmoid outputs. Buffers (BatchNorm running
  statistics) are restored afterwards, so probing does not change the model.
* the replay of a non-finite step is :func:`nnrun.training.guard.find_first_nonfinite`, shared
  with `nnrun train`'s guard.

Activations must be modules (``nn.ReLU``, not ``F.relu``) to be seen; the built-in models use modules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from nnrun.errors import NnrunError
from nnrun.tools.diagnostics.rows import (
    FAIL,
    INFO,
    PASS,
    WARN,
    Row,
    batchnorm_row,
    chance_loss,
    initial_loss_row,
    input_row,
    labels_row,
    output_layer_row,
    symmetric_layers,
)
from nnrun.training.guard import first_tensor, restored_buffers

DEAD_KINDS = (nn.ReLU, nn.ReLU6)
"""Modules whose units can die (output exactly 0 for every input)."""

PASSTHROUGH = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
               nn.AlphaDropout)
"""Leaf modules that only reshape or copy their input: left out of the per-layer statistics."""


def saturation_mask(module: nn.Module, out: torch.Tensor) -> torch.Tensor | None:
    """Saturated outputs of a tanh (|y| > 0.99) or sigmoid (y < 0.01 or y > 0.99), else None.

    In those regions the local derivative is below ~0.02, so gradients through the unit vanish.
    """
    if isinstance(module, nn.Tanh):
        return out.abs() > 0.99
    if isinstance(module, nn.Sigmoid):
        return (out < 0.01) | (out > 0.99)
    return None


@dataclass
class LayerStats:
    """One leaf module's output on the probed batch."""

    name: str
    kind: str
    mean: float
    std: float
    finite: bool
    dead: int | None = None        # ReLU units dead on every example of the batch
    units: int | None = None       # ReLU units (channels or features)
    saturated: float | None = None  # share of saturated tanh/sigmoid outputs

    def to_dict(self) -> dict:
        return asdict(self)


def _stats(name: str, module: nn.Module, out: torch.Tensor) -> LayerStats:
    t = out.detach().float()
    finite = bool(torch.isfinite(t).all())
    std = float(t.std()) if t.numel() > 1 else 0.0
    row = LayerStats(name, type(module).__name__, float(t.mean()) if t.numel() else 0.0, std, finite)
    if isinstance(module, DEAD_KINDS) and t.dim() >= 2:
        alive = (t != 0).transpose(0, 1).reshape(t.shape[1], -1).any(dim=1)
        row.dead, row.units = int((~alive).sum()), int(t.shape[1])
    mask = saturation_mask(module, t)
    if mask is not None and t.numel():
        row.saturated = float(mask.float().mean())
    return row


def probe_forward(model: nn.Module, x: torch.Tensor) -> tuple[list[LayerStats], list[tuple[str, nn.Module]],
                                                               torch.Tensor]:
    """One forward pass of ``x`` with statistics of every leaf module's output.

    Args:
        model: the network, in the mode training uses (left as is, buffers unchanged).
        x: the batch.

    Returns:
        (statistics of each non-trivial leaf module in execution order, every leaf module
        ``(name, module)`` in execution order, the model's output).

    Raises:
        Whatever the model's forward raises (e.g. BatchNorm with one value per channel).
    """
    stats: list[LayerStats] = []
    order: list[tuple[str, nn.Module]] = []
    seen: set[str] = set()

    def make_hook(name: str):
        def hook(module, inputs, output):
            t = first_tensor(output)
            if t is None or name in seen:
                return
            seen.add(name)
            order.append((name, module))
            if not isinstance(module, PASSTHROUGH):
                stats.append(_stats(name, module, t))
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules()
               if n and not any(True for _ in m.children())]
    try:
        with torch.no_grad(), restored_buffers(model):
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return stats, order, out


# -- rows --------------------------------------------------------------------------------------

STD_LOW, STD_HIGH = 1e-2, 1e2
"""A hidden layer whose output std leaves this band is vanishing or exploding (inputs are ~1)."""
DEAD_WARN = 0.4
"""Share of dead ReLU units in a layer worth a warning (design/algorithms.md section 10: ~40-50%)."""
DEAD_MIN_BATCH = 8
"""Below this many examples a unit is easily 0 on all of them by chance: dead units are not judged."""
SATURATED_WARN = 0.3
"""Share of saturated tanh/sigmoid outputs in a layer worth a warning."""


def _fmt_layers(stats: list[LayerStats], key) -> str:
    if not stats:
        return "-"
    lo, hi = min(stats, key=key), max(stats, key=key)
    return f"{key(lo):.3g} (`{lo.name}`) .. {key(hi):.3g} (`{hi.name}`) over {len(stats)} layers"


def activation_scale_row(init: list[LayerStats], final: list[LayerStats] | None, *, output: str | None):
    """Output std per layer at init and after training: vanishing (< 1e-2) or exploding (> 1e2) signal."""
    def bad(stats):
        hidden = [s for s in stats if s.name != output and s.finite]
        return ([s for s in hidden if s.std < STD_LOW], [s for s in hidden if s.std > STD_HIGH])

    evidence = f"std at init: {_fmt_layers(init, lambda s: s.std)}"
    if final:
        evidence += f"; after training: {_fmt_layers(final, lambda s: s.std)}"
    low, high = bad(init)
    low_f, high_f = bad(final or [])
    details = {"init": [s.to_dict() for s in init], "final": [s.to_dict() for s in final or []]}
    if not (low or high or low_f or high_f):
        return Row("activation scale", PASS, evidence, "", details)
    names = ", ".join(f"`{s.name}` {s.std:.3g}" for s in (low + high or low_f + high_f)[:4])
    if high or high_f:
        advice = ("exploding signal: check the input scale (data.normalize), the init gain "
                  "(init.weights: kaiming_normal for ReLU, xavier for tanh) or add model.norm")
    else:
        advice = ("vanishing signal: the init is too small for the depth (init.weights: kaiming_normal "
                  "for ReLU nets, or lsuv), or units died (see dead ReLUs)")
    return Row("activation scale", WARN, f"{evidence}; outside {STD_LOW:g}..{STD_HIGH:g}: {names}",
                 advice, details)


def dead_relu_row(init: list[LayerStats], final: list[LayerStats] | None, *, batch_size: int):
    """Share of ReLU units that output 0 for every example of the batch, per layer."""
    def worst(stats):
        relus = [s for s in stats or [] if s.units]
        return max(relus, key=lambda s: s.dead / s.units) if relus else None

    w0, w1 = worst(init), worst(final)
    if w0 is None:
        return Row("dead ReLUs", INFO, "no nn.ReLU modules (F.relu calls are invisible to hooks)")
    evidence = f"worst layer at init: `{w0.name}` {w0.dead}/{w0.units} dead"
    if w1 is not None:
        evidence += f"; after training: `{w1.name}` {w1.dead}/{w1.units} dead"
    details = {"init": {s.name: [s.dead, s.units] for s in init if s.units},
               "final": {s.name: [s.dead, s.units] for s in final or [] if s.units}}
    frac = max(w.dead / w.units for w in (w0, w1) if w is not None)
    if batch_size < DEAD_MIN_BATCH:
        return Row("dead ReLUs", INFO, evidence + f" (only {batch_size} example(s): not judged)",
                   f"use --batch-size {DEAD_MIN_BATCH} or more to judge dead units", details)
    if frac >= DEAD_WARN:
        return Row("dead ReLUs", WARN, evidence + f" (>= {DEAD_WARN:.0%} is a warning)",
                   "units died: lower the learning rate, use He init (init.weights: kaiming_normal), "
                   "init.bias >= 0, or model.activation: leaky_relu", details)
    return Row("dead ReLUs", PASS, evidence, "", details)


def saturation_row(init: list[LayerStats], final: list[LayerStats] | None):
    """Share of tanh/sigmoid outputs in their flat regions, per layer."""
    def worst(stats):
        sat = [s for s in stats or [] if s.saturated is not None]
        return max(sat, key=lambda s: s.saturated) if sat else None

    w0, w1 = worst(init), worst(final)
    if w0 is None:
        return Row("saturation", INFO, "no nn.Tanh / nn.Sigmoid modules")
    evidence = f"worst layer at init: `{w0.name}` {w0.saturated:.0%} saturated"
    if w1 is not None:
        evidence += f"; after training: `{w1.name}` {w1.saturated:.0%}"
    details = {"init": {s.name: s.saturated for s in init if s.saturated is not None},
               "final": {s.name: s.saturated for s in final or [] if s.saturated is not None}}
    if max(w.saturated for w in (w0, w1) if w is not None) >= SATURATED_WARN:
        return Row("saturation", WARN, evidence + f" (>= {SATURATED_WARN:.0%} is a warning)",
                   "inputs to tanh/sigmoid are too large: whiten inputs (data.normalize), use a smaller "
                   "init (init.weights: xavier_normal) or add model.norm", details)
    return Row("saturation", PASS, evidence, "", details)


# -- the checks at init ------------------------------------------------------------------------

@dataclass
class PreChecks:
    """Rows decided before training, and what training needs from the init probe."""

    rows: dict[str, Row]
    fatal: bool
    init_stats: list
    output: str | None
    symmetric: dict


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def checks_at_init(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, *, data: Any,
                   normalizer: dict, loss_name: str) -> PreChecks:
    """Labels, inputs, symmetric init, the output layer, the initial loss and BatchNorm, from one
    probed forward pass of the fixed batch; a forward pass that raises becomes a FAIL row.

    Args:
        model, loss_fn: the built run's network and loss.
        x, y: the fixed batch.
        data: the DataBundle (task, num_classes, num_outputs).
        normalizer: the input whitening statistics.
        loss_name: ``train.loss`` of the recipe.
    """
    d = data
    rows = {"labels": labels_row(y, task=d.task, num_classes=d.num_classes, num_outputs=d.num_outputs),
            "input statistics": input_row(x, normalizer)}
    symmetric = symmetric_layers(model)
    stats, order, error = [], [], None
    try:
        stats, order, out = probe_forward(model, x)
        if rows["labels"].status != FAIL:
            rows["output layer"] = output_layer_row(order[-1] if order else None, out, y, task=d.task,
                                                      loss=loss_name)
            with torch.no_grad():
                loss0 = float(loss_fn(out, y))
            rows["initial loss"] = initial_loss_row(
                loss0, chance_loss(loss_fn, out, y, task=d.task, num_classes=d.num_classes),
                task=d.task, num_classes=d.num_classes)
    except (RuntimeError, ValueError, IndexError, NnrunError) as exc:  # report it as a check, do not crash
        error = first_line(exc)
    bn_error = error if error and "value per channel" in error else None
    rows["BatchNorm batch size"] = batchnorm_row(model, int(y.shape[0]), bn_error)
    if error and not bn_error:
        rows["forward pass"] = Row("forward pass", FAIL, f"model(x) or the loss raised: {error}",
                                   "fix the model's forward or the output/target shapes")
    output = next((n for n, m in reversed(order) if hasattr(m, "weight")), None)
    return PreChecks(rows, bool(error) or rows["labels"].status == FAIL, stats, output, symmetric)
