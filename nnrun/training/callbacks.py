"""The callback contract, and the callbacks that turn the loop's events into files.

`metrics.jsonl`, checkpoints and ensemble members are written here; TensorBoard is in
:mod:`nnrun.training.loggers`. File writers are attached only on the main process (see
:func:`nnrun.runtime.is_main_process`), so the loop itself stays free of file I/O.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import torch

from nnrun.checkpoint import CheckpointSaver, save_atomic, weights_finite
from nnrun.errors import writing
from nnrun.files import crash_point, dumps, write_text_atomic


class Trainer(Protocol):
    """What a callback may read of the trainer (:class:`nnrun.training.trainer.Trainer`) and call on
    it; a callback never writes the trainer's attributes and changes the run only by `request_stop`."""

    state: Any                 # TrainState: epoch, batch, step, history, best, events
    settings: Any              # LoopSettings: total_steps, log_every, eval_every, monitor, mode
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any              # the learning-rate schedule (cycle_end_steps() for snapshots)
    batch_size: int
    last_loss: torch.Tensor | None                       # the last step's loss, on the device
    step_series: list[tuple[int, dict[str, float]]]     # the last log window's per-step values
    layer_norms: dict[str, torch.Tensor]                 # per-layer gradient norms of the window

    def request_stop(self, reason: str) -> None: ...

    def evaluate_now(self, model: torch.nn.Module | None = None, prefix: str = "val_") -> dict: ...

    def current_lrs(self) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...


class Callback:
    """Hooks the loop calls, each with the :class:`Trainer` view of the loop."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None:
        """After the optimizer step, gradients still present; `trainer.last_loss` is on the device."""

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """Every `log.every_n_steps` steps, with host values (`train/loss`, `grad_norm`, `lr/...`)."""

    def on_eval_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After each evaluation; `record` is the metrics.jsonl line."""

    def on_event(self, trainer: Trainer, message: str) -> None:
        """A warning worth showing (gradient-norm spike, skipped non-finite steps, rollback)."""

    def on_checkpoint(self, trainer: Trainer) -> None:
        """Every `train.checkpoint_every` optimizer steps (0: never): a point to save the state."""

    def on_fit_end(self, trainer: Trainer, reason: str) -> None: ...

    def close(self) -> None:
        """Release files and threads, whether or not the fit ended normally (called once after it)."""


class MetricsFile(Callback):
    """One strict-JSON object per evaluation in `metrics.jsonl` (non-finite values as `null`).

    On start (a resume included) the file is rewritten from the history held in the state, so
    it always agrees with the checkpoint the run continues from.
    """

    HINT = "free space or choose a writable folder with --run-dir"

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_fit_start(self, trainer: Trainer) -> None:
        write_text_atomic(self.path, "".join(dumps(r) + "\n" for r in trainer.state.history), what=str(self.path),
                          hint=self.HINT)

    def on_eval_end(self, trainer: Trainer, record: dict) -> None:
        with writing(str(self.path), hint=self.HINT), self.path.open("a") as f:
            f.write(dumps(record) + "\n")


class Checkpointing(Callback):
    """`last.pt` after every evaluation and at the end (stop or interrupt, mid-epoch included),
    plus the best `save_top_k` by the monitor, named `epoch012-val_acc=0.9812.pt`.

    On a resume the folder is first reconciled with its index (:meth:`CheckpointSaver.reconcile`).
    """

    def __init__(self, folder: Path, *, monitor: str, mode: str, top_k: int, resumed_from: Path | None = None):
        self.saver = CheckpointSaver(folder, monitor=monitor, mode=mode, top_k=top_k)
        self.saver.last_path = resumed_from
        self.last_path: Path | None = None
        self.diagnostic_path: Path | None = None
        self._saved_step = -1

    @property
    def last_complete(self) -> Path | None:
        """The newest checkpoint with finite weights that is complete on disk (written or resumed from)."""
        return self.saver.last_path

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.state.step > 0:
            self.saver.reconcile(upto_step=trainer.state.step)

    def on_eval_end(self, trainer: Trainer, record: dict) -> None:
        payload = trainer.state_dict()
        finite = weights_finite(payload)  # once for both files
        epoch = math.ceil(record["epoch"])  # a fractional last epoch counts as the epoch it ends in
        self.saver.save_ranked(payload, epoch=epoch, step=trainer.state.step,
                               value=record.get(self.saver.monitor), finite=finite)
        crash_point("checkpoint:before-last")
        self.last_path = self.saver.save_last(payload, finite=finite)
        self._saved_step = trainer.state.step

    def on_checkpoint(self, trainer: Trainer) -> None:
        if trainer.state.step != self._saved_step:
            self.last_path = self.saver.save_last(trainer.state_dict())
            self._saved_step = trainer.state.step

    def on_fit_end(self, trainer: Trainer, reason: str) -> None:
        if reason.startswith("non-finite"):
            # A diagnostic copy of the state the guard stopped at; last.pt stays the last good one.
            self.diagnostic_path = self.saver.folder / f"nonfinite-step{trainer.state.step}.pt"
            save_atomic({**trainer.state_dict(), "reason": reason}, self.diagnostic_path)
        elif trainer.state.step != self._saved_step:
            self.last_path = self.saver.save_last(trainer.state_dict())
            self._saved_step = trainer.state.step

    @property
    def best_path(self) -> Path | None:
        best = self.saver.best()
        return self.saver.folder / best["file"] if best else None


class EnsembleMembers(Callback):
    """Members of a one-run ensemble in `checkpoints/members/` (not in index.json, so the
    top-k rotation never deletes them; `nnrun ensemble RUN_DIR` picks them up).

    - `checkpoints`: the state after every `every`-th epoch's evaluation.
    - `snapshots`: the state at the end of every learning-rate cycle (SGDR or cyclic), where the
      rate is lowest: the "train one, get M for free" snapshot ensemble (Huang et al. 2017). Each
      snapshot is evaluated on the validation split so it carries its own metrics.
    """

    def __init__(self, folder: Path, *, strategy: str, every: int = 1):
        self.folder, self.strategy, self.every = Path(folder), strategy, every
        self.cycle_ends: set[int] = set()
        self.saved: list[Path] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.strategy == "snapshots":
            self.cycle_ends = set(trainer.schedule.cycle_end_steps())

    def _save(self, trainer: Trainer, name: str, metrics: dict) -> None:
        payload = {**trainer.state_dict(), "metrics": metrics, "member": name}
        if weights_finite(payload):
            save_atomic(payload, self.folder / f"{name}.pt")
            self.saved.append(self.folder / f"{name}.pt")

    def on_step_end(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if step in self.cycle_ends:
            cycle = sorted(self.cycle_ends).index(step) + 1
            metrics = trainer.evaluate_now()  # eval mode inside, each module's mode restored after
            self._save(trainer, f"snapshot-cycle{cycle:02d}-step{step:06d}", metrics)

    def on_eval_end(self, trainer: Trainer, record: dict) -> None:
        epoch = record["epoch"]
        if self.strategy == "checkpoints" and epoch == int(epoch) and int(epoch) % self.every == 0:
            self._save(trainer, f"member-epoch{int(epoch):03d}", record)
