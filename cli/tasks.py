"""The command line's reporter for long library work (:mod:`nnrun.progress`): decoding a data cache,
predicting a large split, an ensemble's members, a search's trials. Imports no torch, as it is
installed around every command.

Short work shows nothing, so a quick `nnrun predict` stays quiet:

- on a terminal, one transient rich display for every open task (nested tasks, such as a search
  and its running trial, are rows of the same display: rich allows one live display at a time),
  shown once a task has been open for `bar_after_s` (0.5 s) and cleared when the last task ends;
- otherwise (logs, CI), plain lines per task: none for the first `lines_after_s` (2 s), then one
  line, one every `every_s` (10 s), and a last line when the task ends, if it printed any.

Displays redraw when the work advances (``advance(0)`` is a tick), never from a thread of their
own, so a test drives them with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

BAR_AFTER_S = 0.5
LINES_AFTER_S = 2.0
LINE_EVERY_S = 10.0
REDRAW_S = 0.25


def _duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `2 h 07 min`."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _Task:
    """One open task: its counts, and where the reporter shows it (a row, or plain lines)."""

    def __init__(self, reporter: TaskReporter, description: str, total: int, done: int):
        self.reporter, self.description, self.total = reporter, description, max(int(total), 0)
        self.done = self.done0 = int(done)
        self.t0 = reporter.clock()
        self.next_line = self.t0 + reporter.lines_after_s
        self.row = None      # the rich task id once shown on a terminal
        self.printed = False  # plain lines: whether any line was printed
        self.closed = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.reporter.advanced(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reporter.closed(self)

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate of the work done since the task opened; None before any."""
        rate = (self.done - self.done0) / max(now - self.t0, 1e-9)
        return (self.total - self.done) / rate if rate > 0 and self.total >= self.done else None

    def line(self, now: float) -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = self.eta(now)
        left = f", about {_duration(eta)} left" if eta is not None else ""
        return f"{self.description}: {self.done:,}/{self.total:,}{pct} after {_duration(now - self.t0)}{left}"

    def last_line(self, now: float) -> str:
        took = _duration(now - self.t0)
        if self.done >= self.total:
            return f"{self.description}: done, {self.total:,} in {took}"
        return f"{self.description}: stopped at {self.done:,}/{self.total:,} after {took}"


class TaskReporter:
    """The reporter :func:`task_reporter` installs (see the module docstring).

    Args:
        console: the stderr console.
        terminal: a bar (True) or plain lines (False); default: whether the console is a terminal.
        clock: seconds, monotonic (a test passes a fake one).
    """

    def __init__(self, console, *, terminal: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 bar_after_s: float = BAR_AFTER_S, lines_after_s: float = LINES_AFTER_S,
                 every_s: float = LINE_EVERY_S):
        self.console, self.clock = console, clock
        self.terminal = console.is_terminal if terminal is None else terminal
        self.bar_after_s, self.lines_after_s, self.every_s = bar_after_s, lines_after_s, every_s
        self.open: list[_Task] = []
        self.progress = None  # the one rich Progress every open task shares, while shown
        self._next_draw = 0.0

    def __call__(self, description: str, total: int, done: int = 0) -> _Task:
        task = _Task(self, description, total, done)
        self.open.append(task)
        return task

    def notice(self, text: str) -> None:
        """:func:`nnrun.progress.notice`: printed at once (above the bar when one is shown)."""
        self._print(text)

    # -- plain lines ------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def advanced(self, task: _Task) -> None:
        if self.terminal:
            self._draw(force=False)
            return
        now = self.clock()
        if now >= task.next_line:
            self._print(task.line(now))
            task.printed, task.next_line = True, now + self.every_s

    def closed(self, task: _Task) -> None:
        if task in self.open:
            self.open.remove(task)
        if not self.terminal:
            if task.printed:
                self._print(task.last_line(self.clock()))
            return
        if task.row is not None and self.progress is not None:
            self.progress.remove_task(task.row)
        if self.progress is not None and not self.open:
            self.progress.stop()
            self.progress = None
        elif self.progress is not None:
            self._draw(force=True)

    # -- the bar ----------------------------------------------------------------------------

    def _start(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                            auto_refresh=False, transient=True, get_time=self.clock)
        progress.start()
        return progress

    def _draw(self, *, force: bool) -> None:
        """Show the tasks open for `bar_after_s`, update the shown ones, redraw (throttled)."""
        now = self.clock()
        if not force and now < self._next_draw:
            return
        self._next_draw = now + REDRAW_S
        for task in self.open:
            if task.row is None and now - task.t0 >= self.bar_after_s:
                if self.progress is None:
                    self.progress = self._start()
                task.row = self.progress.add_task(task.description, total=task.total or None, completed=task.done)
            elif task.row is not None:
                self.progress.update(task.row, completed=task.done)
        if self.progress is not None:
            self.progress.refresh()


def task_reporter(console, *, show: bool = True):
    """The CLI's :mod:`nnrun.progress` reporter: a transient bar on a terminal, plain lines otherwise,
    nothing for short work; nothing at all when not `show` (the processes other than rank 0 under
    torchrun)."""
    from nnrun.progress import Silent

    if not show:
        return lambda description, total, done=0: Silent()
    return TaskReporter(console)
