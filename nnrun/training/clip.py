"""`clip` section -> one gradient-clipping dispatch that returns the norms for logging.

Policies (sources in `algorithms.md` section 6):
- `global_norm`: one norm over all gradients, scaled to `max_norm` (Pascanu et al. 2013).
- `per_param_norm`: each parameter tensor clipped to its own threshold (`max_norm`, or its
  group's `clip_norm`); changes the overall direction, lets every tensor keep up to its bound.
- `value`: elementwise to [-value, value] (Mikolov 2012).
- `agc`: adaptive gradient clipping, unit-wise ||G_i|| / max(||W_i||, eps) <= clipping (Brock et
  al. 2021); the output layer is excluded by name (not by timm's "last two parameters" hack).
- `autoclip`: the threshold is the p-th percentile of the history of gradient norms
  (Seetharaman et al. 2020), kept in a bounded ring buffer that travels in checkpoints.

Everything stays on the device: the returned norms are tensors, read only when logged, so
clipping adds no host sync. A non-finite norm is never used to scale (PyTorch would turn an inf
gradient into NaNs); the loop's non-finite guard skips that update instead.
"""

from __future__ import annotations

import bisect
import fnmatch
import math
from dataclasses import dataclass

import torch

from nnrun.recipe.schema import ClipConfig


@dataclass
class ClipResult:
    """Norms of one step, as device tensors: total norm before and after, and whether it clipped."""

    before: torch.Tensor
    after: torch.Tensor
    clipped: torch.Tensor


def total_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """The norm of all gradients together (PyTorch's `get_total_norm`)."""
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=norm_type, foreach=True)


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """Frobenius norm per output unit (dims after 0), whole-tensor norm for 0/1-D tensors."""
    if x.dim() <= 1:
        return x.norm()
    return x.norm(dim=tuple(range(1, x.dim())), keepdim=True)


def _scale(grads: list[torch.Tensor], norm: torch.Tensor, max_norm: torch.Tensor | float) -> None:
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    coef = torch.where(torch.isfinite(norm) & torch.isfinite(coef), coef, torch.ones_like(coef))
    torch._foreach_mul_(grads, coef)


