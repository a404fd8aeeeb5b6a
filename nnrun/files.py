"""How nnrun writes a file: atomically, readable as the umask says, in strict JSON.

- :func:`write_atomic` writes to a temporary file in the same folder, fsyncs it, gives it the mode
  every other file gets (0666 minus the umask: `mkstemp` would leave 0600) and renames it over the
  target, so a crash, Ctrl-C or a full disk never leaves a half-written file where a complete one
  was; the temporary file is removed on any failure.
- :func:`dumps` writes JSON that strict parsers accept: NaN and infinities become `null`.
- :func:`crash_point` is a test hook: with `NNRUN_CRASH_AT=name` (or `name#k` for the k-th time)
  in the environment, the process writes the path in `NNRUN_CRASH_FLAG` and waits there to be
  killed, so a test can kill it at an exact point (inside a checkpoint write, between a save and
  the index update). Without the variable it is one comparison.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from nnrun.errors import writing


def file_mode() -> int:
    """The mode `open()` would give a new file under the process's current umask (read from
    /proc where it exists: setting the umask to read it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o666 & ~_IMPORT_UMASK


_IMPORT_UMASK = os.umask(0)
os.umask(_IMPORT_UMASK)

_CRASH_AT = os.environ.get("NNRUN_CRASH_AT")
_crash_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Stop here, to be killed, when a test asks for this point (see the module docstring)."""
    if _CRASH_AT is None:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    want, _, nth = _CRASH_AT.partition("#")
    if want == name and _crash_counts[name] == int(nth or 1):
        Path(os.environ["NNRUN_CRASH_FLAG"]).write_text(name)
        while True:  # the test kills this process now
            time.sleep(1)


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], *, what: str, hint: str) -> None:
    """Write `path` through `write(file)` via temp file + fsync + rename (never a partial file).

    Raises:
        OutputError: the folder cannot be created or written (full disk, read-only, a path in the
            way); the message names `what` and the cause. The target is unchanged.
    """
    path = Path(path)
    tmp = None
    try:
        with writing(what, hint=hint):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                _write_or_oserror(write, f)
                crash_point("write:before-fsync")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, file_mode())
            crash_point("write:before-replace")
            os.replace(tmp, path)
            tmp = None
            crash_point("write:after-replace")
            _fsync_folder(path.parent)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _write_or_oserror(write: Callable[[IO[bytes]], None], f: IO[bytes]) -> None:
    """Run the writer; torch.save reports a failed write (a full disk) as a RuntimeError whose
    context is the OSError: surface that OSError."""
    try:
        write(f)
    except RuntimeError as exc:
        cause = exc.__context__ or exc.__cause__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__ or cause.__cause__
        if cause is None:
            raise
        raise cause from exc


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str, *, what: str, hint: str) -> None:
    """:func:`write_atomic` for text (UTF-8)."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), what=what, hint=hint)


def strict(value: Any) -> Any:
    """Plain JSON values: NaN and infinities become None, tuples and sets lists, other objects strings."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [strict(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value if value is None or isinstance(value, (str, int, bool)) else str(value)


def dumps(value: Any, **kwargs) -> str:
    """Strict JSON text (no NaN/Infinity tokens, which strict parsers reject)."""
    return json.dumps(strict(value), allow_nan=False, **kwargs)
