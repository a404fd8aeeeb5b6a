"""Data that trains badly or not at all: BatchNorm meeting a batch of one example (D4), a single
class, huge or sparse labels, and duplicated columns (D16)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from nnrun import recipe as recipe_io
from nnrun.build import build
from nnrun.data import StreamSplit, TensorSplit, load_data, make_batches
from nnrun.data.classes import MAX_CLASSES
from nnrun.errors import DataError, RecipeError
from nnrun.recipe.schema import DataConfig

# The tiny recipe (batch 64, val_fraction 0.2) with BatchNorm and batches of 32: data.limit=41
# leaves 33 training examples, 32 + 1 (the probe's `quickstart data.limit=41`).
BN = ["model.norm=batch", "data.batch_size=32", "log.tensorboard=false"]


def cfg(**kw) -> DataConfig:
    return dataclasses.replace(DataConfig(), **kw)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(str(c) for c in row) for row in [header, *rows]) + "\n")
    return path


def features(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 2)).round(4)


def csv_recipe(write_recipe, data: Path, *extra: str) -> Path:
    return write_recipe(f"""\
        data: {{source: csv, path: {data}, label_column: label, batch_size: 8}}
        model: {{arch: mlp, hidden: [8]}}
        train: {{epochs: 1}}
        log: {{progress: none, tensorboard: false}}
        {chr(10).join(extra)}
        """)


def steps_per_epoch(run_dir: Path) -> list[int]:
    """The optimizer step at each epoch's evaluation, from metrics.jsonl."""
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- D4: BatchNorm and a batch of one

def test_train_folds_a_last_batch_of_one_into_the_batch_before(cli, tiny_recipe, tmp_path):
    res = cli("train", tiny_recipe, *BN, "data.limit=41", "train.epochs=2", "--run-dir", tmp_path / "r")
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())  # the notes wrap at the console width
    assert "33 training examples in batches of 32 leave a last batch of 1 example" in err
    assert "joins the batch before it (33 examples)" in err and "data.drop_last: true" in err
    assert steps_per_epoch(tmp_path / "r") == [1, 2]  # one batch of 33 per epoch


def test_lr_find_folds_the_batch_of_one_too(cli, tiny_recipe, tmp_path):
    res = cli("lr-find", tiny_recipe, *BN, "data.limit=41", "--steps", 40, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "lr_find.json").read_text())["points"] == 40


