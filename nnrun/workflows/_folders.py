"""Fresh output folders: `<log.run_dir>/<name>/<kind-><timestamp>/`, created atomically, never reused."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from nnrun.errors import writing


def fresh_dir(run_dir: str | Path, name: str, kind: str = "") -> Path:
    """Create and return a new folder under `run_dir/name`, e.g. `runs/quickstart/lr-find-20261124-101500`.

    The folder is made with `mkdir(exist_ok=False)`, so two commands started in the same second
    (a shell loop with `&`) get two folders (`...-101500` and `...-101500-1`), never one shared.
    """
    base = Path(run_dir) / name / f"{kind + '-' if kind else ''}{datetime.now():%Y%m%d-%H%M%S}"
    with writing(f"a folder in {base.parent}", hint="choose a writable folder with --run-dir, --out or "
                                                      "log.run_dir=..."):
        base.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            path = base if n == 0 else base.with_name(f"{base.name}-{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                n += 1
