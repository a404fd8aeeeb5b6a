"""Progress of long work below the CLI (decoding a data cache, ...), reported to whoever listens.

The library does not render: a step that takes seconds opens a :func:`task` and advances it; the
command line installs a reporter with :func:`reporting` (a rich bar on a terminal, throttled plain
lines otherwise) and a Python caller may install its own or none (then reporting costs nothing).
The reporter lives in a context variable (set per thread and task, never a process-wide global);
work spread over threads advances its handle from the thread that opened it.

A reporter is a callable ``reporter(description, total) -> handle`` whose handle has
``advance(n)`` and ``close()``; a handle is used from one thread at a time. ``advance(0)`` is a
tick: nothing more is done, but a display may redraw (elapsed time, ETA). Work that starts partly
done (a resumed search) opens its task with ``done=``; the reporter is then called as
``reporter(description, total, done=done)``, so a reporter written for tasks that start at zero
keeps working everywhere else. Tasks may nest (a search's task, and inside it a trial's): a
reporter shows every open one, in the order they were opened.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Protocol


class Handle(Protocol):
    def advance(self, n: int = 1) -> None:
        """``n`` more units are done."""

    def close(self) -> None:
        """The work ended (done, failed or interrupted)."""


class Silent:
    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


Reporter = Callable[[str, int], Handle]
_reporter: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("nnrun_progress", default=None)


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Send the progress of work started inside the block to ``reporter`` (None: nowhere)."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


@contextlib.contextmanager
def task(description: str, total: int, *, done: int = 0) -> Iterator[Handle]:
    """A unit of long work of ``total`` steps (``done`` of them done before it starts); the handle is
    closed however the block ends."""
    reporter = _reporter.get()
    if reporter is None:
        handle: Handle = Silent()
    else:
        handle = reporter(description, total, done=done) if done else reporter(description, total)
    try:
        yield handle
    finally:
        handle.close()


def notice(text: str) -> None:
    """One line a person should read now, before long work starts (what is downloaded, how big, from
    where): handed to the reporter's ``notice`` when it has one, dropped otherwise."""
    say = getattr(_reporter.get(), "notice", None)
    if say is not None:
        say(text)
