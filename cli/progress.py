"""Progress display, injected into the loop as a callback; redraws are throttled.

A rich bar (loss, lr, samples/s, ETA) on a terminal; plain lines otherwise. Reading the loss
forces a host sync, so it happens only when the display redraws (a few times a second), never
per step.
"""

from __future__ import annotations

import time

from nnrun.training.callbacks import Callback


def _metrics(record: dict) -> str:
    """`train_loss 0.1  val_loss 0.2  val_acc 0.97  ema_val_acc 0.98` of an evaluation record."""
    return "  ".join(f"{k} {_fmt(v)}" for k, v in record.items() if "val_" in k or k.startswith("train_"))


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


class _Throttle(Callback):
    def __init__(self, every_s: float):
        self.every_s, self._next, self._t0, self._s0 = every_s, 0.0, 0.0, 0

    def on_fit_start(self, trainer) -> None:
        self._t0, self._s0 = time.perf_counter(), trainer.state.step

    def rate(self, trainer) -> float:
        steps = trainer.state.step - self._s0
        return steps / max(time.perf_counter() - self._t0, 1e-9)

    def due(self) -> bool:
        now = time.perf_counter()
        if now < self._next:
            return False
        self._next = now + self.every_s
        return True


class RichProgress(_Throttle):
    """A rich progress bar on stderr."""

    def __init__(self, console, refresh_per_second: float = 4.0):
        super().__init__(1.0 / refresh_per_second)
        self.console, self.progress, self.task = console, None, None

    def on_fit_start(self, trainer) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        super().on_fit_start(trainer)
        self.progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  "
                                            "{task.fields[sps]} samples/s"),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, auto_refresh=False, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=trainer.settings.total_steps,
                                           completed=trainer.state.step, epoch=trainer.state.epoch + 1,
                                           loss="-", lr="-", sps="-")

    def _draw(self, trainer) -> None:
        s = trainer.state
        loss = float(trainer.last_loss) if trainer.last_loss is not None else None
        lr = trainer.optimizer.param_groups[0]["lr"]
        sps = self.rate(trainer) * trainer.batch_size
        self.progress.update(self.task, completed=s.step, epoch=s.epoch + 1, loss=_fmt(loss),
                             lr=f"{lr:.3g}", sps=f"{sps:,.0f}")
        self.progress.refresh()

    def on_step_end(self, trainer) -> None:
        if self.due():
            self._draw(trainer)

    def on_eval_end(self, trainer, record) -> None:
        self.progress.console.print(f"epoch {_fmt(record['epoch'])}  {_metrics(record)}")

    def on_event(self, trainer, message) -> None:
        from rich.markup import escape

        self.progress.console.print(f"[yellow]warning[/]: {escape(message)}")

    def on_fit_end(self, trainer, reason) -> None:
        self._draw(trainer)
        self.progress.stop()


class PlainProgress(_Throttle):
    """Plain log lines for logs and CI: one per evaluation, and a step line every 10 s."""

    def __init__(self, console, every_s: float = 10.0):
        super().__init__(every_s)
        self.console = console

    def on_fit_start(self, trainer) -> None:
        super().on_fit_start(trainer)
        self.due()  # no step line right at the start

    def on_step_end(self, trainer) -> None:
        if self.due():
            s = trainer.state
            self.console.print(f"step {s.step}/{trainer.settings.total_steps}  epoch {s.epoch + 1}  "
                               f"loss {float(trainer.last_loss):.4g}  "
                               f"{self.rate(trainer) * trainer.batch_size:,.0f} samples/s")

    def on_eval_end(self, trainer, record) -> None:
        self.console.print(f"epoch {_fmt(record['epoch'])}  step {record['step']}  {_metrics(record)}")

    def on_event(self, trainer, message) -> None:
        from rich.markup import escape

        self.console.print(f"warning: {escape(message)}")


def make_progress(mode: str, console, refresh_per_second: float):
    """The display for `log.progress`: auto picks the bar on a terminal, plain lines otherwise."""
    if mode == "none":
        return None
    if mode == "bar" or (mode == "auto" and console.is_terminal):
        return RichProgress(console, refresh_per_second)
    return PlainProgress(console)
