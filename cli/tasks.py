"""The command line's reporter for long library work (:mod:`nnrun.progress`): decoding a data cache
and the like. Imports no torch, as it is installed around every command."""

from __future__ import annotations

import time


class _Every:
    """True at most once every `seconds` (the first call included)."""

    def __init__(self, seconds: float):
        self.seconds, self._next = seconds, 0.0

    def due(self) -> bool:
        now = time.perf_counter()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


class _BarTask:
    """A rich bar for one unit of long library work (see :mod:`nnrun.progress`)."""

    def __init__(self, console, description: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=console, auto_refresh=False, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(description, total=total)
        self.throttle = _Every(0.25)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)
        if self.throttle.due():
            self.progress.refresh()

    def close(self) -> None:
        self.progress.stop()


class _LineTask:
    """Plain lines for one unit of long library work: when it starts, every 10 s, when it ends."""

    def __init__(self, console, description: str, total: int, every_s: float = 10.0):
        self.console, self.description, self.total, self.done = console, description, total, 0
        self.t0, self.throttle = time.perf_counter(), _Every(every_s)
        self.throttle.due()
        console.print(f"{description}: {total:,} to do")

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.throttle.due():
            self.console.print(f"{self.description}: {self.done:,}/{self.total:,}")

    def close(self) -> None:
        state = "done" if self.done >= self.total else f"stopped at {self.done:,}/{self.total:,}"
        self.console.print(f"{self.description}: {state} in {time.perf_counter() - self.t0:.1f} s")


def task_reporter(console, *, show: bool = True):
    """The CLI's :mod:`nnrun.progress` reporter: a transient bar on a terminal, plain lines otherwise;
    nothing when not `show` (the processes other than rank 0 under torchrun)."""
    from nnrun.progress import Silent

    def report(description: str, total: int):
        if not show:
            return Silent()
        cls = _BarTask if console.is_terminal else _LineTask
        return cls(console, description, total)

    return report
