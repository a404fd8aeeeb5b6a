"""The non-finite guard: catch NaN/Inf losses and gradients at almost no cost per step.

Each step computes one flag: is the loss (and the gradient norm, when the step computes one) non-
finite? On CUDA the flag stays on the device and the fused optimizers take it as `found_inf`, the
path GradScaler uses, so a bad update is skipped without waiting for the GPU. On the CPU there is
no queue to wait for, so the flag is read at once (a few microseconds) and the step is skipped
on the host. Either way the per-step flags land in the loop's per-step buffer and the host turns
them into counters once per log window (`poll`), which is when `stop`, `skip` and `rollback`
act; in `stop` mode no update after the first non-finite step is applied, so the weights the
guard stops with are the last finite ones.

It also keeps the recent gradient norms to warn when one jumps far above their median: an
explosion in the making (peers.md: runs that kept training on `grad_norm: nan`).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import torch


@dataclass
class GuardReport:
    """What the host learns at a poll."""

    bad_steps: int            # non-finite steps since the start of the run
    first_bad_step: int       # optimizer step (0-based) of the first one, -1 if none
    consecutive: int          # current run of consecutive non-finite steps
    max_consecutive: int      # longest run seen in this window
    explosion: str | None     # a warning about a gradient-norm spike


class NonFiniteGuard:
    """Per-step non-finite flags and their host-side bookkeeping."""

    def __init__(self, mode: str, device: torch.device, *, explosion_factor: float = 10.0, history: int = 256):
        self.mode, self.device, self.explosion_factor = mode, device, explosion_factor
        self.on_host = device.type == "cpu"
        self.latch = torch.zeros((), dtype=torch.bool, device=device)   # stop mode, device path
        self.latched = False                                            # stop mode, host path
        self.bad_total, self.first_bad, self.consec, self.window_max = 0, -1, 0, 0
        self.norms: collections.deque[tuple[int, float]] = collections.deque(maxlen=history)

    def flag(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> torch.Tensor | bool:
        """This step's loss or gradient norm is non-finite: a host bool on the CPU (reading a CPU
        scalar costs microseconds), a device bool elsewhere (norm >= 0, so a sum covers both)."""
        value = loss if grad_norm is None else loss + grad_norm
        if self.on_host:
            return not math.isfinite(value.item())
        return ~torch.isfinite(value)

    def skip(self, bad: torch.Tensor | bool, step: int) -> torch.Tensor | bool:
        """Whether to skip this update: a host bool on the CPU (counted at once), a device flag
        elsewhere (counted at the next poll). In `stop` mode every later update is skipped too."""
        if self.on_host:
            b = bool(bad)
            self._count(step, b)
            self.latched = self.latched or (b and self.mode == "stop")
            return self.latched or b
        if self.mode == "stop":
            self.latch |= bad
            return self.latch.clone()
        return bad

    def _count(self, step: int, bad: bool) -> None:
        if bad:
            self.bad_total += 1
            self.first_bad = step if self.first_bad < 0 else self.first_bad
            self.consec += 1
            self.window_max = max(self.window_max, self.consec)
        else:
            self.consec = 0

    def poll(self, rows: list[tuple[int, float, float]]) -> GuardReport:
        """Fold a window of (step, bad flag, gradient norm) into the counters; warn on a spike.
        (On the CPU the flags were counted as they came; the rows only bring the norms.)"""
        for step, bad, _ in rows if not self.on_host else ():
            self._count(step, bool(bad))
        report_max, self.window_max = max(self.window_max, self.consec), self.consec
        explosion = self._explosion([(st, n) for st, bad, n in rows if not bad and math.isfinite(n)])
        return GuardReport(self.bad_total, self.first_bad, self.consec, report_max, explosion)

    def _explosion(self, fresh: list[tuple[int, float]]) -> str | None:
        older = sorted(n for _, n in self.norms)
        self.norms.extend(fresh)
        if len(older) < 8 or not fresh:
            return None
        median = older[len(older) // 2]
        step, peak = max(fresh, key=lambda p: p[1])
        if median > 0 and peak > self.explosion_factor * median:
            return (f"gradient norm {peak:.3g} at step {step} is {peak / median:.0f}x its recent median "
                    f"{median:.3g}: an explosion in the making? consider a lower optimizer.lr or "
                    "clip.policy global_norm")
        return None

    def norms_before(self, step: int, k: int = 5) -> list[tuple[int, float]]:
        """The recorded gradient norms of the last `k` steps up to and including `step`."""
        return [p for p in self.norms if p[0] <= step][-k:]

    def reset_stop_latch(self) -> None:
        """After a rollback the run is healthy again: stop skipping."""
        self.latch.zero_()
        self.latched = False
        self.consec = 0

    def state_dict(self) -> dict:
        return {"bad_total": self.bad_total, "first_bad": self.first_bad}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.bad_total, self.first_bad = state["bad_total"], state["first_bad"]


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((t for t in out if isinstance(t, torch.Tensor)), None)
    if isinstance(out, dict):
        return next((t for t in out.values() if isinstance(t, torch.Tensor)), None)
    return None


def locate_nonfinite(model: torch.nn.Module, loss_fn, batches, device: torch.device, autocast) -> str:
    """Replay the offending batch with hooks and name the first module that went non-finite.

    Forward hooks fire child before parent (algorithms.md section 10), so the first hit is the
    innermost culprit; gradient hooks on module outputs fire from the output backwards. Buffers
    (BatchNorm statistics) and gradients are restored, so the replay leaves no trace.
    """
    found: dict[str, str] = {}
    handles = []

    def hook(name):
        def fn(module, inputs, out):
            t = _first_tensor(out)
            if t is None or not t.is_floating_point():
                return
            if "forward" not in found and not bool(torch.isfinite(t).all()):
                found["forward"] = f"{name} ({type(module).__name__})"
            if t.requires_grad:
                t.register_hook(lambda g, name=name, kind=type(module).__name__: found.setdefault(
                    "backward", f"{name} ({kind})") if not bool(torch.isfinite(g).all()) else None)
        return fn

    buffers = {k: v.clone() for k, v in model.named_buffers()}
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        x, y = batches[0]
        x, y = x.to(device), y.to(device)
        if not bool(torch.isfinite(x.float()).all()):
            return "the input batch holds NaN/Inf"
        with autocast():
            loss = loss_fn(model(x), y)
        if "forward" in found:
            return f"forward: the output of {found['forward']} became non-finite first"
        if not bool(torch.isfinite(loss).all()):
            return "the loss became non-finite with finite model outputs (check the targets and the loss)"
        model.zero_grad(set_to_none=True)
        loss.backward()
        if "backward" in found:
            return f"backward: the gradient at the output of {found['backward']} became non-finite first"
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        if bad:
            return f"backward: the gradient of parameter {bad[-1]} became non-finite"
        return "not reproduced on replay (weights before the step are finite; dropout draws differ)"
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
