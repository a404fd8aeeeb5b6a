"""What the training steps of ``nnrun overfit-one-batch`` show, as report rows.

:class:`StepObserver` watches each optimizer step without extra forward passes: which parameters
received a gradient (and a non-zero one), per-parameter gradient norms, the update-to-weight ratio
``|w_after - w_before| / |w_before|`` of each weight matrix (healthy around 1e-3, CS231n), and the
weights before the step, so a step that produced NaN/Inf can be replayed with hooks
(:func:`nnrun.diagnostics_activations.find_first_nonfinite`). Everything stays on the device until the
end of the run, except one flag per step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nnrun.tools.diagnostics.rows import FAIL, INFO, PASS, WARN, Row, lr_text

GRAD_SPREAD_MAX = 1e4
"""Largest / smallest per-layer gradient norm (weights only) before it counts as vanishing/exploding."""
UPDATE_RATIO_BAND = (1e-4, 3e-2)
"""Healthy median |update| / |weight| per step for weight matrices (CS231n: ~1e-3)."""
TARGET_RATIO = 1e-3
"""The update/weight ratio the suggested learning rate aims for."""


class StepObserver:
    """Per-step observations of a model's parameters (call :meth:`before` and :meth:`after` per step)."""

    def __init__(self, model: nn.Module):
        self.named = list(model.named_parameters())
        self.params = [p for _, p in self.named]
        self.weights = [i for i, p in enumerate(self.params) if p.dim() >= 2]
        self.prev = [p.detach().clone() for p in self.params]
        device = self.params[0].device if self.params else torch.device("cpu")
        self.ever = torch.zeros(len(self.params), device=device)
        self.got_grad: set[str] = set()
        self.grad_first: dict[str, float] = {}
        self.grad_last: dict[str, float] = {}
        self._ratios: list[torch.Tensor] = []
        self._norms: torch.Tensor | None = None

    def before(self) -> None:
        """Snapshot the weights the coming step starts from."""
        with torch.no_grad():
            for q, p in zip(self.prev, self.params):
                q.copy_(p)

    def after(self) -> torch.Tensor:
        """Record gradients (still in place) and updates of the step; returns "all gradients finite"."""
        norms, finite = [], [torch.ones((), dtype=torch.bool, device=self.ever.device)]
        for name, p in self.named:
            if p.grad is None:
                norms.append(torch.zeros((), device=self.ever.device))
                continue
            self.got_grad.add(name)
            norms.append(torch.linalg.vector_norm(p.grad.detach().float()))
            finite.append(torch.isfinite(p.grad).all())
        if norms:
            self._norms = torch.stack(norms)
            self.ever = torch.maximum(self.ever, torch.nan_to_num(self._norms, nan=1.0, posinf=1.0))
        if self.weights:
            with torch.no_grad():
                num = torch.stack([torch.linalg.vector_norm((self.params[i] - self.prev[i]).float())
                                   for i in self.weights])
                den = torch.stack([torch.linalg.vector_norm(self.prev[i].float()) for i in self.weights])
            self._ratios.append(torch.where(den > 0, num / den.clamp_min(1e-30), torch.full_like(num, math.nan)))
        return torch.stack(finite).all()

    def read_norms(self) -> None:
        """Copy this step's weight gradient norms to the host (first and last step of the report)."""
        if self._norms is None:
            return
        values = self._norms.tolist()
        self.grad_last = {self.named[i][0]: values[i] for i in self.weights}
        self.grad_first = self.grad_first or dict(self.grad_last)

    def restore(self) -> None:
        """Put back the weights the last step started from (to replay it)."""
        with torch.no_grad():
            for p, q in zip(self.params, self.prev):
                p.copy_(q)

    @property
    def nonzero(self) -> set[str]:
        """Parameters whose gradient was non-zero in some step."""
        return {self.named[i][0] for i, v in enumerate(self.ever.tolist()) if v > 0}

    def ratios(self) -> dict[str, float]:
        """Median update/weight ratio per weight matrix over the finite steps."""
        if not self._ratios:
            return {}
        table = torch.stack(self._ratios)
        table = torch.where(torch.isfinite(table), table, torch.full_like(table, math.nan))
        med = table.nanmedian(dim=0).values.tolist()
        return {self.named[i][0]: v for i, v in zip(self.weights, med)}

def no_grad_row(model: nn.Module, got_grad: set[str], nonzero: set[str], *, steps: int) -> Row:
    """Parameters that never received a gradient: detached, unused, frozen, or always exactly zero."""
    if steps == 0:
        return Row("params without gradient", INFO, "not trained (see the FAIL rows)")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in got_grad]
    zero = [n for n, p in model.named_parameters() if p.requires_grad and n in got_grad and n not in nonzero]
    def show(names):
        return ", ".join(f"`{n}`" for n in names[:5]) + (f" (+{len(names) - 5})" if len(names) > 5 else "")

    if missing:
        return Row("params without gradient", FAIL, f"{len(missing)} trainable parameter(s) got no gradient in "
                   f"{steps} steps: {show(missing)}",
                   "they are cut from the loss: a .detach()/.item()/.numpy() or torch.no_grad in forward, "
                   "or a layer that forward never uses", {"no_grad": missing, "frozen": frozen, "zero": zero})
    if zero:
        return Row("params without gradient", WARN, f"gradient exactly 0 in every step: {show(zero)}",
                   "upstream units are dead or constant (zero init, dead ReLUs)",
                   {"frozen": frozen, "zero": zero})
    if frozen:
        return Row("params without gradient", WARN, f"{len(frozen)} frozen parameter(s) (requires_grad=False): "
                   f"{show(frozen)}", "intended? frozen by mistake means those layers never learn",
                   {"frozen": frozen})
    return Row("params without gradient", PASS, f"all {sum(1 for _ in model.parameters())} parameter tensors "
               "received non-zero gradients")


