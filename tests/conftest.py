"""Shared fixtures: tiny, fast recipes on the built-in digits data, the CLI, and a training helper."""

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


@pytest.fixture
def cli():
    """Run the real `nnrun` command line in-process: `cli("train", path, "k=v")` -> click Result
    (exit_code, stdout, stderr separately; exceptions other than SystemExit propagate)."""
    from click.testing import CliRunner

    from nnrun.cli import main

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def train_tiny(tiny_recipe: Path, tmp_path: Path):
    """Train the tiny recipe with overrides into `tmp_path/<name>` (no signal handlers, no TensorBoard):
    `train_tiny(["train.epochs=3"], name="a", **run_kwargs)` -> TrainResult."""
    from nnrun import recipe as recipe_io
    from nnrun.workflows import train as train_wf

    def train(overrides=(), name: str = "run", **kw):
        r = recipe_io.load(tiny_recipe, ["log.tensorboard=false", *overrides])
        return train_wf.run(r, run_dir=tmp_path / name, handle_signals=False, **kw)

    return train


@pytest.fixture
def one_step(monkeypatch):
    """The train workflow stops every run after its first optimizer step (saving last.pt as usual)."""
    from nnrun.training.callbacks import Callback
    from nnrun.workflows import train as wf

    class OneStep(Callback):
        def on_step_end(self, trainer):
            trainer.request_stop("one step (test)")

    real = wf.run

    def run(recipe, **kw):
        return real(recipe, **{**kw, "callbacks": [*kw.get("callbacks", ()), OneStep()]})

    monkeypatch.setattr(wf, "run", run)
