"""An image folder trains to the same numbers bit for bit whether its examples are decoded once into
memory (`data.cache: auto`) or read from the files every epoch (`none`); a run resumes and predicts
with either setting, whichever it was trained with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nnrun import checkpoint
from nnrun import recipe as recipe_io
from nnrun.training.callbacks import Callback
from nnrun.workflows import predict as predict_wf
from nnrun.workflows import train as train_wf

Image = pytest.importorskip("PIL.Image")

RECIPE = """\
seed: 5
data: {source: image-folder, path: pngs, batch_size: 32, val_fraction: 0.2}
model: {arch: mlp, hidden: [24], dropout: 0.2}
optimizer: {name: adam, lr: 3e-3}
train: {epochs: 2}
log: {progress: none, tensorboard: false}
"""


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    """300 built-in digits as 8x8 PNGs in class folders, and a recipe that trains on them."""
    import nnrun.data

    digits = np.load(Path(nnrun.data.__file__).parent / "digits.npz")
    for i in range(300):
        folder = tmp_path / "pngs" / str(int(digits["y"][i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits["x"][i] * 15).astype(np.uint8)).save(folder / f"{i:04d}.png")
    path = tmp_path / "digits-png.yaml"
    path.write_text(RECIPE)
    return path


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.state.step == self.step:
            trainer.request_stop(train_wf.INTERRUPTED)


def weights(run: Path) -> dict:
    return checkpoint.load(run / "checkpoints" / "last.pt")["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cached_and_streamed_runs_match_bit_for_bit_and_cross_resume_and_predict(recipe_file, tmp_path):
    load = lambda cache: recipe_io.load(recipe_file, [f"data.cache={cache}"])  # noqa: E731
    cached = train_wf.run(load("auto"), run_dir=tmp_path / "cached", handle_signals=False,
                          base_dir=recipe_file.parent)
    streamed = train_wf.run(load("none"), run_dir=tmp_path / "streamed", handle_signals=False,
                            base_dir=recipe_file.parent)
    assert cached.history == streamed.history and len(cached.history) == 2
    assert same(weights(tmp_path / "cached"), weights(tmp_path / "streamed"))

    # cut a streamed run inside the second epoch, resume it with the cache: the same end
    cut = cached.steps // 2 + 3
    part = train_wf.run(load("none"), run_dir=tmp_path / "part", callbacks=[StopAt(cut)], handle_signals=False,
                        base_dir=recipe_file.parent)
    assert part.steps == cut
    resumed = train_wf.run(train_wf.resume_recipe(tmp_path / "part", ["data.cache=auto"]), resume=tmp_path / "part",
                           handle_signals=False, base_dir=recipe_file.parent)
    assert resumed.history == cached.history and same(weights(tmp_path / "part"), weights(tmp_path / "cached"))

    # predict either checkpoint: the same outputs (the stored recipe says how to read the data)
    outs = [predict_wf.run(tmp_path / run / "checkpoints" / "last.pt", data_path=str(recipe_file.parent / "pngs"))
            for run in ("cached", "streamed")]
    assert torch.equal(outs[0].outputs, outs[1].outputs) and outs[0].examples == 60