def optimizer_row(model: nn.Module, optimizer: torch.optim.Optimizer) -> Row:
    """Trainable parameters the optimizer does not update, and optimizer tensors not in the model."""
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    in_model = {id(p) for p in model.parameters()}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_opt]
    stale = len(in_opt - in_model)
    if missing:
        return Row("params missing from optimizer", FAIL,
                   f"{len(missing)} trainable parameter(s) not in any optimizer group: "
                   + ", ".join(f"`{n}`" for n in missing[:5]),
                   "build the optimizer from model.parameters() after the model is complete "
                   "(layers added later, or a filtered list, are never updated)", {"missing": missing})
    if stale:
        return Row("params missing from optimizer", WARN, f"the optimizer holds {stale} tensor(s) that are "
                   "not parameters of the model", "the optimizer was built for another model instance")
    return Row("params missing from optimizer", PASS,
               f"all {len(in_model)} trainable tensors are in the optimizer")


def grad_norm_row(first: dict[str, float], last: dict[str, float], *, last_step: int) -> Row:
    """Per-layer gradient norms of the weights at the first and the last step."""
    if not first:
        return Row("gradient norms", INFO, "no gradients recorded")

    def span(norms):
        pos = {k: v for k, v in norms.items() if v > 0 and math.isfinite(v)}
        if not pos:
            return "all zero", 0.0
        lo, hi = min(pos, key=pos.get), max(pos, key=pos.get)
        return f"{pos[lo]:.2g} (`{lo}`) .. {pos[hi]:.2g} (`{hi}`)", pos[hi] / pos[lo]

    text0, spread0 = span(first)
    evidence = f"step 1: {text0}"
    if last:
        evidence += f"; step {last_step}: {span(last)[0]}"
    details = {"first": first, "last": last}
    if spread0 > GRAD_SPREAD_MAX:
        return Row("gradient norms", WARN, evidence + f" (spread {spread0:.2g}x > {GRAD_SPREAD_MAX:g}x)",
                   "gradients vanish or explode across depth: check the init (kaiming for ReLU), add "
                   "model.norm, or residual connections", details)
    return Row("gradient norms", PASS, evidence, "", details)


