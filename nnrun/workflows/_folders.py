"""Fresh output folders: `<log.run_dir>/<name>/<kind-><timestamp>/`, never an existing one."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path


def fresh_dir(run_dir: str | Path, name: str, kind: str = "") -> Path:
    """A new folder path under `run_dir/name`, e.g. `runs/quickstart/lr-find-20261124-101500`."""
    base = Path(run_dir) / name / f"{kind + '-' if kind else ''}{datetime.now():%Y%m%d-%H%M%S}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path
