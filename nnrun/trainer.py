"""The training loop: forward, loss, backward, step, schedule; everything else is a callback.

The loop never prints and never writes files. It avoids host syncs on the hot path: the loss
stays on the device and is read only every `log.every_n_steps` steps (and by a throttled
progress display), which is what keeps nnrun within a few percent of a hand-written loop.

Its position is explicit (`epoch`, `batch` within the epoch, optimizer `step`), the data order
of an epoch is a pure function of (seed, epoch), and the RNG states travel in every checkpoint,
so a run stopped anywhere resumes bit-identically on CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from nnrun import __version__
from nnrun.checkpoint import FORMAT, FORMAT_VERSION, capture_rng, restore_rng
from nnrun.freeze import apply_freeze, set_train_mode
from nnrun.metrics import evaluate
from nnrun.optim import get_momentum, group_names, set_momentum


@dataclass
class TrainState:
    """Where the run is. `batch` is the next batch of epoch `epoch` (0-based)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    bad_evals: int = 0
    epoch_loss_sum: torch.Tensor | None = None
    epoch_examples: int = 0
    stop_reason: str | None = None


class Callback:
    """Hooks the loop calls; every hook gets the trainer (its state, model, ...)."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer") -> None:
        """After the optimizer step, gradients still present; `trainer.last_loss` is on the device."""

    def on_log(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        """Every `log.every_n_steps` steps, with host values (`train/loss`, `grad_norm`, `lr/...`)."""

    def on_eval_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        """After each evaluation; `record` is the metrics.jsonl line."""

    def on_fit_end(self, trainer: "Trainer", reason: str) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    """The loop's knobs, resolved from the recipe by the workflow."""

    total_steps: int
    log_every: int
    eval_every: int
    monitor: str
    mode: str
    patience: int | None


