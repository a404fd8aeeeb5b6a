"""How SIGINT (Ctrl-C) and SIGTERM (schedulers, `kill`, torchrun) end an nnrun command.

Two regimes, both main-thread only (elsewhere they do nothing):

- :func:`abort_on_signals`, from the moment a command starts: the signal ends the command at once
  with :class:`Stopped`, which the CLI turns into one line and exit code 128 + the signal's number
  (130 for SIGINT, 143 for SIGTERM). Nothing is left half-written: every file nnrun writes is
  written atomically or is rewritten from the checkpoint on resume.
- :func:`stop_on_signals`, while a run has something to save: the first signal asks the run to
  stop at the next step boundary (it then saves `last.pt` and returns); a second signal, of either
  kind, aborts with :class:`Stopped` carrying the *first* signal, so a supervisor that sends
  SIGTERM twice still sees 143.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """A signal ended the command (a BaseException, like KeyboardInterrupt: no `except Exception`
    swallows it)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + self.signum
        super().__init__(f"stopped by {self.name}")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _handlers(handler: Callable[[int, object], None]) -> Iterator[None]:
    if not _main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def abort_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` at once."""
    def handler(signum, frame):
        raise Stopped(signum)

    with _handlers(handler):
        yield


@contextlib.contextmanager
def stop_on_signals(request_stop: Callable[[str], None]) -> Iterator[dict]:
    """The first SIGINT/SIGTERM calls `request_stop(name)`; the next one raises :class:`Stopped`
    with the first signal. Yields a dict whose `signal` is the first signal's name, once caught."""
    caught: dict = {}

    def handler(signum, frame):
        if caught:
            raise Stopped(caught["signum"])
        caught.update(signal=signal.Signals(signum).name, signum=int(signum))
        request_stop(caught["signal"])

    with _handlers(handler):
        yield caught