def update_ratio_row(ratios: dict[str, float], *, lr: float) -> Row:
    """Median |update| / |weight| per step of each weight matrix (healthy around 1e-3)."""
    finite = {k: v for k, v in ratios.items() if math.isfinite(v) and v > 0}  # 0: never updated
    if not finite:
        return Row("update/weight ratio", INFO, "no updates recorded")
    lo_name, hi_name = min(finite, key=finite.get), max(finite, key=finite.get)
    evidence = (f"median per step: {finite[lo_name]:.2g} (`{lo_name}`) .. {finite[hi_name]:.2g} (`{hi_name}`), "
                f"healthy ~{TARGET_RATIO:g}")
    lo, hi = UPDATE_RATIO_BAND
    overall = sorted(finite.values())[len(finite) // 2]
    factor = min(max(TARGET_RATIO / overall, 0.01), 100.0) if overall > 0 else 10.0
    suggest = f"optimizer.lr={float(f'{lr * factor:.2g}'):g}"
    if finite[hi_name] > hi:
        return Row("update/weight ratio", WARN, evidence + f" (> {hi:g})",
                   f"steps are large for `{hi_name}`: the learning rate is too high for it; try {suggest} "
                   "or `nnrun lr-find`", {"ratios": ratios})
    if finite[lo_name] < lo:
        return Row("update/weight ratio", WARN, evidence + f" (< {lo:g})",
                   f"`{lo_name}` barely moves: the learning rate is too low for it; try {suggest} "
                   "or `nnrun lr-find`", {"ratios": ratios})
    return Row("update/weight ratio", PASS, evidence, "", {"ratios": ratios})


def nonfinite_rows(step: int | None, found, *, steps: int, lr: float, overflow: bool = False) -> list[Row]:
    """First non-finite activation and gradient: the step and the module (from a hooked replay)."""
    if step is None:
        return [Row("first non-finite activation", PASS, f"all activations finite in {steps} steps"),
                Row("first non-finite gradient", PASS, f"all gradients finite in {steps} steps")]
    advice = (f"the learning rate is too high or the init/input scale too large: try {lr_text(lr, 0.1)}, "
              "whiten inputs, or `nnrun lr-find`")
    if step == 1:  # the weights are still the init: not a learning-rate problem
        advice = ("NaN/Inf already at init: check that module's inputs (log, sqrt or division of values "
                  "<= 0, overflow), the init, and the input scale")
    if found.activation:
        act = Row("first non-finite activation", FAIL,
                  f"step {step}: `{found.activation}` ({found.activation_kind}) output NaN/Inf first", advice)
    elif not found.loss_finite:
        act = Row("first non-finite activation", FAIL, f"step {step}: outputs are finite but the loss is not",
                  "the loss gets invalid inputs (targets, or outputs so large the loss overflows)")
    else:
        act = Row("first non-finite activation", PASS, f"activations finite up to step {step}")
    where = f"the output of `{found.gradient}`" if found.gradient else "a parameter"
    if found.gradient or found.params:
        params = ", ".join(f"`{p}`" for p in found.params[:4]) or "-"
        cause = "; a consequence of the non-finite forward pass" if act.status == FAIL else ""
        grad = Row("first non-finite gradient", FAIL,
                   f"step {step}: backward first produced NaN/Inf at {where}{cause}; parameters: {params}", advice)
    elif overflow:
        grad = Row("first non-finite gradient", FAIL,
                   f"step {step}: every gradient is finite but their total norm overflows float32 "
                   "(gradients beyond ~1e19): `nnrun train` skips such updates", advice)
    else:
        grad = Row("first non-finite gradient", PASS if found.error is None else INFO,
                   f"gradients finite at step {step}"
                   + (f" (replay failed: {found.error})" if found.error else ""))
    return [act, grad]


def loss_trend_row(curve: list[float], *, memorized: bool, threshold: float | None, lr: float,
                   failed: list[str] = ()) -> Row:
    """Plateau or divergence of the loss, with learning rates to try (after the failed checks)."""
    row = _loss_trend(curve, memorized=memorized, threshold=threshold, lr=lr)
    if row.status in (WARN, FAIL) and failed:
        row.advice = f"fix the failed check(s) first ({', '.join(failed)}); then: {row.advice}"
    return row


def _loss_trend(curve: list[float], *, memorized: bool, threshold: float | None, lr: float) -> Row:
    if not curve:
        return Row("loss trend", INFO, "not trained (see the FAIL rows)")
    l0, end = curve[0], curve[-1]
    evidence = f"{l0:.4g} -> {end:.4g} in {len(curve)} steps"
    lower = f"lower it: {lr_text(lr, 0.1)} or {lr_text(lr, 0.3)}; `nnrun lr-find` finds the range"
    if memorized:
        return Row("loss trend", PASS, evidence)
    if not math.isfinite(end):
        return Row("loss trend", FAIL, f"diverged: loss became {end} at step {len(curve)}", lower)
    peak = max(curve)
    if end >= l0 or peak > 3 * l0:
        return Row("loss trend", FAIL, f"diverged: {evidence}, peak {peak:.4g}", lower)
    above = f" above {threshold:.3g}" if threshold is not None else ""
    tail = curve[-max(len(curve) // 4, 2):]
    mean = sum(tail) / len(tail)
    noise = (sum((v - mean) ** 2 for v in tail) / len(tail)) ** 0.5 / max(mean, 1e-12)
    if noise > 0.1:
        return Row("loss trend", WARN, f"oscillating{above}: {evidence} (last quarter varies "
                   f"{noise:.0%})", lower)
    return Row("loss trend", WARN, f"plateau{above}: {evidence}",
               f"raise the learning rate: {lr_text(lr, 3)} or {lr_text(lr, 10)}, or more --steps; if that "
               "does not help, look for a bug in the rows above; `nnrun lr-find` finds the range")


def memorization_row(n: int, task: str, pre_rows: dict[str, Row], log, *, threshold: float, steps: int) -> Row:
    """The headline: was the fixed batch of `n` examples memorized, at which step, with which numbers.

    `log` is the overfit loop's TrainLog (None when a check before training failed).
    """
    if log is None:
        failed = [k for k, r in pre_rows.items() if r.status == FAIL]
        return Row("overfit one batch", FAIL, f"not trained: {', '.join(failed)} failed before training")
    if log.error:
        return Row("overfit one batch", FAIL, f"a training step raised: {log.error}")
    if log.nonfinite_step:
        return Row("overfit one batch", FAIL,
                   f"the loss or gradients became NaN/Inf at step {log.nonfinite_step}")
    f = log.final
    if task == "classification":
        got = f"accuracy {f['accuracy']:.0%} ({f['correct']}/{n}), loss {f['loss']:.4g}"
        need = f"100% and loss < {threshold:.3g}"
    else:
        got, need = f"MSE {f['mse']:.4g}", f"MSE <= {threshold:.4g} (1% of the targets' variance)"
    if log.memorized_at:
        return Row("overfit one batch", PASS, f"memorized {n} example(s) at step {log.memorized_at}: {got} "
                   "(eval mode, same batch)")
    return Row("overfit one batch", FAIL, f"not memorized in {steps} steps: {got}; needs {need}",
               "see the WARN/FAIL rows below; the loss trend row suggests learning rates")
