"""How a search worker stops on SIGINT/SIGTERM: at a step boundary, never in the middle of a
storage write, with its running trial recorded as interrupted.

A signal only *asks* for a stop (:class:`StopFlag`): the running trial's trainer stops at its next
step (it saves `last.pt`, as `nnrun train` does), the objective then records the trial as
interrupted and raises :class:`TrialInterrupted`, and the worker loop checks the flag wherever it
would start something new. No exception is ever raised inside Optuna or SQLAlchemy code, so the
study stays consistent. A spawned worker ignores SIGINT (Ctrl-C reaches the whole process group;
the parent stops its workers) and stops when its parent dies.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator

from nnrun.signals import Stopped
from nnrun.tools.search.recovery import INTERRUPTED  # the stop reason and the trial's note


class TrialInterrupted(KeyboardInterrupt):
    """A signal stopped the worker (a KeyboardInterrupt, so Optuna fails the running trial and
    re-raises it); `signum` is the first signal."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = int(signum)


class StopFlag:
    """A stop asked for by a signal, and the trainer it stops (a fit context of
    :func:`nnrun.training.session.train_recipe`)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._trainer = None
        self._caught: dict = {}

    def request(self, signum: int) -> None:
        """Ask for a stop: the running trial (if any) stops at its next step."""
        if self.signum is None:
            self.signum = int(signum)
        self._caught["signal"] = signal.Signals(self.signum).name
        if self._trainer is not None:
            self._trainer.request_stop(INTERRUPTED)

    @contextlib.contextmanager
    def attach(self, trainer) -> Iterator[dict]:
        """While a trial fits: a stop request stops `trainer` (at once if one came already)."""
        self._trainer, self._caught = trainer, {}
        if self.signum is not None:
            self.request(self.signum)
        try:
            yield self._caught
        finally:
            self._trainer = None

    def check(self) -> None:
        """Raise :class:`TrialInterrupted` once a stop was asked for."""
        if self.signum is not None:
            raise TrialInterrupted(self.signum)


@contextlib.contextmanager
def stop_on_signals(stop: StopFlag, *, escalate: bool, ignore_sigint: bool = False) -> Iterator[StopFlag]:
    """SIGTERM (and SIGINT unless ignored) ask `stop` to stop. With `escalate` (a search running
    in the command's own process), a second signal aborts at once with the first one's exit code;
    without (a spawned worker), later signals are ignored: the parent decides when to kill."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.signum is not None and escalate:
            raise Stopped(stop.signum)
        stop.request(signum)

    handled = (signal.SIGTERM,) if ignore_sigint else (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, handler) for s in handled}
    if ignore_sigint:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_when_parent_dies() -> None:
    """In a spawned worker: SIGTERM this process when its parent is gone (killed with -9, say),
    so no orphan goes on running trials nobody collects."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="nnrun-parent-watch", daemon=True).start()
