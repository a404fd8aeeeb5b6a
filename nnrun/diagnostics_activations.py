"""Forward-hook probes behind ``nnrun overfit-one-batch``: what every layer outputs.

* :func:`probe_forward` runs one forward pass (in the training mode) with a hook on every leaf module and
  records, per module in execution order, the output's mean and std, dead ReLU units (a unit is
  dead when its output is 0 for every example of the batch, reduced over the batch and spatial
  dimensions) and the share of saturated tanh/sigmoid outputs. Buffers (BatchNorm running
  statistics) are restored afterwards, so probing does not change the model.
* :func:`find_first_nonfinite` replays one step with a hook on every module: forward hooks fire
  child-before-parent, so the first module whose output is not finite is the innermost culprit;
  gradient hooks on each module's output fire in backward order, so the first non-finite one is
  where the backward pass first produced NaN/Inf (design/algorithms.md section 10).

Activations must be modules (``nn.ReLU``, not ``F.relu``) to be seen; the built-in models use modules.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
from torch import nn

from nnrun import diagnostics as D

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


def first_tensor(out: Any) -> torch.Tensor | None:
    """The tensor a module returned (the first one of a tuple, list or dict)."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, (tuple, list)):
        return next((t for t in out if torch.is_tensor(t)), None)
    if isinstance(out, dict):
        return next((t for t in out.values() if torch.is_tensor(t)), None)
    return None


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


