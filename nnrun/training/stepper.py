"""One optimizer step with its numeric safety: precision, accumulation, clipping, the guard.

The order is the one that keeps each piece correct (algorithms.md section 6):
forward under autocast -> loss weighted by the micro-batch's share -> (scaled) backward for
every micro-batch -> unscale (fp16) -> clip once on the accumulated gradient -> non-finite
check -> step (skipped on the device when the guard or the scaler says so). Clipping scaled
fp16 gradients, the bug behind Lightning #9599, cannot happen here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nnrun.training.clip import Clipper, layer_grad_norms
from nnrun.training.guard import NonFiniteGuard

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepOutput:
    """One step's values, device tensors read only when logged (None: not computed this step)."""

    loss: torch.Tensor        # mean loss over the step's examples
    examples: int
    norm_before: torch.Tensor | None
    norm_after: torch.Tensor | None
    clipped: torch.Tensor | None
    nonfinite: torch.Tensor | bool  # the loss or gradient was NaN/Inf (the update was not applied)
    overflow: torch.Tensor | None = None  # fp16: the scaler skipped the step (gradients overflowed)


def per_param_thresholds(optimizer_cfg, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """`optimizer.groups[].clip_norm` mapped onto the parameter names of each group."""
    by_group = {(g.name or f"g{i}"): g.clip_norm for i, g in enumerate(optimizer_cfg.groups)
                if g.clip_norm is not None}
    out = {}
    for group in optimizer.param_groups:
        bound = by_group.get(group.get("name", "").removesuffix(".no_decay"))
        if bound is not None:
            out.update({n: bound for n in group.get("param_names", [])})
    return out


class Stepper:
    """Runs optimizer steps for a model, loss and optimizer with the given numeric safety parts.

    Args:
        model, loss_fn, optimizer, device: the run's components.
        precision: `train.precision` (fp32, bf16 or fp16).
        clipper: the clip policy, applied once per step to the accumulated gradient.
        guard: the non-finite guard.
        layer_norms_every: compute per-layer gradient norms every N steps (0: never).
    """

    def __init__(self, model: torch.nn.Module, loss_fn, optimizer: torch.optim.Optimizer, device: torch.device, *,
                 precision: str, clipper: Clipper, guard: NonFiniteGuard, layer_norms_every: int = 0):
        self.model, self.loss_fn, self.optimizer, self.device = model, loss_fn, optimizer, device
        self.amp_dtype = AMP_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.named = list(model.named_parameters())
        self.clipper, self.guard = clipper, guard
        self.fused = any(g.get("fused") for g in optimizer.param_groups)
        self.layer_norms_every = layer_norms_every
        self.layer_norms: dict[str, torch.Tensor] = {}
        self.ddp: torch.nn.Module | None = None   # several processes: the DDP wrapper that syncs gradients
        self.world_size = 1
        self._zero = torch.zeros((), device=device)

    def share(self, ddp: torch.nn.Module | None, world_size: int) -> None:
        """Train through `ddp` (a DistributedDataParallel around the model) with `world_size` processes."""
        self.ddp, self.world_size = ddp, world_size

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def forward_backward(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                         global_sizes: Sequence[int] | None = None) -> tuple[torch.Tensor, int]:
        """Accumulate gradients of every micro-batch; return the mean loss and the example count
        (of this process; `global_sizes`: the examples of each micro-batch over all processes)."""
        if self.ddp is not None:
            return self._forward_backward_shared(batches, global_sizes)
        if len(batches) == 1:  # the common case: no weighting, no extra tensor ops
            x, y = batches[0]
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.autocast():
                loss = self.loss_fn(self.model(x), y)
            if loss.requires_grad:  # not when every parameter is frozen (e.g. before a gradual unfreeze)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss = loss.detach()
            return (loss if loss.dtype == torch.float32 else loss.float()), len(y)
        total = sum(len(y) for _, y in batches)
        loss_sum = None
        for x, y in batches:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.autocast():
                loss = self.loss_fn(self.model(x), y)
            # Weighted by the micro-batch's share of the examples, the summed gradient equals the
            # gradient of one batch of all of them, also when the last micro-batch is smaller.
            weighted = loss * (len(y) / total)
            if weighted.requires_grad:
                (self.scaler.scale(weighted) if self.scaler else weighted).backward()
            part = loss.detach().float() * len(y)
            loss_sum = part if loss_sum is None else loss_sum + part
        return loss_sum / total, total

    def _forward_backward_shared(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                                 global_sizes: Sequence[int]) -> tuple[torch.Tensor, int]:
        """Several processes. Micro-batch i of this process holds n_i of the N_i examples of global
        batch i; weighting its mean loss by n_i * W / sum(N) makes DDP's average of the W gradients
        the gradient of the whole global step, also for uneven chunks and empty ones (an empty chunk
        contributes `out.sum() * 0`, so every parameter still takes part in the all-reduce). The
        gradients are synced once, on the last micro-batch (`no_sync` for the others)."""
        scale = self.world_size / sum(global_sizes)
        loss_sum, local = self._zero.clone(), 0
        for i, (x, y) in enumerate(batches):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            sync = contextlib.nullcontext() if i == len(batches) - 1 else self.ddp.no_sync()
            with sync:
                with self.autocast():
                    out = self.ddp(x)
                    loss = self.loss_fn(out, y) if len(y) else out.sum() * 0.0
                weighted = loss * (len(y) * scale)
                (self.scaler.scale(weighted) if self.scaler else weighted).backward()
            loss_sum += loss.detach().float() * len(y)
            local += len(y)
        return loss_sum / max(local, 1), local

    def step(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], step: int, *,
             want_norm: bool = True, global_sizes: Sequence[int] | None = None) -> StepOutput:
        """One optimizer step on `batches` (the micro-batches of this step).

        The gradient norm is computed when a clip policy needs it, under fp16 (to see overflow)
        or when `want_norm` asks (log steps); the non-finite check then covers the gradients too,
        otherwise the loss (a bad gradient shows in the next step's loss). With several processes
        the guard decides on the synchronized gradient norm alone, which every process computes
        alike (the loss is each process's own), so all of them skip or apply the same steps."""
        loss, total = self.forward_backward(batches, global_sizes)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        shared = self.ddp is not None
        clip = self.clipper(want_norm or self.scaler is not None or shared)
        if self.layer_norms_every and (step + 1) % self.layer_norms_every == 0:
            self.layer_norms = layer_grad_norms(self.named)
        norm = clip.before if clip else None
        overflow = None
        if self.scaler:
            # fp16 overflow is routine while the scale calibrates: the scaler skips those steps;
            # the guard watches the loss only.
            bad = self.guard.flag(loss, None)
            self.guard.skip(bad, step)
            overflow = ~torch.isfinite(norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            bad = self.guard.flag(self._zero if shared else loss, norm)
            self._apply(self.guard.skip(bad, step))
        return StepOutput(loss, total, norm, clip.after if clip else None, clip.clipped if clip else None,
                          bad, overflow)

    def _apply(self, skip: torch.Tensor | bool) -> None:
        if isinstance(skip, bool):  # decided on the host (CPU)
            if not skip:
                self.optimizer.step()
        elif self.fused:  # the fused kernels skip on the device: no host sync
            self.optimizer.found_inf = skip.float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif not bool(skip):  # other kernels on an accelerator need the answer on the host
            self.optimizer.step()

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler else None,
                "clip": self.clipper.state_dict(), "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.clipper.load_state_dict(state.get("clip"))
        self.guard.load_state_dict(state.get("guard"))


def make_stepper(recipe, model: torch.nn.Module, loss_fn, optimizer: torch.optim.Optimizer,
                 device: torch.device) -> Stepper:
    """The loop's step with its parts, each built from its own recipe section."""
    named = list(model.named_parameters())
    clipper = Clipper(recipe.clip, named, per_param_thresholds(recipe.optimizer, optimizer), device)
    guard = NonFiniteGuard(recipe.train.on_nonfinite, device, explosion_factor=recipe.train.explosion_factor)
    return Stepper(model, loss_fn, optimizer, device, precision=recipe.train.precision, clipper=clipper, guard=guard,
                   layer_norms_every=recipe.clip.layer_norms_every)
