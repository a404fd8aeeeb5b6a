"""A run folder belongs to one run: claimed with a lock while the run lives, never silently reused.

- :func:`claim` creates the folder if needed and takes an exclusive `flock` on `.nnrun.lock`
  inside it (the kernel releases it when the process dies, `kill -9` included, so a crashed run
  never blocks its own resume). A second process that wants the folder gets one clear error.
- Claiming removes the temporary files an interrupted atomic write left (nobody else writes
  there while the claim holds).
- A folder that already holds a run (a checkpoint or an evaluation in `metrics.jsonl`) is refused
  unless the run is being resumed: two runs in one folder lose each other's `last.pt` and history.
"""

from __future__ import annotations

import os
from pathlib import Path

from nnrun.checkpoint import remove_temporary_files
from nnrun.errors import OutputError, writing

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; the content check still applies
    fcntl = None

LOCK = ".nnrun.lock"
def holds_run(path: Path) -> bool:
    """Whether `path` holds a run worth keeping: a checkpoint or an evaluation. (A run stopped
    before its first evaluation left only its recipe and an empty metrics file: starting again in
    its folder loses nothing.)"""
    metrics = path / "metrics.jsonl"
    return (path / "checkpoints").exists() and any((path / "checkpoints").rglob("*.pt")) or \
        metrics.is_file() and metrics.stat().st_size > 0 or metrics.is_dir()


class RunFolderLock:
    """The claim on a run folder; :meth:`release` (or process exit) gives it up."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def claim(path: Path, *, resume: bool) -> RunFolderLock:
    """Create (if needed) and lock `path` for this process; refuse a folder that holds another run.

    Raises:
        OutputError: the folder cannot be created, another nnrun process holds it, or it holds a
            run and `resume` is false.
    """
    hint = "choose a writable folder with --run-dir or log.run_dir=..."
    with writing(f"the run folder {path}", hint=hint):
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(f"the run folder {path} is in use by another nnrun process (pid {owner})",
                              hint="wait for it to finish, or choose another --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    lock = RunFolderLock(path, fd)
    if not resume and holds_run(path):
        lock.release()
        raise OutputError(f"{path} already holds a run",
                          hint=f"add --resume {path} to continue it, or choose another --run-dir")
    with writing(f"the run folder {path}", hint=hint):
        remove_temporary_files(path)  # left by a crash inside an atomic write; nobody else writes here now
    return lock


def discard_if_unused(path: Path) -> None:
    """Remove a folder this run created when nothing but its lock is in it (the run failed before
    writing anything), so failed starts leave no empty run folders behind."""
    try:
        if {p.name for p in path.iterdir()} <= {LOCK}:
            (path / LOCK).unlink(missing_ok=True)
            path.rmdir()
    except OSError:
        pass
