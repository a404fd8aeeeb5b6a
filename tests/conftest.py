"""Shared fixtures: tiny, fast recipes on the built-in digits data."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

TINY = """\
seed: 3
data:
  source: digits
  batch_size: 64
  val_fraction: 0.2
model:
  arch: mlp
  hidden: [32]
  dropout: 0.1
optimizer:
  name: adam
  lr: 3e-3
train:
  epochs: 2
  save_top_k: 2
log:
  every_n_steps: 5
  progress: none
"""


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """A two-epoch digits MLP recipe file (with dropout, so RNG state matters for resume)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write recipe text (dedented) to a file and return its path."""

    def write(text: str, name: str = "r.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