@contextlib.contextmanager
def restored_buffers(model: nn.Module) -> Iterator[None]:
    """Run a forward pass without leaving a trace in the buffers (BatchNorm running statistics)."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


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


@dataclass
class NonFinite:
    """Where a replayed step first produced NaN/Inf."""

    activation: str | None   # innermost module with a non-finite output (forward order)
    activation_kind: str | None
    loss_finite: bool
    gradient: str | None      # first module whose output gradient is non-finite (backward order)
    params: list[str]         # parameters whose gradient is non-finite
    error: str | None = None  # the replay itself raised


def find_first_nonfinite(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> NonFinite:
    """Replay forward and backward of one batch with hooks on every module.

    The model must hold the weights of the step being replayed. Gradients are zeroed afterwards.

    Returns:
        The first non-finite activation (innermost module: forward hooks fire child-before-parent),
        whether the loss is finite, the first non-finite output gradient in backward order, and the
        parameters whose gradient is not finite.
    """
    first: dict[str, Any] = {"act": None, "kind": None}
    backward: list[str] = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            t = first_tensor(output)
            if t is None or not t.is_floating_point():
                return
            if first["act"] is None and not bool(torch.isfinite(t).all()):
                first["act"], first["kind"] = name, type(module).__name__
            if t.requires_grad:
                t.register_hook(lambda g, n=name: backward.append(n) if not bool(torch.isfinite(g).all())
                                else None)
        return hook

    handles = [m.register_forward_hook(make_hook(n or "(model)")) for n, m in model.named_modules()]
    error, loss_finite = None, False
    try:
        with restored_buffers(model):
            loss = loss_fn(model(x), y)
            loss_finite = bool(torch.isfinite(loss))
            loss.backward()
    except (RuntimeError, ValueError) as exc:  # the replay is diagnostic: report, do not crash
        error = str(exc).splitlines()[0]
    finally:
        for h in handles:
            h.remove()
    params = [n for n, p in model.named_parameters()
              if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    model.zero_grad(set_to_none=True)
    return NonFinite(first["act"], first["kind"], loss_finite, backward[0] if backward else None, params, error)


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
        return D.Row("activation scale", D.PASS, evidence, "", details)
    names = ", ".join(f"`{s.name}` {s.std:.3g}" for s in (low + high or low_f + high_f)[:4])
    if high or high_f:
        advice = ("exploding signal: check the input scale (data.normalize), the init gain "
                  "(init.weights: kaiming_normal for ReLU, xavier for tanh) or add model.norm")
    else:
        advice = ("vanishing signal: the init is too small for the depth (init.weights: kaiming_normal "
                  "for ReLU nets, or lsuv), or units died (see dead ReLUs)")
    return D.Row("activation scale", D.WARN, f"{evidence}; outside {STD_LOW:g}..{STD_HIGH:g}: {names}",
                 advice, details)


def dead_relu_row(init: list[LayerStats], final: list[LayerStats] | None, *, batch_size: int):
    """Share of ReLU units that output 0 for every example of the batch, per layer."""
    def worst(stats):
        relus = [s for s in stats or [] if s.units]
        return max(relus, key=lambda s: s.dead / s.units) if relus else None

    w0, w1 = worst(init), worst(final)
    if w0 is None:
        return D.Row("dead ReLUs", D.INFO, "no nn.ReLU modules (F.relu calls are invisible to hooks)")
    evidence = f"worst layer at init: `{w0.name}` {w0.dead}/{w0.units} dead"
    if w1 is not None:
        evidence += f"; after training: `{w1.name}` {w1.dead}/{w1.units} dead"
    details = {"init": {s.name: [s.dead, s.units] for s in init if s.units},
               "final": {s.name: [s.dead, s.units] for s in final or [] if s.units}}
    frac = max(w.dead / w.units for w in (w0, w1) if w is not None)
    if batch_size < DEAD_MIN_BATCH:
        return D.Row("dead ReLUs", D.INFO, evidence + f" (only {batch_size} example(s): not judged)",
                   f"use --batch-size {DEAD_MIN_BATCH} or more to judge dead units", details)
    if frac >= DEAD_WARN:
        return D.Row("dead ReLUs", D.WARN, evidence + f" (>= {DEAD_WARN:.0%} is a warning)",
                   "units died: lower the learning rate, use He init (init.weights: kaiming_normal), "
                   "init.bias >= 0, or model.activation: leaky_relu", details)
    return D.Row("dead ReLUs", D.PASS, evidence, "", details)


def saturation_row(init: list[LayerStats], final: list[LayerStats] | None):
    """Share of tanh/sigmoid outputs in their flat regions, per layer."""
    def worst(stats):
        sat = [s for s in stats or [] if s.saturated is not None]
        return max(sat, key=lambda s: s.saturated) if sat else None

    w0, w1 = worst(init), worst(final)
    if w0 is None:
        return D.Row("saturation", D.INFO, "no nn.Tanh / nn.Sigmoid modules")
    evidence = f"worst layer at init: `{w0.name}` {w0.saturated:.0%} saturated"
    if w1 is not None:
        evidence += f"; after training: `{w1.name}` {w1.saturated:.0%}"
    details = {"init": {s.name: s.saturated for s in init if s.saturated is not None},
               "final": {s.name: s.saturated for s in final or [] if s.saturated is not None}}
    if max(w.saturated for w in (w0, w1) if w is not None) >= SATURATED_WARN:
        return D.Row("saturation", D.WARN, evidence + f" (>= {SATURATED_WARN:.0%} is a warning)",
                   "inputs to tanh/sigmoid are too large: whiten inputs (data.normalize), use a smaller "
                   "init (init.weights: xavier_normal) or add model.norm", details)
    return D.Row("saturation", D.PASS, evidence, "", details)


# -- the checks at init ------------------------------------------------------------------------

@dataclass
class PreChecks:
    """Rows decided before training, and what training needs from the init probe."""

    rows: dict[str, D.Row]
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
    from nnrun.errors import NnrunError

    d = data
    rows = {"labels": D.labels_row(y, task=d.task, num_classes=d.num_classes, num_outputs=d.num_outputs),
            "input statistics": D.input_row(x, normalizer)}
    symmetric = D.symmetric_layers(model)
    stats, order, error = [], [], None
    try:
        stats, order, out = probe_forward(model, x)
        if rows["labels"].status != D.FAIL:
            rows["output layer"] = D.output_layer_row(order[-1] if order else None, out, y, task=d.task,
                                                      loss=loss_name)
            with torch.no_grad():
                loss0 = float(loss_fn(out, y))
            rows["initial loss"] = D.initial_loss_row(
                loss0, D.chance_loss(loss_fn, out, y, task=d.task, num_classes=d.num_classes),
                task=d.task, num_classes=d.num_classes)
    except (RuntimeError, ValueError, IndexError, NnrunError) as exc:  # report it as a check, do not crash
        error = first_line(exc)
    bn_error = error if error and "value per channel" in error else None
    rows["BatchNorm batch size"] = D.batchnorm_row(model, int(y.shape[0]), bn_error)
    if error and not bn_error:
        rows["forward pass"] = D.Row("forward pass", D.FAIL, f"model(x) or the loss raised: {error}",
                                   "fix the model's forward or the output/target shapes")
    output = next((n for n, m in reversed(order) if hasattr(m, "weight")), None)
    return PreChecks(rows, bool(error) or rows["labels"].status == D.FAIL, stats, output, symmetric)
