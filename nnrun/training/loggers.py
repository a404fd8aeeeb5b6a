"""TensorBoard logging: the loop's callback, the range test's curve and the search's hparams.

The only module that imports tensorboard (lazily: it costs ~0.1 s, see :func:`preload`).
"""

from __future__ import annotations

import importlib
import json
import threading
from pathlib import Path
from typing import Any

from nnrun.errors import writing
from nnrun.training.callbacks import Callback, Trainer

MODULE = "torch.utils.tensorboard"
HINT = "free space or choose a writable folder (log.tensorboard: false turns TensorBoard off)"


def preload() -> None:
    """Import TensorBoard in a background thread (while the data loads, not when training starts)."""
    threading.Thread(target=importlib.import_module, args=(MODULE,), daemon=True).start()


class TensorBoard(Callback):
    """Scalars every `log.every_n_steps` steps and per evaluation; histograms when asked.

    Scalars: `train/loss`, `grad_norm` and `grad_norm/clipped` (before and after clipping),
    `clip/clipped` and `nonfinite/skipped` for every step; `clip/fraction`, `lr/<group>`,
    `momentum/<group>`, `throughput/samples_per_s` per log window; `val/loss`, `val/acc` (or
    `val/mae`, `val/rmse`) per evaluation; `grad_norm/layer/<param>` every
    `clip.layer_norms_every` steps. A resumed run purges events past its checkpoint's
    step, so curves do not double back.
    """

    def __init__(self, folder: Path, *, histograms_every: int = 0):
        self.folder, self.histograms_every = Path(folder), histograms_every
        self.writer = None
        self._hook = None
        self._series_upto = 0  # per-step values are written up to this step

    def _writing(self):
        """A failed write (full disk, read-only, `tb` blocked by a file) becomes one OutputError; the
        writer thread's own copy of the error is not printed (:func:`_quiet_writer_thread`)."""
        return writing(f"TensorBoard events in {self.folder}", hint=HINT)

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        step = trainer.state.step
        self._hook, threading.excepthook = threading.excepthook, _quiet_writer_thread(threading.excepthook)
        with self._writing():
            self.writer = SummaryWriter(str(self.folder), purge_step=step if step > 0 else None)

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        with self._writing():
            self._log(trainer, logs)

    def _log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        step = trainer.state.step
        per_step = {name for _, values in trainer.step_series for name in values}
        for name, value in logs.items():
            if name not in per_step:
                self.writer.add_scalar(name, value, step)
        self._series(trainer)
        for name, norm in trainer.layer_norms.items():
            self.writer.add_scalar(f"grad_norm/layer/{name}", float(norm), step)

    def on_event(self, trainer: Trainer, message: str) -> None:
        with self._writing():
            self.writer.add_text("events", message, trainer.state.step)

    def on_step_end(self, trainer: Trainer) -> None:
        if self.histograms_every and trainer.state.step % self.histograms_every == 0:
            with self._writing():
                self._histograms(trainer)

    def _histograms(self, trainer: Trainer) -> None:
        for name, p in trainer.model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", p.detach().cpu(), trainer.state.step)
            if p.grad is not None:
                self.writer.add_histogram(f"grads/{name}", p.grad.detach().cpu(), trainer.state.step)

    def on_eval_end(self, trainer: Trainer, record: dict) -> None:
        with self._writing():
            self._record(trainer, record)

    def _series(self, trainer: Trainer) -> None:
        """With a clip policy (or fp16, or on a GPU): every step's loss, gradient norm before and
        after clipping and its flags, read from the device once per window (or at an evaluation)."""
        for at, values in trainer.step_series:
            if at <= self._series_upto:
                continue
            for name, value in values.items():
                if value == value:  # NaN: not computed that step
                    self.writer.add_scalar(name, value, at)
            self._series_upto = at

    def _record(self, trainer: Trainer, record: dict) -> None:
        self._series(trainer)
        for key, value in record.items():
            if value is None:
                continue
            if key.startswith("val_"):
                self.writer.add_scalar("val/" + key[4:], value, trainer.state.step)
            elif key.startswith(("ema_val_", "swa_val_")):  # the averaged weights beside the raw ones
                kind, _, metric = key.split("_", 2)
                self.writer.add_scalar(f"{kind}/val/{metric}", value, trainer.state.step)
        if record.get("train_loss") is not None:
            self.writer.add_scalar("train/epoch_loss", record["train_loss"], trainer.state.step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer, reason: str) -> None:
        try:
            if self.writer is not None:
                with self._writing():
                    self._series(trainer)
                    self.writer.close()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the writer thread and restore the excepthook, also after a failed run (errors ignored:
        the run's own error is the one to report)."""
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass
        if self._hook is not None:
            threading.excepthook, self._hook = self._hook, None


def _quiet_writer_thread(previous):
    """An excepthook that leaves out TensorBoard's writer thread: its error is raised again in the
    main thread at the next write, where it becomes one message instead of a second traceback."""
    def hook(args):
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)
    return hook


def write_curve(folder: Path, scalars: dict[str, list[float]], single: dict[str, float] | None = None) -> None:
    """Scalar series indexed by position (the range test: loss, smoothed loss, rate per point),
    plus single values at step 0."""
    from torch.utils.tensorboard import SummaryWriter

    with writing(f"TensorBoard events in {folder}", hint=HINT):
        _write_curve(SummaryWriter(str(folder)), scalars, single or {})


def _write_curve(writer, scalars: dict[str, list[float]], single: dict[str, float]) -> None:
    try:
        for name, values in scalars.items():
            for i, v in enumerate(values):
                writer.add_scalar(name, v, i)
        for name, v in single.items():
            writer.add_scalar(name, v, 0)
    finally:
        writer.close()


def write_hparams(folder: Path, run_name: str, values: dict[str, Any], metrics: dict[str, float]) -> None:
    """One TensorBoard hparams entry per search trial, so TensorBoard's HPARAMS tab compares them all."""
    from torch.utils.tensorboard import SummaryWriter

    hp = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in values.items()}
    with writing(f"TensorBoard events in {folder}", hint=HINT):
        writer = SummaryWriter(str(folder))
        try:
            writer.add_hparams(hp, metrics, run_name=run_name)
        finally:
            writer.close()
