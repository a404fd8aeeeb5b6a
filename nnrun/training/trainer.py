"""The training loop: forward, loss, backward, step, schedule; everything else is a callback.

The loop never prints and never writes files. It avoids host syncs on the hot path: the loss
stays on the device and is read only every `log.every_n_steps` steps (and by a throttled
progress display), which is what keeps nnrun within a few percent of a hand-written loop.

Its position is explicit (`epoch`, `batch` within the epoch, optimizer `step`), the data order
of an epoch is a pure function of (seed, epoch), and the RNG states travel in every checkpoint,
so a run stopped anywhere resumes bit-identically on CPU.

What callbacks may read is listed in :class:`nnrun.training.callbacks.Callback`; they change the
run only through :meth:`Trainer.request_stop`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from nnrun.components.freeze import apply_freeze, set_train_mode
from nnrun.components.metrics import evaluate
from nnrun.components.optim import get_momentum, group_names, set_momentum
from nnrun.files import crash_point
from nnrun.training.averaging import WeightAverage
from nnrun.training.callbacks import Callback
from nnrun.training.guard import NonFinitePolicy
from nnrun.training.series import StepSeries
from nnrun.training.sharing import sharing_for
from nnrun.training.state import LoopSettings, TrainState, apply_payload, make_payload
from nnrun.training.stepper import StepOutput, make_stepper

if TYPE_CHECKING:
    from nnrun.build import Components


class Trainer:
    """Runs the optimization of built components and reports through callbacks."""

    def __init__(self, components: Components, settings: LoopSettings, callbacks: Sequence[Callback] = ()):
        recipe = components.recipe
        self.components = components
        self.model, self.optimizer, self.loss_fn = components.model, components.optimizer, components.loss_fn
        self.schedule = components.schedule
        self.settings = settings
        self.callbacks = list(callbacks)
        self.state = TrainState()
        self.batch_size = recipe.data.batch_size
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.group_names = group_names(self.optimizer)
        self.stepper = make_stepper(recipe, self.model, self.loss_fn, self.optimizer, components.device)
        self.policy = NonFinitePolicy(recipe.train, self.stepper.guard)
        self.accumulate = recipe.clip.accumulate
        self.micro_per_epoch = len(components.train_batches)
        # Per-step values (loss, norms, flags) go to a device buffer read once per log window.
        # The default CPU loop without clipping skips it: its guard counts on the host as it goes.
        self.per_step = (recipe.clip.policy != "none" or recipe.train.precision == "fp16"
                         or components.device.type != "cpu")
        self.series = StepSeries(settings.log_every, components.device)
        ens = recipe.ensemble
        self.averager = WeightAverage(self.model, ens.strategy, decay=ens.decay, warmup=ens.ema_warmup) \
            if ens.strategy in ("ema", "swa") else None
        self.swa_start = (ens.swa_start if ens.swa_start is not None else 0.75 * recipe.train.epochs) \
            if ens.strategy == "swa" else None
        self.swa_lr = ens.swa_lr
        # what callbacks read (see Callback)
        self.last_loss: torch.Tensor | None = None
        self.step_series: list[tuple[int, dict[str, float]]] = []
        self.layer_norms: dict[str, torch.Tensor] = {}
        # internals
        self._positions: list[tuple[int, int, int]] = []   # (step, epoch, batch) since the last poll
        self._log_norm: torch.Tensor | None = None
        self._applied: tuple | None = None
        self._rewound = False
        self._stop_requested: str | None = None   # the stop the loop acts on (agreed by all processes)
        self._stop_local: str | None = None       # a stop asked in this process, not yet agreed on
        self._t_log = time.perf_counter()
        self._examples_since_log = self._last_examples = 0
        self.sharing = sharing_for(components.world, components.device)
        self.checkpoint_every = recipe.train.checkpoint_every

    # -- control ---------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Stop at the next step boundary (signal handlers and callbacks call this). With several
        processes the stop takes effect where all of them agree on it (the next log boundary or
        evaluation), so every process stops at the same step."""
        self._stop_local = self._stop_local or reason
        if not self.sharing.active:
            self._stop_requested = self._stop_local

    def _agree_stop(self) -> None:
        if self.sharing.active and self._stop_requested is None and self.sharing.agree(self._stop_local is not None):
            self._stop_requested = self._stop_local or "interrupted"

    def event(self, message: str) -> None:
        """A warning worth showing: kept in the state and passed to every callback."""
        self.state.events.append(message)
        for cb in self.callbacks:
            cb.on_event(self, message)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (micro-batches grouped by clip.accumulate)."""
        return math.ceil(self.micro_per_epoch / self.accumulate)

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
        self.policy.remember(self)
        reason = "finished"
        while s.step < self.settings.total_steps and not self._stop_requested:  # a stop during an evaluation
            self._run_epoch()
            if self._stop_requested or self._rewound:
                continue
            if s.batch >= self.micro_per_epoch:
                s.epoch, s.batch = s.epoch + 1, 0
                if self.swa_start is not None and s.epoch > self.swa_start:
                    self.averager.update(self.model)  # SWA: one sample per epoch from swa_start on
                self._end_epoch()
            elif s.step >= self.settings.total_steps:  # a fractional last epoch
                self._evaluate()
            if s.stop_reason:
                reason = s.stop_reason
                break
        if reason == "finished":
            if not self._stop_requested:
                self._poll_guard()
            reason = self._stop_requested or reason
        s.stop_reason = reason
        self.sharing.sync_buffers(self._averaged_models())
        self.sharing.gather_rng()
        for cb in self.callbacks:
            cb.on_fit_end(self, reason)
        return s

    def _averaged_models(self) -> list[torch.nn.Module]:
        """The models whose buffers must agree across processes before an evaluation or a save."""
        return [self.model] + ([self.averager.model] if self.averager is not None else [])

    def begin_epoch(self, epoch: int) -> None:
        """Freeze what `model.freeze`/`unfreeze` say for `epoch` and put the model in train mode
        (frozen BatchNorm layers stay in eval with `freeze_bn`). lr-find and overfit use it too."""
        model_cfg = self.components.recipe.model
        frozen = apply_freeze(self.model, model_cfg, epoch) if model_cfg.freeze else set()
        set_train_mode(self.model, model_cfg)
        self.sharing.train_module(self.model, frozenset(frozen), self.stepper)

    def _run_epoch(self) -> None:
        s = self.state
        self._rewound = False
        self.begin_epoch(s.epoch)
        if s.epoch_loss_sum is None:
            s.epoch_loss_sum, s.epoch_examples = torch.zeros((), device=self.components.device), 0
        pending: list = []
        for batch in self.components.train_batches.epoch(s.epoch, start=s.batch):
            pending.append(batch)
            if len(pending) < self.accumulate and s.batch + len(pending) < self.micro_per_epoch:
                continue
            self._step(pending)
            pending = []
            if self._stop_requested or s.step >= self.settings.total_steps or self._rewound:
                break

    def _step(self, micro_batches: list) -> None:
        """One optimizer step on the micro-batches, then the step's bookkeeping and callbacks."""
        s = self.state
        self._apply_schedule(s.step)
        self._positions.append((s.step, s.epoch, s.batch))
        log_now = (s.step + 1) % self.settings.log_every == 0
        sizes = self.sharing.global_sizes(self.components.train_batches, s.batch, len(micro_batches))
        out = self.stepper.step(micro_batches, s.step, want_norm=log_now, global_sizes=sizes)
        if self.per_step:
            self.series.record(s.step, out)
        if log_now:
            self._log_norm = out.norm_before
        if self.averager is not None and self.averager.kind == "ema":
            self.averager.update(self.model)
        s.step, s.batch = s.step + 1, s.batch + len(micro_batches)
        self._account(out)
        for cb in self.callbacks:
            cb.on_step_end(self)
        if s.step % self.settings.log_every == 0:
            self._log()
            self._agree_stop()
        self.optimizer.zero_grad(set_to_none=True)
        if self.checkpoint_every and s.step % self.checkpoint_every == 0 and not self._rewound:
            self.sharing.sync_buffers(self._averaged_models())
            self.sharing.gather_rng()
            for cb in self.callbacks:
                cb.on_checkpoint(self)
        crash_point("step")

    def _account(self, out: StepOutput) -> None:
        s = self.state
        self.last_loss, self._last_examples = out.loss, out.examples
        s.epoch_loss_sum.add_(out.loss, alpha=out.examples)
        s.epoch_examples += out.examples
        self._examples_since_log += out.examples

    def train_step(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                   want_grad_norm: bool = True) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """One optimizer step on `batches` (micro-batches of one step), exactly as `nnrun train`
        takes it: autocast, weighted accumulation, unscaling, clipping, the non-finite guard.

        Gradients are left in place; the caller zeroes them. Reused by lr-find and overfit-one-batch.

        Returns:
            (mean loss as a device tensor, examples seen, gradient norm before clipping).
        """
        out = self.stepper.step(batches, self.state.step, want_norm=want_grad_norm)
        return out.loss, out.examples, out.norm_before

    def publish_step(self, step: int, loss: torch.Tensor, values: dict[str, float]) -> None:
        """For a caller running its own loop over :meth:`train_step` (overfit-one-batch): make
        `step` the current step and show the callbacks its values (`on_step_end`, then `on_log`)."""
        self.state.step, self.last_loss = step, loss
        self.step_series = [(step, dict(values))]
        for cb in self.callbacks:
            cb.on_step_end(self)
            cb.on_log(self, {**values, **self.current_lrs()})

    def _apply_schedule(self, step: int) -> None:
        """Every group's rate is its base rate times the schedule's factor (ratios are kept)."""
        sched = self.schedule
        if sched.is_constant and self.swa_start is None:
            key = (sched.plateau.scale if sched.plateau else 1.0, self.state.lr_scale)
            if key == self._applied:
                return  # nothing moved since the last step: skip the per-step Python work
            self._applied = key
        factor = sched.factor(step) * self.state.lr_scale
        if self.swa_lr and self.swa_start is not None and self.state.epoch >= self.swa_start:
            factor = self.swa_lr / self.components.recipe.optimizer.lr * self.state.lr_scale
        momentum = sched.momentum_at(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
            if momentum is not None:
                set_momentum(group, momentum)

    def _window(self) -> list[tuple[int, dict[str, float]]]:
        """(step, per-step values) of the steps since the last poll (empty without per-step values)."""
        rows = self.series.read(self.state.step)
        return rows if self.per_step else []

    def _log(self) -> None:
        """Once per log window: one host sync for the window's values, then the guard."""
        now = time.perf_counter()
        rows = self._window()
        self.step_series = [(st + 1, values) for st, values in rows]
        self.layer_norms, self.stepper.layer_norms = self.stepper.layer_norms, {}
        loss, examples = self.sharing.shared_mean(self.last_loss, self._last_examples, self._examples_since_log)
        logs = {"train/loss": loss, **self.current_lrs(),
                "throughput/samples_per_s": examples / max(now - self._t_log, 1e-9)}
        if self._log_norm is not None:
            logs["grad_norm"] = float(self._log_norm)
        if rows:
            logs["clip/fraction"] = sum(v["clip/clipped"] for _, v in rows) / len(rows)
        self._t_log, self._examples_since_log = now, 0
        for cb in self.callbacks:
            cb.on_log(self, logs)
        self._poll_guard(rows, log_norm=logs.get("grad_norm"))

    def _poll_guard(self, rows: list | None = None, log_norm: float | None = None) -> None:
        """Act on non-finite steps seen since the last poll: stop, stop after K skips, or roll back.
        (Outside a log window, the rows read here become `step_series`, which the evaluation's and
        the end's callbacks see, so no step's values go missing.)"""
        if rows is None:
            rows = self._window()
            if rows:
                self.step_series = [(st + 1, values) for st, values in rows]
        positions, self._positions = self._positions, []
        if not positions:
            return
        flags = [(st, v["nonfinite/skipped"], v["grad_norm"]) for st, v in rows]
        if log_norm is not None and not rows:
            flags.append((self.state.step - 1, 0.0, log_norm))
        report = self._shared_report(self.stepper.guard.poll(flags))
        if report.explosion:
            self.event(f"step {self.state.step}: {report.explosion}")
        self.policy.act(self, report, positions)

    def _shared_report(self, report):
        """Several processes: act on the largest counts any process saw (under fp16 the guard
        counts each process's own loss), so the policy decides the same everywhere."""
        if not self.sharing.active:
            return report
        bad, longest, current = self.sharing.all_reduce_max([report.bad_steps, report.max_consecutive,
                                                              report.consecutive])
        return dataclasses.replace(report, bad_steps=int(bad), max_consecutive=int(longest), consecutive=int(current))

    def rewind(self, payload: dict, *, rollbacks: int, lr_scale: float) -> None:
        """Go back to an earlier state (a rollback) with a new rollback count and rate scale."""
        self.load_state_dict(payload)
        self.state.rollbacks, self.state.lr_scale = rollbacks, lr_scale
        self._rewound = True
        self.series.skip_to(self.state.step)

    # -- evaluation and early stopping -------------------------------------------------------
    def _end_epoch(self) -> None:
        s = self.state
        last = s.step >= self.settings.total_steps
        if s.epoch % self.settings.eval_every == 0 or last:
            self._evaluate()

    def _evaluate(self) -> None:
        self._poll_guard()  # an evaluation is a sync point anyway: act on non-finite steps first
        self._agree_stop()
        if self._stop_requested or self._rewound:
            return
        s = self.state
        self.sharing.sync_buffers(self._averaged_models())
        train_loss = self._epoch_train_loss()
        record: dict[str, Any] = {"epoch": s.epoch if s.batch == 0 else s.epoch + s.batch / self.steps_per_epoch,
                                  "step": s.step, "train_loss": train_loss}
        record.update(self.evaluate_now())
        record.update(self._evaluate_average())
        record.update(self.current_lrs())
        s.epoch_loss_sum, s.epoch_examples = None, 0
        self.sharing.gather_rng()  # the states after the evaluation's own draws (SWA's BN pass)
        s.history.append(record)
        self._update_best(record)
        if self.schedule.observe(record.get(self.settings.monitor)):
            record["lr_cut"] = True  # the plateau modifier cut the rate from the next step on
        for cb in self.callbacks:
            cb.on_eval_end(self, record)
        self.policy.remember(self)

    def _epoch_train_loss(self) -> float | None:
        """The mean training loss of the examples seen since the last evaluation (of all processes)."""
        s = self.state
        if not self.sharing.active:
            return float(s.epoch_loss_sum / max(s.epoch_examples, 1)) if s.epoch_examples else None
        count = torch.tensor(float(s.epoch_examples), dtype=torch.float64, device=s.epoch_loss_sum.device)
        total = self.sharing.all_reduce_sum(torch.stack([s.epoch_loss_sum.double(), count]))
        return float(total[0] / total[1]) if total[1] > 0 else None

    def evaluate_now(self, model: torch.nn.Module | None = None, prefix: str = "val_") -> dict:
        """Validation metrics of the model (or another, e.g. the averaged one) right now."""
        c = self.components
        if c.val_batches is None:
            return {}
        return evaluate(model or self.model, c.val_batches.epoch(0), self.loss_fn, task=c.data.task,
                        device=c.device, prefix=prefix, all_reduce_sum=self.sharing.reducer())

    def _evaluate_average(self) -> dict:
        """EMA/SWA weights evaluated beside the raw ones (`ema_val_acc`, `swa_val_loss`, ...); SWA's
        BatchNorm statistics are recomputed on the training data first."""
        avg = self.averager
        if avg is None or avg.updates == 0:
            return {}
        if avg.kind == "swa":
            avg.recompute_bn(self.components.train_batches.epoch(self.state.epoch), self.components.device)
            self.sharing.sync_buffers([avg.model])
        return self.evaluate_now(avg.model, prefix=f"{avg.kind}_val_")

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
        return make_payload(self)

    def load_state_dict(self, payload: dict) -> list[str]:
        """Continue from a checkpoint written by :meth:`state_dict`; returns notes for a person."""
        notes = apply_payload(self, payload)
        self._applied = None  # the optimizer's groups came from the file: write the rates again
        return notes