class Clipper:
    """Applies the recipe's policy to the gradients of `named_params`.

    Args:
        cfg: the recipe's clip section.
        named_params: (name, parameter) pairs of the model.
        thresholds: per-parameter `max_norm` for `per_param_norm` (from optimizer groups).
        device: where the autoclip history lives.
    """

    def __init__(self, cfg: ClipConfig, named_params: list[tuple[str, torch.nn.Parameter]],
                 thresholds: dict[str, float] | None = None, device: torch.device | None = None):
        self.cfg = cfg
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.thresholds = thresholds or {}
        excluded = cfg.agc_exclude
        self.agc_params = [p for n, p in named_params if not any(fnmatch.fnmatchcase(n, e) for e in excluded)]
        self.history = torch.zeros(cfg.window, device=device)
        self._sorted: list[float] | None = None
        self.count = torch.zeros((), dtype=torch.long, device=device)

    def grads(self, params=None) -> list[torch.Tensor]:
        return [p.grad for p in (params if params is not None else self.params) if p.grad is not None]

    def __call__(self, want_norm: bool = True) -> ClipResult | None:
        """Clip in place; return the norms before/after and whether this step was clipped.

        With policy `none` and `want_norm` false nothing is computed (None): the default loop
        reads the norm only on log steps."""
        policy = self.cfg.policy
        if policy == "none" and not want_norm:
            return None
        grads = self.grads()
        before = total_norm(grads, self.cfg.norm_type)
        if policy in ("global_norm", "autoclip"):
            # One global scale: the norm after it is min(before, bound), no second pass needed.
            bound = self.cfg.max_norm if policy == "global_norm" else self._autoclip_threshold(before)
            _scale(grads, before, bound)
            after = torch.minimum(before, bound) if torch.is_tensor(bound) else torch.clamp(before, max=float(bound))
            return ClipResult(before, after, before > bound)
        if policy == "per_param_norm":
            self._per_param()
        elif policy == "value":
            torch._foreach_clamp_min_(grads, -self.cfg.value)
            torch._foreach_clamp_max_(grads, self.cfg.value)
        elif policy == "agc":
            shrink = self._agc()
            if shrink is not None:  # ||G'||^2 = ||G||^2 - sum_i n_i^2 (1 - c_i^2): no second pass
                after = torch.sqrt(torch.clamp(before * before - shrink, min=0.0))
                return ClipResult(before, after, shrink > 0)
        after = total_norm(grads, self.cfg.norm_type) if policy != "none" else before
        return ClipResult(before, after, after < before * (1 - 1e-6))

    def _per_param(self) -> None:
        """Each tensor to its own bound, with foreach kernels (a handful of ops for all tensors)."""
        pairs = [(n, p.grad) for n, p in zip(self.names, self.params) if p.grad is not None]
        grads = [g for _, g in pairs]
        norms = torch._foreach_add(torch._foreach_norm(grads, self.cfg.norm_type), 1e-6)
        coefs = torch._foreach_mul(torch._foreach_reciprocal(norms),
                                   [self.thresholds.get(n, self.cfg.max_norm) for n, _ in pairs])
        torch._foreach_clamp_max_(coefs, 1.0)
        torch._foreach_mul_(grads, coefs)

    def _agc(self) -> torch.Tensor | None:
        # G_i <- G_i * min(1, clipping * max(||W_i||, eps) / max(||G_i||, 1e-6)): the paper's "if the
        # ratio exceeds `clipping`, rescale", as one multiply; the per-unit norms are the only
        # per-tensor ops, the rest runs as foreach kernels over all tensors at once. Returns how much
        # the squared 2-norm shrank (sum of n_i^2 (1 - c_i^2)), so the caller needs no second pass.
        params = [p for p in self.agc_params if p.grad is not None]
        if not params:
            return None
        coefs = [unitwise_norm(p.detach()) for p in params]
        norms = [unitwise_norm(p.grad) for p in params]
        torch._foreach_clamp_min_(coefs, self.cfg.eps)
        torch._foreach_mul_(coefs, self.cfg.clipping)
        torch._foreach_clamp_min_(norms, 1e-6)
        torch._foreach_div_(coefs, norms)
        torch._foreach_clamp_max_(coefs, 1.0)
        torch._foreach_mul_([p.grad for p in params], coefs)
        if self.cfg.norm_type != 2.0:
            return None
        lost = torch._foreach_mul(coefs, coefs)        # c^2
        torch._foreach_sub_(lost, 1.0)                  # c^2 - 1 (<= 0)
        torch._foreach_mul_(lost, torch._foreach_mul(norms, norms))
        return -torch.stack([t.sum() for t in lost]).sum()

    def _autoclip_threshold(self, norm: torch.Tensor) -> torch.Tensor:
        """Record the norm (if finite) and return the p-th percentile of the history, current included.

        On the CPU a scalar read is cheap, so the percentile is taken with NumPy on the host; on
        an accelerator it is computed on the device (no sync)."""
        if norm.device.type == "cpu":
            return self._autoclip_host(norm)
        window = self.history.numel()
        finite = torch.isfinite(norm)
        slot = self.count % window
        self.history[slot] = torch.where(finite, norm, self.history[slot])
        self.count += finite.long()
        n = torch.clamp(self.count, max=window)
        # Sort with unfilled slots at +inf, then interpolate the percentile among the first n: no host sync.
        filled = torch.where(torch.arange(window, device=norm.device) < n, self.history,
                             torch.full_like(self.history, float("inf")))
        ordered = filled.sort().values
        pos = (n - 1).clamp(min=0).float() * (self.cfg.percentile / 100.0)
        lo = pos.floor().long()
        hi = torch.minimum(lo + 1, (n - 1).clamp(min=0))
        frac = pos - lo.float()
        value = ordered[lo] * (1 - frac) + ordered[hi] * frac
        return torch.where(n > 0, value, norm)

    def _autoclip_host(self, norm: torch.Tensor) -> float | torch.Tensor:
        """Host version: a sorted copy of the window kept with bisect, so each step costs
        microseconds; interpolates like numpy.percentile (linear)."""
        value, window = norm.item(), self.history.numel()
        if self._sorted is None:  # first call, or after load_state_dict
            n = min(int(self.count), window)
            self._sorted = sorted(self.history[:n].tolist())
        if math.isfinite(value):
            slot = int(self.count) % window
            if int(self.count) >= window:
                del self._sorted[bisect.bisect_left(self._sorted, float(self.history[slot]))]
            self.history[slot] = value
            bisect.insort(self._sorted, value)
            self.count += 1
        if not self._sorted:
            return norm
        pos = (len(self._sorted) - 1) * self.cfg.percentile / 100.0
        lo = int(pos)
        hi = min(lo + 1, len(self._sorted) - 1)
        return self._sorted[lo] + (self._sorted[hi] - self._sorted[lo]) * (pos - lo)

    def state_dict(self) -> dict:
        return {"history": self.history.detach().cpu(), "count": self.count.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        if state and state["history"].numel() == self.history.numel():
            self.history.copy_(state["history"])
            self.count.copy_(state["count"])
            self._sorted = None


def layer_grad_norms(named_params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """Per-parameter gradient norms (device tensors), for the periodic per-layer log."""
    pairs = [(n, p.grad) for n, p in named_params if p.grad is not None]
    norms = torch._foreach_norm([g for _, g in pairs]) if pairs else []
    return {n: v for (n, _), v in zip(pairs, norms)}
