"""The non-finite guard: catch NaN/Inf losses and gradients without a host sync per step.

Each step computes, on the device, whether its loss or gradient norm is non-finite and whether
the update must be skipped. Fused optimizers take that flag as `found_inf` and skip the update
(state included) on the device, the same path GradScaler uses, so nothing waits for the CPU.
The host reads the counters only on log steps (`poll`), which is when `stop`, `skip` and
`rollback` act; updates after the first non-finite step are never applied in `stop` mode, so
the weights the guard stops with are the last finite ones. Non-fused optimizers need the answer
before stepping, so for them the flag is read every step (a documented cost).

It also keeps a short history of gradient norms to warn when one jumps far above the recent
median: an explosion in the making (peers.md: runs that kept training on `grad_norm: nan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GuardReport:
    """What the host learns at a poll."""

    bad_steps: int            # non-finite steps since the start of the run
    first_bad_step: int       # optimizer step (0-based) of the first one, -1 if none
    consecutive: int          # current run of consecutive non-finite steps
    max_consecutive: int      # longest run since the last poll
    explosion: str | None     # a warning about a gradient-norm spike


class NonFiniteGuard:
    """Device-side bookkeeping of non-finite steps and gradient-norm spikes."""

    def __init__(self, mode: str, device: torch.device, *, explosion_factor: float = 10.0, window: int = 64):
        self.mode, self.device, self.explosion_factor = mode, device, explosion_factor
        z = lambda dtype=torch.long: torch.zeros((), dtype=dtype, device=device)  # noqa: E731
        self.bad_total, self.consec, self.max_consec = z(), z(), z()
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.any_bad = z(torch.bool)
        self.norms = torch.full((window,), float("nan"), device=device)
        self.norm_steps = [-1] * window  # host-side: which step each slot holds
        self.slot = 0
        self.last_polled_slot = 0

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> torch.Tensor:
        """Record one step; return the device flag (bool) that says: skip this update."""
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        self.bad_total += bad.long()
        self.first_bad.copy_(torch.where((self.first_bad < 0) & bad, step, self.first_bad))
        self.consec.copy_((self.consec + 1) * bad.long())
        self.max_consec.copy_(torch.maximum(self.max_consec, self.consec))
        self.any_bad |= bad
        self.norms[self.slot % self.norms.numel()] = grad_norm.detach().float()
        self.norm_steps[self.slot % self.norms.numel()] = step
        self.slot += 1
        return self.any_bad.clone() if self.mode == "stop" else bad

    def poll(self) -> GuardReport:
        """One host sync: the counters, and a spike warning if the latest norms jumped."""
        bad_total, first, consec, max_consec = torch.stack(
            [self.bad_total, self.first_bad, self.consec, self.max_consec]).tolist()
        self.max_consec.copy_(self.consec)
        return GuardReport(bad_total, first, consec, max_consec, self._explosion())

    def _explosion(self) -> str | None:
        norms = self.norms.detach().cpu()
        new = min(self.slot - self.last_polled_slot, norms.numel())
        self.last_polled_slot = self.slot
        if new <= 0 or self.slot < 8:
            return None
        order = [(self.slot - 1 - i) % norms.numel() for i in range(min(self.slot, norms.numel()))]
        recent, older = norms[order[:new]], norms[order[new:]]
        older = older[torch.isfinite(older)]
        recent = recent[torch.isfinite(recent)]
        if older.numel() < 4 or recent.numel() == 0:
            return None
        median, peak = float(older.median()), float(recent.max())
        if median > 0 and peak > self.explosion_factor * median:
            return (f"gradient norm {peak:.3g} is {peak / median:.0f}x its recent median {median:.3g}: an "
                    "explosion in the making? consider a lower optimizer.lr or clip.policy global_norm")
        return None

    def norms_before(self, step: int, k: int = 5) -> list[tuple[int, float]]:
        """The gradient norms of the last `k` steps up to and including `step` (one host sync)."""
        values = self.norms.detach().cpu().tolist()
        pairs = sorted((st, v) for st, v in zip(self.norm_steps, values) if 0 <= st <= step)
        return pairs[-k:]

    def reset_stop_latch(self) -> None:
        """After a rollback the run is healthy again: stop skipping."""
        self.any_bad.zero_()
        self.consec.zero_()

    def state_dict(self) -> dict:
        return {"bad_total": int(self.bad_total), "first_bad": int(self.first_bad)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.bad_total.fill_(state["bad_total"])
            self.first_bad.fill_(state["first_bad"])


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
