"""`ruff check .` is clean (configuration in pyproject.toml). Skipped where ruff is not installed; CI
installs it."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # tests/project/<file> -> the repository root


def ruff() -> list[str] | None:
    """The command that runs ruff: this interpreter's `ruff` module, else one on PATH, else None."""
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    exe = shutil.which("ruff")
    return [exe] if exe else None


def test_ruff_check_is_clean():
    command = ruff()
    if command is None:
        pytest.skip("ruff is not installed (pip install ruff)")
    res = subprocess.run([*command, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, f"ruff check . found problems:\n{res.stdout}{res.stderr}"