class Trainer:
    """Runs the optimization of built components and reports through callbacks."""

    def __init__(self, components: Any, settings: LoopSettings, callbacks: Sequence[Callback] = ()):
        self.c = components
        self.model, self.optimizer, self.loss_fn = components.model, components.optimizer, components.loss_fn
        self.settings = settings
        self.callbacks = list(callbacks)
        self.state = TrainState()
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.group_names = group_names(self.optimizer)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.last_loss: torch.Tensor | None = None
        self._stop_requested: str | None = None
        self._t_log = time.perf_counter()
        self._examples_since_log = 0

    # -- control ---------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Stop at the next step boundary (signal handlers and callbacks call this)."""
        self._stop_requested = reason

    @property
    def steps_per_epoch(self) -> int:
        return len(self.c.train_batches)

    def current_lrs(self) -> dict[str, float]:
        """`lr/<group>` and `momentum/<group>` (momentum or Adam's beta1) of every group."""
        out = {}
        for n, g in zip(self.group_names, self.optimizer.param_groups):
            out[f"lr/{n}"] = g["lr"]
            momentum = get_momentum(g)
            if momentum is not None:
                out[f"momentum/{n}"] = momentum
        return out

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train until the step budget, early stopping or a stop request; returns the state."""
        s = self.state
        for cb in self.callbacks:
            cb.on_fit_start(self)
        reason = "finished"
        while s.step < self.settings.total_steps:
            if self._stop_requested:  # e.g. Ctrl-C during an evaluation
                reason = self._stop_requested
                break
            self._run_epoch()
            if self._stop_requested:
                reason = self._stop_requested
                break
            if s.batch >= self.steps_per_epoch:
                s.epoch, s.batch = s.epoch + 1, 0
                self._end_epoch()
            elif s.step >= self.settings.total_steps:  # a fractional last epoch
                self._evaluate()
            if s.stop_reason:
                reason = s.stop_reason
                break
        s.stop_reason = reason
        for cb in self.callbacks:
            cb.on_fit_end(self, reason)
        return s

    def _run_epoch(self) -> None:
        s, model_cfg = self.state, self.c.recipe.model
        if model_cfg.freeze:
            apply_freeze(self.model, model_cfg, s.epoch)
        set_train_mode(self.model, model_cfg)
        if s.epoch_loss_sum is None:
            s.epoch_loss_sum, s.epoch_examples = torch.zeros((), device=self.c.device), 0
        for batch in self.c.train_batches.epoch(s.epoch, start=s.batch):
            self._apply_schedule(s.step)
            log_now = (s.step + 1) % self.settings.log_every == 0
            loss, n, grad_norm = self.train_step([batch], want_grad_norm=log_now)
            s.step, s.batch = s.step + 1, s.batch + 1
            self.last_loss = loss
            s.epoch_loss_sum += loss * n
            s.epoch_examples += n
            self._examples_since_log += n
            for cb in self.callbacks:
                cb.on_step_end(self)
            if log_now:
                self._log(grad_norm)
            self.optimizer.zero_grad(set_to_none=True)
            if self._stop_requested or s.step >= self.settings.total_steps:
                break

    def train_step(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                   want_grad_norm: bool = False) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """One optimizer step on `batches` (micro-batches of one step): forward, loss, backward, step.

        Gradients are left in place for callbacks; the caller zeroes them. Reused by lr-find and
        overfit-one-batch so they train exactly as `nnrun train` does.

        Returns:
            (mean loss as a device tensor, examples seen, total gradient norm if asked).
        """
        device = self.c.device
        total = sum(len(y) for _, y in batches)
        loss_sum = None
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = self.loss_fn(self.model(x), y)
            # Weight each micro-batch by its share of the examples: the summed gradient then equals
            # the gradient of one batch of all of them, also when the last one is smaller.
            (loss * (len(y) / total) if len(batches) > 1 else loss).backward()
            part = loss.detach() * len(y)
            loss_sum = part if loss_sum is None else loss_sum + part
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]) \
            if want_grad_norm else None
        self.optimizer.step()
        return loss_sum / total, total, grad_norm

    def _apply_schedule(self, step: int) -> None:
        """Every group's rate is its base rate times the schedule's factor (ratios are kept)."""
        factor = self.c.schedule.factor(step)
        momentum = self.c.schedule.momentum_at(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
            if momentum is not None:
                set_momentum(group, momentum)

    def _log(self, grad_norm: torch.Tensor | None) -> None:
        now = time.perf_counter()
        logs = {"train/loss": float(self.last_loss), **self.current_lrs(),
                "throughput/samples_per_s": self._examples_since_log / max(now - self._t_log, 1e-9)}
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        self._t_log, self._examples_since_log = now, 0
        for cb in self.callbacks:
            cb.on_log(self, logs)

    # -- evaluation and early stopping -------------------------------------------------------
    def _end_epoch(self) -> None:
        s = self.state
        last = s.step >= self.settings.total_steps
        if s.epoch % self.settings.eval_every == 0 or last:
            self._evaluate()

    def _evaluate(self) -> None:
        s = self.state
        train_loss = float(s.epoch_loss_sum / max(s.epoch_examples, 1)) if s.epoch_examples else None
        record: dict[str, Any] = {"epoch": s.epoch if s.batch == 0 else s.epoch + s.batch / self.steps_per_epoch,
                                  "step": s.step, "train_loss": train_loss}
        if self.c.val_batches is not None:
            record.update(evaluate(self.model, self.c.val_batches.epoch(0), self.loss_fn, task=self.c.data.task,
                                   device=self.c.device, prefix="val_"))
        record.update(self.current_lrs())
        s.epoch_loss_sum, s.epoch_examples = None, 0
        s.history.append(record)
        self._update_best(record)
        if self.c.schedule.observe(record.get(self.settings.monitor)):
            record["lr_cut"] = True  # the plateau modifier cut the rate from the next step on
        for cb in self.callbacks:
            cb.on_eval_end(self, record)

    def _update_best(self, record: dict) -> None:
        s, name = self.state, self.settings.monitor
        value = record.get(name)
        if value is None or value != value:
            return
        better = s.best is None or (value > s.best["value"] if self.settings.mode == "max"
                                    else value < s.best["value"])
        if better:
            s.best, s.bad_evals = {"value": value, "epoch": record["epoch"], "step": s.step}, 0
            return
        s.bad_evals += 1
        if self.settings.patience is not None and s.bad_evals >= self.settings.patience:
            s.stop_reason = (f"early stopping: {name} did not improve for {s.bad_evals} evaluations "
                             f"(best {s.best['value']:.4f} at epoch {s.best['epoch']})")

    # -- checkpoint payload --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume exactly, as tensors and primitives (weights_only-safe)."""
        s = self.state
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.c.schedule.state_dict(), "scaler": None, "ema": None,
            "rng": capture_rng(),
            "epoch": s.epoch, "batch": s.batch, "step": s.step,
            "epoch_loss_sum": None if s.epoch_loss_sum is None else s.epoch_loss_sum.detach().cpu(),
            "epoch_examples": s.epoch_examples,
            "history": list(s.history), "best": s.best, "bad_evals": s.bad_evals,
            "metrics": s.history[-1] if s.history else {},
            "monitor": self.settings.monitor, "mode": self.settings.mode,
            "normalization": self.c.normalizer, "data": self.c.data_info(),
            "recipe": self.c.recipe_dict(),
        }

    def load_state_dict(self, payload: dict) -> None:
        """Continue from a checkpoint written by :meth:`state_dict`."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.c.schedule.load_state_dict(payload["schedule"])
        s = self.state
        s.epoch, s.batch, s.step = payload["epoch"], payload["batch"], payload["step"]
        s.history, s.best, s.bad_evals = list(payload["history"]), payload["best"], payload["bad_evals"]
        loss_sum = payload["epoch_loss_sum"]
        s.epoch_loss_sum = None if loss_sum is None else loss_sum.to(self.c.device)
        s.epoch_examples = payload["epoch_examples"]
        restore_rng(payload["rng"])