def test_accumulated_micro_batches_fold_the_batch_of_one(cli, tiny_recipe, tmp_path):
    # data.limit=81: 65 training examples, micro-batches 32 + 32 + 1 -> 32 + 33, one step of 2 per epoch.
    res = cli("train", tiny_recipe, *BN, "data.limit=81", "clip.accumulate=2", "train.epochs=2",
              "--run-dir", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert steps_per_epoch(tmp_path / "r") == [1, 2]


def test_batch_size_one_with_batchnorm_is_refused_before_training(cli, tiny_recipe, tmp_path):
    res = cli("train", tiny_recipe, *BN, "data.batch_size=1", "--run-dir", tmp_path / "r")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "`data.batch_size`: 1 trains on batches of one example" in res.stderr
    assert "BatchNorm layer(s) `body.2`" in res.stderr and "model.norm: group" in res.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_training_split_of_one_example_with_batchnorm_names_the_file(cli, write_recipe, tmp_path):
    data = write_csv(tmp_path / "two_rows.csv", ["a", "b", "label"], [[0.1, 0.2, 0], [0.3, 0.4, 1]])
    res = cli("train", csv_recipe(write_recipe, data), "model.norm=batch", "--run-dir", tmp_path / "r")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{data}: the training split holds 1 example" in res.stderr
    assert "data.val_fraction" in res.stderr and "model.norm: group" in res.stderr


def test_overfit_keeps_its_fixed_batch_and_its_batchnorm_row(cli, tiny_recipe, tmp_path):
    res = cli("overfit-one-batch", tiny_recipe, *BN, "data.limit=41", "--steps", 2, "--out", tmp_path / "o")
    assert json.loads((tmp_path / "o" / "report.json").read_text())["batch_size"] == 32, res.output
    res = cli("overfit-one-batch", tiny_recipe, *BN, "--batch-size", 1, "--steps", 2, "--out", tmp_path / "p")
    assert res.exit_code == 1 and "BatchNorm batch size" in res.stderr


@pytest.mark.parametrize("overrides", [
    ["model.norm=none"],                                       # no BatchNorm
    ["model.norm=batch", "data.drop_last=true"],              # no batch of one
    ["model.norm=batch", "data.limit=42"],                    # 34 = 32 + 2
    ["model.arch=cnn", "model.channels=[4]", "model.head_hidden=0", "model.norm=batch"],  # BatchNorm2d, 8x8 maps
])
def test_recipes_without_a_failing_batch_of_one_keep_their_batches(tiny_recipe, overrides):
    r = recipe_io.load(tiny_recipe, ["data.batch_size=32", "data.limit=41", *overrides])
    c = build(r, device=torch.device("cpu"))
    n, bs = c.data.train.num_examples, 32
    expected = n // bs if r.data.drop_last else -(-n // bs)
    assert len(c.train_batches) == expected and not any("joins the batch" in note for note in c.notes)


def test_folded_batches_keep_the_order_resume_and_match_when_streamed():
    x, y = torch.arange(33, dtype=torch.float32)[:, None], torch.arange(33)
    tensor = make_batches(TensorSplit(x, y), batch_size=8, shuffle=True, seed=2, fold_single=True)
    stream = make_batches(StreamSplit(TensorDataset(x, y)), batch_size=8, shuffle=True, seed=2, fold_single=True)
    plain = make_batches(TensorSplit(x, y), batch_size=8, shuffle=True, seed=2)
    assert (len(tensor), len(stream), len(plain)) == (4, 4, 5)
    sizes = [len(yb) for _, yb in tensor.epoch(1)]
    assert sizes == [8, 8, 8, 9]
    order = torch.cat([yb for _, yb in tensor.epoch(1)])
    assert torch.equal(order, torch.cat([yb for _, yb in plain.epoch(1)]))  # the same example order
    assert torch.equal(order, torch.cat([yb for _, yb in stream.epoch(1)]))
    assert torch.equal(torch.cat([yb for _, yb in tensor.epoch(1, start=2)]), order[16:])
    evens = make_batches(TensorSplit(x[:32], y[:32]), batch_size=8, shuffle=False, seed=0, fold_single=True)
    assert [len(yb) for _, yb in evens.epoch(0)] == [8, 8, 8, 8]


# ---------------------------------------------------------------- D16: classes and columns

def test_a_csv_label_column_with_a_single_class_is_refused(cli, write_recipe, tmp_path):
    data = write_csv(tmp_path / "one_class.csv", ["a", "b", "label"], [[*r, 2] for r in features(20)])
    res = cli("train", csv_recipe(write_recipe, data), "--run-dir", tmp_path / "r")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{data}: the label column `label` has a single class (2); a classifier needs at least 2" in res.stderr


def test_an_image_folder_with_a_single_class_is_refused(cli, write_recipe, tmp_path):
    folder = tmp_path / "images" / "cats"
    folder.mkdir(parents=True)
    for i in range(6):
        np.save(folder / f"{i}.npy", np.full((4, 4), i, dtype=np.float32))
    recipe = write_recipe(f"""\
        data: {{source: image-folder, path: {folder.parent}, batch_size: 2}}
        model: {{arch: mlp, hidden: [4]}}
        log: {{progress: none, tensorboard: false}}
        """)
    res = cli("train", recipe, "--run-dir", tmp_path / "r")
    assert res.exit_code == 2 and "the image folder has a single class (`cats`)" in res.stderr
    assert "its own subfolder" in res.stderr


def test_a_limit_that_keeps_a_single_class_names_data_limit(tmp_path):
    rows = [[*r, i // 10] for i, r in enumerate(features(20))]  # 10 rows of class 0, then class 1
    data = write_csv(tmp_path / "sorted.csv", ["a", "b", "label"], rows)
    bundle = load_data(cfg(source="csv", path=str(data), limit=8), seed=0)
    with pytest.raises(DataError, match=r"first 8 training examples \(data.limit\) hold a single class") as err:
        bundle.training_notes()
    assert "raise data.limit" in err.value.hint
    assert load_data(cfg(source="csv", path=str(data)), seed=0).training_notes() == []


def test_prediction_data_may_hold_one_class(tmp_path):
    data = write_csv(tmp_path / "one_class.csv", ["a", "b", "label"], [[*r, 1] for r in features(10)])
    bundle = load_data(cfg(source="csv", path=str(data)), seed=0)  # what predict --data loads
    assert bundle.num_classes == 2 and bundle.val is not None


def test_a_label_too_large_for_int64_is_a_data_error_naming_the_line(cli, write_recipe, tmp_path):
    rows = [[*r, i % 2] for i, r in enumerate(features(9))] + [[0.5, 0.5, "99999999999999999999"]]
    data = write_csv(tmp_path / "huge.csv", ["a", "b", "label"], rows)
    res = cli("train", csv_recipe(write_recipe, data), "--run-dir", tmp_path / "r")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{data}: line 11, label column `label`: 99999999999999999999 is too large" in res.stderr
    regression = load_data(cfg(source="csv", path=str(data), task="regression"), seed=0)  # a number, not a class
    assert regression.task == "regression" and float(regression.train.targets().max()) > 1e19


def test_a_class_count_no_classifier_can_hold_is_refused(tmp_path):
    data = write_csv(tmp_path / "ids.csv", ["a", "b", "label"], [[*r, i * MAX_CLASSES] for i, r in
                                                                  enumerate(features(6))])
    with pytest.raises(DataError, match=r"largest label is 5000000, which would make a classifier with 5,000,001"):
        load_data(cfg(source="csv", path=str(data)), seed=0)


def test_duplicate_header_names_are_refused_when_used(cli, write_recipe, tmp_path):
    rows = [[*r, r[0], i % 2] for i, r in enumerate(features(20))]
    data = write_csv(tmp_path / "dup.csv", ["a", "b", "a", "label"], rows)
    res = cli("train", csv_recipe(write_recipe, data), "--run-dir", tmp_path / "r")
    assert res.exit_code == 2 and f"{data}: the header names 2 columns `a` (columns 1, 3)" in res.stderr
    picked = load_data(cfg(source="csv", path=str(data), feature_columns=["b"]), seed=0)  # `a` unused: fine
    assert picked.input_shape == (1,)


def test_a_feature_column_listed_twice_is_a_recipe_error(cli, write_recipe, tmp_path):
    data = write_csv(tmp_path / "d.csv", ["a", "b", "label"], [[*r, i % 2] for i, r in enumerate(features(20))])
    res = cli("train", csv_recipe(write_recipe, data), "data.feature_columns=[a,b,a]", "--run-dir", tmp_path / "r")
    assert res.exit_code == 2 and "`data.feature_columns`: lists `a` twice" in res.stderr
    with pytest.raises(RecipeError):
        load_data(cfg(source="csv", path=str(data), feature_columns=["a", "a"]), seed=0)


def test_sparse_labels_warn_and_list_the_empty_classes(cli, write_recipe, tmp_path):
    rows = [[*r, (0, 1, 7)[i % 3]] for i, r in enumerate(features(30))]
    data = write_csv(tmp_path / "sparse.csv", ["a", "b", "label"], rows)
    res = cli("train", csv_recipe(write_recipe, data), "--run-dir", tmp_path / "r")
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())
    assert "5 of 8 classes have no training example" in err and ": 2..6; their outputs are never trained" in err
    bundle = load_data(cfg(source="csv", path=str(data)), seed=0)
    assert bundle.num_classes == 8 and "renumber the labels" in bundle.training_notes()[0]


def test_dense_labels_and_known_classes_give_no_warning():
    assert load_data(cfg(source="digits"), seed=0).training_notes() == []
    limited = load_data(cfg(source="digits", limit=6, val_fraction=0.0), seed=0).training_notes()
    assert len(limited) == 1 and "4 of 10 classes have no training example" in limited[0]
    assert "data.limit keeps only the first 6 examples" in limited[0]
