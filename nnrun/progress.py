"""Progress of long work below the CLI (decoding a data cache, ...), reported to whoever listens.

The library does not render: a step that takes seconds opens a :func:`task` and advances it; the
command line installs a reporter with :func:`reporting` (a rich bar on a terminal, throttled plain
lines otherwise) and a Python caller may install its own or none (then reporting costs nothing).
The reporter lives in a context variable (set per thread and task, never a process-wide global);
work spread over threads advances its handle from the thread that opened it.

A reporter is a callable ``reporter(description, total) -> handle`` whose handle has
``advance(n)`` and ``close()``; a handle is used from one thread at a time.
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
def task(description: str, total: int) -> Iterator[Handle]:
    """A unit of long work of ``total`` steps; the handle is closed however the block ends."""
    reporter = _reporter.get()
    handle = reporter(description, total) if reporter is not None else Silent()
    try:
        yield handle
    finally:
        handle.close()
