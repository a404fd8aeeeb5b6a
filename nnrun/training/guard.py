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
import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


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


# ---------------------------------------------------------------------------------------------
# finding where a step went non-finite (used by train's `stop` and by overfit-one-batch)


def first_tensor(out: Any) -> torch.Tensor | None:
    """The tensor a module returned (the first one of a tuple, list or dict)."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, (tuple, list)):
        return next((t for t in out if torch.is_tensor(t)), None)
    if isinstance(out, dict):
        return next((t for t in out.values() if torch.is_tensor(t)), None)
    return None


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


@dataclass
class NonFinite:
    """Where a replayed step first produced NaN/Inf."""

    input_finite: bool
    activation: str | None    # innermost module with a non-finite output (forward order)
    activation_kind: str | None
    loss_finite: bool
    gradient: str | None      # first module whose output gradient is non-finite (backward order)
    params: list[str]         # parameters whose gradient is non-finite
    error: str | None = None  # the replay itself raised
    gradient_kind: str | None = None

    def describe(self) -> str:
        """One line naming the culprit, as `nnrun train` reports it."""
        if not self.input_finite:
            return "the input batch holds NaN/Inf"
        if self.activation:
            return f"forward: the output of {self.activation} ({self.activation_kind}) became non-finite first"
        if self.error:
            return f"the replay raised: {self.error}"
        if not self.loss_finite:
            return "the loss became non-finite with finite model outputs (check the targets and the loss)"
        if self.gradient:
            return (f"backward: the gradient at the output of {self.gradient} ({self.gradient_kind}) became "
                    "non-finite first")
        if self.params:
            return f"backward: the gradient of parameter {self.params[-1]} became non-finite"
        return "not reproduced on replay (weights before the step are finite; dropout draws differ)"


def find_first_nonfinite(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                         autocast: Callable[[], Any] = contextlib.nullcontext) -> NonFinite:
    """Replay forward and backward of one batch with hooks on every module.

    Forward hooks fire child before parent (algorithms.md section 10), so the first hit is the
    innermost culprit; gradient hooks on module outputs fire from the output backwards. The model
    must hold the weights of the step being replayed; buffers (BatchNorm statistics) are restored
    and gradients zeroed afterwards, so the replay leaves no trace.
    """
    first: dict[str, Any] = {"act": None, "kind": None}
    backward: list[tuple[str, str]] = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            t = first_tensor(output)
            if t is None or not t.is_floating_point():
                return
            if first["act"] is None and not bool(torch.isfinite(t).all()):
                first["act"], first["kind"] = name, type(module).__name__
            if t.requires_grad:
                kind = type(module).__name__
                t.register_hook(lambda g, n=name, k=kind: backward.append((n, k))
                                if not bool(torch.isfinite(g).all()) else None)
        return hook

    if not bool(torch.isfinite(x.float()).all()):
        return NonFinite(False, None, None, True, None, [])
    handles = [m.register_forward_hook(make_hook(n or "(model)")) for n, m in model.named_modules()]
    error, loss_finite = None, False
    try:
        with restored_buffers(model):
            with autocast():
                loss = loss_fn(model(x), y)
            loss_finite = bool(torch.isfinite(loss).all())
            model.zero_grad(set_to_none=True)
            loss.backward()
    except (RuntimeError, ValueError) as exc:  # the replay is diagnostic: report, do not crash
        error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    finally:
        for h in handles:
            h.remove()
    params = [n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    model.zero_grad(set_to_none=True)
    grad, grad_kind = backward[0] if backward else (None, None)
    return NonFinite(True, first["act"], first["kind"], loss_finite, grad, params, error, grad_kind)


# ---------------------------------------------------------------------------------------------
# what the loop does about non-finite steps


class NonFinitePolicy:
    """`train.on_nonfinite`: stop (name the culprit, keep the last finite weights), skip the
    updates (stop after `max_skips` in a row), or roll back to the last good evaluation with a
    lower learning rate (give up after `max_rollbacks`).

    It acts at the loop's polls (log windows and evaluations) on what the guard counted, through
    the trainer's public methods (`request_stop`, `event`, `state_dict`, `rewind`).
    """

    def __init__(self, train_cfg, guard: NonFiniteGuard):
        self.mode = train_cfg.on_nonfinite
        self.max_skips, self.max_rollbacks = train_cfg.max_skips, train_cfg.max_rollbacks
        self.rollback_factor = train_cfg.rollback_factor
        self.guard = guard
        self.bad_seen = 0                  # non-finite steps already acted upon
        self.good: dict | None = None      # rollback: the last good state, in memory

    def remember(self, trainer) -> None:
        """After an evaluation (and at the start): keep a copy of the state to roll back to."""
        if self.mode == "rollback":
            self.good = copy.deepcopy(trainer.state_dict())

    def act(self, trainer, report: GuardReport, positions: list[tuple[int, int, int]]) -> None:
        """Act on the steps that went non-finite since the last poll.

        Args:
            trainer: the loop.
            report: the guard's counters at this poll.
            positions: (step, epoch, batch) of every step since the last poll, to replay the bad one.
        """
        new_bad, self.bad_seen = report.bad_steps - self.bad_seen, report.bad_steps
        if new_bad <= 0:
            return
        if self.mode == "stop":
            self._stop(trainer, report.first_bad_step, positions)
        elif self.mode == "skip":
            trainer.event(f"skipped {new_bad} update(s) with a non-finite loss or gradient "
                          f"(first at step {report.first_bad_step}); {report.bad_steps} in all")
            if report.max_consecutive >= self.max_skips:
                trainer.request_stop(f"non-finite: {report.max_consecutive} consecutive updates skipped "
                                     f"(train.max_skips {self.max_skips})")
        else:
            self._roll_back(trainer, new_bad)

    def _stop(self, trainer, first_bad: int, positions: list[tuple[int, int, int]]) -> None:
        where = next(((e, b) for st, e, b in positions if st == first_bad), None)
        culprit = "unknown (the batch is outside this window)"
        if where is not None:
            x, y = next(iter(trainer.components.train_batches.epoch(where[0], start=where[1])))
            device = trainer.components.device
            culprit = find_first_nonfinite(trainer.model, trainer.loss_fn, x.to(device), y.to(device),
                                           autocast=trainer.stepper.autocast).describe()
        norms = [f"step {st}: {v:.3g}" for st, v in self.guard.norms_before(first_bad)]
        trainer.request_stop(f"non-finite loss or gradient at step {first_bad} (epoch {where[0] if where else '?'}): "
                             f"{culprit}; gradient norms up to it: {', '.join(norms) or 'n/a'}. Updates from that "
                             "step on were not applied; try a lower optimizer.lr, clip.policy global_norm, or "
                             "train.on_nonfinite: rollback")

    def _roll_back(self, trainer, new_bad: int) -> None:
        s = trainer.state
        if self.good is None or s.rollbacks >= self.max_rollbacks:
            trainer.request_stop(f"non-finite: gave up after {s.rollbacks} rollback(s) (train.max_rollbacks)")
            return
        rollbacks, scale, at = s.rollbacks + 1, s.lr_scale * self.rollback_factor, s.step
        trainer.rewind(copy.deepcopy(self.good), rollbacks=rollbacks, lr_scale=scale)
        self.guard.reset_stop_latch()
        trainer.event(f"step {at}: {new_bad} non-finite step(s); rolled back to step {s.step} (epoch {s.epoch}) "
                      f"and cut the learning rate to x{scale:g} (rollback {rollbacks})")
