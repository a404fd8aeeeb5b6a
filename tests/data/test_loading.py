"""Tests of nnrun.data: every source on tiny fixture files, splits, normalization, batching."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from nnrun.data import (
    DataBundle,
    LoaderBatches,
    StreamSplit,
    TensorBatches,
    TensorSplit,
    apply_normalizer,
    epoch_order,
    fit_normalizer,
    load_data,
    make_batches,
    normalize_split,
)
from nnrun.data.idx import IMAGES_MAGIC, LABELS_MAGIC
from nnrun.errors import DataError
from nnrun.recipe.schema import DataConfig

MNIST_DIR = Path("/work/shared/data/mnist")


def cfg(**kw) -> DataConfig:
    return dataclasses.replace(DataConfig(), **kw)


# ---------------------------------------------------------------- fixture writers

def write_idx(path: Path, arr: np.ndarray, magic: int, *, gz: bool = False) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return path


def make_mnist(folder: Path, n_train: int = 30, n_test: int = 10, *, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), IMAGES_MAGIC, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, LABELS_MAGIC, gz=gz)
    return folder


def make_cifar(folder: Path, per_batch: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)], b"batch_label": b"x"}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return folder


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------- digits, splits, limit

def test_digits_counts_shapes_and_fixed_test_split():
    bundle = load_data(cfg(source="digits"), seed=0, with_test=True)
    assert bundle.train.num_examples + bundle.val.num_examples + bundle.test.num_examples == 1797
    assert bundle.test.num_examples == 359 and bundle.val.num_examples == round(0.1 * 1438)
    assert bundle.input_shape == (1, 8, 8) and bundle.train.x.dtype == torch.float32
    assert bundle.task == "classification" and bundle.num_classes == bundle.num_outputs == 10
    assert "1294 train / 144 val / 359 test" in bundle.description
    raw = np.load(Path(__file__).parents[2] / "nnrun" / "data" / "digits.npz")
    assert torch.equal(bundle.test.x[:, 0], torch.from_numpy(raw["x"][4::5].astype(np.float32)))
    other = load_data(cfg(source="digits"), seed=7, with_test=True)
    assert torch.equal(other.test.x, bundle.test.x)  # the test split does not depend on the seed
    assert load_data(cfg(source="digits"), seed=0).test is None


def test_val_split_seeded_and_disjoint(tmp_path):
    path = write_npz(tmp_path / "d.npz", x=np.arange(100, dtype=np.float32)[:, None], y=np.arange(100) % 3)
    a = load_data(cfg(source="npz", path=str(path), val_fraction=0.25), seed=1)
    b = load_data(cfg(source="npz", path=str(path), val_fraction=0.25), seed=1)
    c = load_data(cfg(source="npz", path=str(path), val_fraction=0.25), seed=2)
    assert a.val.num_examples == 25 and a.train.num_examples == 75
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    ids = torch.cat([a.train.x, a.val.x]).flatten().sort().values
    assert torch.equal(ids, torch.arange(100, dtype=torch.float32))
    assert load_data(cfg(source="npz", path=str(path), val_fraction=0.0), seed=0).val is None
    assert load_data(cfg(source="npz", path=str(path), val_fraction=0.001), seed=0).val.num_examples == 1


def test_limit_keeps_first_examples_before_split(tmp_path):
    path = write_npz(tmp_path / "d.npz", x=np.arange(100, dtype=np.float32)[:, None], y=np.arange(100) % 3)
    bundle = load_data(cfg(source="npz", path=str(path), limit=30, val_fraction=0.2), seed=0)
    ids = torch.cat([bundle.train.x, bundle.val.x]).flatten().sort().values
    assert torch.equal(ids, torch.arange(30, dtype=torch.float32)) and bundle.val.num_examples == 6


def test_relative_path_resolves_against_base_dir(tmp_path, monkeypatch):
    write_npz(tmp_path / "d.npz", x=np.ones((10, 2)), y=np.arange(10) % 2)
    monkeypatch.chdir(tmp_path.parent)
    bundle = load_data(cfg(source="npz", path="d.npz"), seed=0, base_dir=tmp_path)
    assert bundle.input_shape == (2,)
    with pytest.raises(DataError, match="not found"):
        load_data(cfg(source="npz", path="d.npz"), seed=0, base_dir=tmp_path / "elsewhere")


# ---------------------------------------------------------------- mnist / IDX

@pytest.mark.parametrize("gz", [False, True])
def test_idx_mnist_loads(tmp_path, gz):
    folder = make_mnist(tmp_path / "m", gz=gz)
    bundle = load_data(cfg(source="fashion-mnist", path=str(folder), val_fraction=0.1), seed=0, with_test=True)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert bundle.train.num_examples == 27 and bundle.val.num_examples == 3 and bundle.test.num_examples == 10
    assert bundle.class_names[9] == "Ankle boot" and bundle.train.x.max() > 200


def test_idx_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        load_data(cfg(source="mnist", path=str(tmp_path / "nope")), seed=0)
    assert "nope" in str(err.value)
    folder = make_mnist(tmp_path / "m")
    (folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte") as err:
        load_data(cfg(source="mnist", path=str(folder)), seed=0)
    assert "t10k-images-idx3-ubyte" in str(err.value) and err.value.hint


def test_idx_truncated_bad_magic_and_count_mismatch(tmp_path):
    folder = make_mnist(tmp_path / "m")
    images = folder / "train-images-idx3-ubyte"
    full = images.read_bytes()
    images.write_bytes(full[:-100])
    with pytest.raises(DataError, match=f"truncated.*{len(full)} bytes, found {len(full) - 100}") as err:
        load_data(cfg(source="mnist", path=str(folder)), seed=0)
    assert err.value.where == str(images)
    images.write_bytes(gzip.compress(full)[:-50])  # a truncated .gz is no better
    images.rename(folder / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="cannot read"):
        load_data(cfg(source="mnist", path=str(folder)), seed=0)
    (folder / "train-images-idx3-ubyte.gz").unlink()
    images.write_bytes(full[:3] + b"\x01" + full[4:])
    with pytest.raises(DataError, match="magic number 2049"):
        load_data(cfg(source="mnist", path=str(folder)), seed=0)
    write_idx(images, np.zeros((29, 28, 28)), IMAGES_MAGIC)
    with pytest.raises(DataError, match="29 images but .* 30 labels"):
        load_data(cfg(source="mnist", path=str(folder)), seed=0)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="real MNIST not present")
def test_real_mnist():
    bundle = load_data(cfg(source="mnist", path=str(MNIST_DIR)), seed=0, with_test=True)
    assert bundle.train.num_examples + bundle.val.num_examples == 60000
    assert bundle.test.num_examples == 10000 and bundle.input_shape == (1, 28, 28)
    assert bundle.num_classes == 10 and 250 <= float(bundle.train.x.max()) <= 255
    assert bundle.train.y.bincount().tolist().__len__() == 10


# ---------------------------------------------------------------- cifar10

def test_cifar_loads_from_nested_folder(tmp_path):
    make_cifar(tmp_path / "cifar-10-batches-py")
    bundle = load_data(cfg(source="cifar10", path=str(tmp_path), val_fraction=0.2), seed=0, with_test=True)
    assert bundle.input_shape == (3, 32, 32) and bundle.train.num_examples == 16
    assert bundle.val.num_examples == 4 and bundle.test.num_examples == 4 and bundle.num_classes == 10
    assert bundle.class_names[0] == "airplane"


def test_cifar_missing_batch_lists_expected(tmp_path):
    folder = make_cifar(tmp_path / "c")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 batch file.*data_batch_3") as err:
        load_data(cfg(source="cifar10", path=str(folder)), seed=0)
    assert "data_batch_1, data_batch_2" in str(err.value)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_pickle_with_forbidden_global(tmp_path):
    folder = make_cifar(tmp_path / "c")
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(DataError, match="refused global `(posix|os)[.]system`") as err:
        load_data(cfg(source="cifar10", path=str(folder)), seed=0)
    assert not marker.exists()
    assert err.value.where.endswith("data_batch_2")


def test_cifar_accepts_modern_pickle_protocols(tmp_path):
    folder = make_cifar(tmp_path / "c")
    for protocol in (4, 5):
        data = np.full((2, 3072), protocol, dtype=np.uint8)
        with open(folder / "test_batch", "wb") as fh:
            pickle.dump({"data": data, "labels": [1, 2]}, fh, protocol=protocol)
        bundle = load_data(cfg(source="cifar10", path=str(folder)), seed=0, with_test=True)
        assert bundle.test.num_examples == 2 and float(bundle.test.x.mean()) == protocol


# ---------------------------------------------------------------- csv

def test_csv_classification_regression_and_text_labels(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,0\n3,4.5,1\n\n5,6,2\n7,8,1\n")
    bundle = load_data(cfg(source="csv", path=str(path), val_fraction=0.0), seed=0)
    assert bundle.task == "classification" and bundle.num_classes == 3 and bundle.input_shape == (2,)
    assert torch.equal(bundle.train.x[1], torch.tensor([3.0, 4.5]))
    path.write_text("a,b,target\n1,2,0.5\n3,4,1.5\n5,6,2\n")
    bundle = load_data(cfg(source="csv", path=str(path), label_column="target", val_fraction=0.0), seed=0)
    assert bundle.task == "regression" and bundle.num_classes is None and bundle.num_outputs == 1
    assert bundle.train.y.dtype == torch.float32
    path.write_text("a,kind\n1,dog\n2,cat\n3,dog\n")
    bundle = load_data(cfg(source="csv", path=str(path), label_column="kind", val_fraction=0.0), seed=0)
    assert bundle.class_names == ["cat", "dog"] and bundle.train.y.tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="no test split") as err:
        load_data(cfg(source="csv", path=str(path), label_column="kind"), seed=0, with_test=True).require_test()
    assert err.value.hint


def test_csv_missing_label_column_did_you_mean(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x1,x2,labels\n1,2,0\n")
    with pytest.raises(DataError, match="did you mean `labels`") as err:
        load_data(cfg(source="csv", path=str(path)), seed=0)
    assert "x1, x2, labels" in str(err.value)


def test_csv_non_numeric_cell_names_line_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x1,x2,label\n1,2,0\n3,oops,1\n")
    with pytest.raises(DataError, match="line 3, column `x2`: 'oops' is not a number") as err:
        load_data(cfg(source="csv", path=str(path)), seed=0)
    assert err.value.where == str(path)


# ---------------------------------------------------------------- npz and shared checks

def test_npz_test_split_and_missing_key(tmp_path):
    path = write_npz(tmp_path / "d.npz", x=np.zeros((8, 3)), y=np.arange(8) % 2,
                     x_test=np.ones((4, 3)), y_test=np.array([0, 1, 1, 0]))
    bundle = load_data(cfg(source="npz", path=str(path)), seed=0, with_test=True)
    assert bundle.require_test().num_examples == 4 and bundle.num_classes == 2
    with pytest.raises(DataError, match="not requested"):
        load_data(cfg(source="npz", path=str(path)), seed=0).require_test()
    bad = write_npz(tmp_path / "bad.npz", inputs=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match="missing array.* x; the file holds: inputs, y"):
        load_data(cfg(source="npz", path=str(bad)), seed=0)


def test_npz_corrupt_file(tmp_path):
    path = tmp_path / "c.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip file")
    with pytest.raises(DataError, match="cannot read the npz"):
        load_data(cfg(source="npz", path=str(path)), seed=0)


def test_labels_out_of_range(tmp_path):
    path = write_npz(tmp_path / "d.npz", x=np.zeros((8, 3)), y=np.arange(8) % 3,
                     x_test=np.zeros((2, 3)), y_test=np.array([0, 5]))
    with pytest.raises(DataError, match="test label 5 .* outside 0..2"):
        load_data(cfg(source="npz", path=str(path)), seed=0, with_test=True)
    neg = write_npz(tmp_path / "n.npz", x=np.zeros((8, 3)), y=np.array([0, 1, -1, 0, 1, 0, 1, 0]))
    with pytest.raises(DataError, match="label -1"):
        load_data(cfg(source="npz", path=str(neg), val_fraction=0.0), seed=0)


def test_nan_inputs_and_length_mismatch(tmp_path):
    x = np.zeros((10, 3), dtype=np.float32)
    x[4, 1], x[6, 0] = np.nan, np.inf
    path = write_npz(tmp_path / "d.npz", x=x, y=np.arange(10) % 2)
    with pytest.raises(DataError, match="2 NaN/Inf value.*example 4") as err:
        load_data(cfg(source="npz", path=str(path)), seed=0)
    assert err.value.where == str(path)
    path = write_npz(tmp_path / "e.npz", x=np.zeros((10, 3)), y=np.zeros(9, dtype=np.int64))
    with pytest.raises(DataError, match="10 inputs but 9 labels"):
        load_data(cfg(source="npz", path=str(path)), seed=0)


def test_task_override_regression_on_integer_labels(tmp_path):
    path = write_npz(tmp_path / "d.npz", x=np.zeros((10, 2)), y=np.arange(20).reshape(10, 2))
    bundle = load_data(cfg(source="npz", path=str(path), task="regression"), seed=0)
    assert bundle.task == "regression" and bundle.num_outputs == 2 and bundle.train.y.dtype == torch.float32


# ---------------------------------------------------------------- image folder

def make_image_folder(root: Path, splits=("train", "val", "test"), n: int = 3) -> Path:
    for split in splits:
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                np.save(root / split / cls / f"{i}.npy", np.full((5, 6, 3), c * 10 + i, dtype=np.uint8))
    return root


def test_image_folder_npy_layout(tmp_path):
    root = make_image_folder(tmp_path / "img")
    bundle = load_data(cfg(source="image-folder", path=str(root)), seed=0, with_test=True)
    assert isinstance(bundle.train, StreamSplit) and bundle.class_names == ["cat", "dog"]
    assert bundle.input_shape == (3, 5, 6) and bundle.num_classes == 2
    assert bundle.val.num_examples == 6 and bundle.test.num_examples == 6  # its own val/ folder
    x, y = bundle.train.dataset[3]
    assert x.dtype == torch.float32 and float(x[0, 0, 0]) == 10.0 and int(y) == 1
    assert bundle.train.targets().tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_shape_mismatch_and_png(tmp_path):
    root = make_image_folder(tmp_path / "img", splits=("train",))
    bad = root / "train" / "dog" / "9.npy"
    np.save(bad, np.zeros((7, 7)))
    with pytest.raises(DataError, match="differs") as err:
        load_data(cfg(source="image-folder", path=str(root)), seed=0)
    assert err.value.where == str(bad)
    Image = pytest.importorskip("PIL.Image")
    flat = tmp_path / "flat"
    for c, cls in enumerate(("a", "b", "c")):
        (flat / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((4, 5), 50 * c + i, dtype=np.uint8)).save(flat / cls / f"{i}.png")
    bundle = load_data(cfg(source="image-folder", path=str(flat), val_fraction=0.0), seed=0)
    assert bundle.input_shape == (1, 4, 5) and bundle.num_classes == 3
    assert float(bundle.train.dataset[5][0].max()) == 101.0


# ---------------------------------------------------------------- python source

FACTORY = '''
import torch
from torch.utils.data import Dataset

class Pairs(Dataset):
    def __len__(self): return 12
    def __getitem__(self, i): return [float(i), 0.0], i % 4

def tensors():
    g = torch.Generator().manual_seed(0)
    return ((torch.randn(40, 3, generator=g) * 2 + 5, torch.arange(40) % 2),
            (torch.randn(10, 3, generator=g) * 50 + 100, torch.arange(10) % 2), None)

def streamed():
    return Pairs(), None, Pairs()

def broken():
    return 42
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "nnrun_test_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "nnrun_test_factory"


def test_python_source_tensors_and_dataset(factory_module):
    bundle = load_data(cfg(source="python", factory=f"{factory_module}:tensors"), seed=0)
    assert isinstance(bundle.train, TensorSplit) and bundle.val.num_examples == 10  # its own val
    assert bundle.train.num_examples == 40 and bundle.input_shape == (3,)
    bundle = load_data(cfg(source="python", factory=f"{factory_module}:streamed", val_fraction=0.25),
                       seed=0, with_test=True)
    assert isinstance(bundle.train, StreamSplit) and bundle.num_classes == 4 and bundle.input_shape == (2,)
    assert bundle.train.num_examples == 9 and bundle.test.num_examples == 12


def test_python_source_errors(factory_module):
    with pytest.raises(DataError, match="cannot import module `no_such_mod_xyz`"):
        load_data(cfg(source="python", factory="no_such_mod_xyz:f"), seed=0)
    with pytest.raises(DataError, match="has no callable `nope`"):
        load_data(cfg(source="python", factory=f"{factory_module}:nope"), seed=0)
    with pytest.raises(DataError, match="returned a int"):
        load_data(cfg(source="python", factory=f"{factory_module}:broken"), seed=0)
    with pytest.raises(DataError, match="module:function"):
        load_data(cfg(source="python", factory="just_a_name"), seed=0)


# ---------------------------------------------------------------- normalization

def test_standardize_uses_train_statistics_only(factory_module):
    bundle = load_data(cfg(source="python", factory=f"{factory_module}:tensors"), seed=0)
    stats = fit_normalizer(bundle.train, "standardize", None)
    assert stats["shift"].shape == (3,) and stats["shift"].dtype == torch.float32
    torch.testing.assert_close(stats["shift"], bundle.train.x.mean(0))
    train = normalize_split(bundle.train, stats)
    torch.testing.assert_close(train.x.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.x.std(0, unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    val = normalize_split(bundle.val, stats)  # val is far away: its mean must NOT be removed
    assert float(val.x.mean()) > 10
    assert bundle.train.x.mean() > 3  # the input split is not modified in place


def test_per_channel_image_stats_minmax_constant_and_tanh():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 4, 4, generator=g) * torch.tensor([1.0, 5.0, 0.1]).view(3, 1, 1) \
        + torch.tensor([0.0, 10.0, -3.0]).view(3, 1, 1)
    split = TensorSplit(x, torch.zeros(64, dtype=torch.int64))
    stats = fit_normalizer(split, "standardize", None)
    assert stats["scale"].shape == (3, 1, 1)
    out = normalize_split(split, stats).x
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    mm = normalize_split(split, fit_normalizer(split, "minmax", None)).x
    assert float(mm.min()) == 0.0 and abs(float(mm.amax((0, 2, 3)).min()) - 1.0) < 1e-6
    const = TensorSplit(torch.full((5, 2), 7.0), torch.zeros(5))
    assert torch.isfinite(normalize_split(const, fit_normalizer(const, "standardize", None)).x).all()
    wide = TensorSplit(x * 1000, split.y)
    squashed = normalize_split(wide, fit_normalizer(wide, "standardize", 2.0)).x
    assert float(squashed.abs().max()) < 1.0
    torch.testing.assert_close(squashed, torch.tanh(out / 2.0), atol=1e-5, rtol=0)
    none = fit_normalizer(split, "none", None)
    assert apply_normalizer(x, none) is x and float(none["scale"].sum()) == 3.0


def test_stream_normalization_matches_tensor():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(50, 2, 3, 3, generator=g) * 9, torch.arange(50) % 5
    tensor, stream = TensorSplit(x, y), StreamSplit(TensorDataset(x, y))
    stats_t, stats_s = fit_normalizer(tensor, "standardize", 1.5), fit_normalizer(stream, "standardize", 1.5)
    torch.testing.assert_close(stats_t["shift"], stats_s["shift"])
    torch.testing.assert_close(stats_t["scale"], stats_s["scale"])
    first10 = fit_normalizer(stream, "standardize", None, max_examples=10)
    torch.testing.assert_close(first10["shift"], x[:10].mean((0, 2, 3)).view(2, 1, 1))
    norm_t, norm_s = normalize_split(tensor, stats_t), normalize_split(stream, stats_s)
    torch.testing.assert_close(norm_s.dataset[7][0], norm_t.x[7])
    assert torch.equal(norm_s.targets(), y)


# ---------------------------------------------------------------- batching

def test_epoch_order_pure_function_of_seed_and_epoch():
    state = torch.get_rng_state()
    a = epoch_order(100, seed=3, epoch=0, shuffle=True)
    assert torch.equal(a, epoch_order(100, seed=3, epoch=0, shuffle=True))
    assert not torch.equal(a, epoch_order(100, seed=3, epoch=1, shuffle=True))
    assert not torch.equal(a, epoch_order(100, seed=4, epoch=0, shuffle=True))
    assert torch.equal(a.sort().values, torch.arange(100)) and a.dtype == torch.int64
    assert torch.equal(epoch_order(5, seed=3, epoch=9, shuffle=False), torch.arange(5))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched


def test_tensor_batches_cover_each_example_once_and_resume():
    x, y = torch.arange(103, dtype=torch.float32)[:, None], torch.arange(103)
    batches = make_batches(TensorSplit(x, y), batch_size=10, shuffle=True, seed=5)
    assert isinstance(batches, TensorBatches) and len(batches) == 11
    for epoch in (0, 1):
        seen = torch.cat([yb for _, yb in batches.epoch(epoch)])
        assert torch.equal(seen.sort().values, torch.arange(103))
        assert torch.equal(seen, epoch_order(103, seed=5, epoch=epoch, shuffle=True))
    full = list(batches.epoch(2))
    tail = list(batches.epoch(2, start=4))
    assert len(tail) == 7 and all(torch.equal(a[1], b[1]) for a, b in zip(full[4:], tail))
    dropped = make_batches(TensorSplit(x, y), batch_size=10, shuffle=True, seed=5, drop_last=True)
    assert len(dropped) == 10 and all(len(yb) == 10 for _, yb in dropped.epoch(0))
    evals = make_batches(TensorSplit(x, y), batch_size=50, shuffle=False, seed=0)
    assert [len(yb) for _, yb in evals.epoch(0)] == [50, 50, 3]
    assert torch.equal(torch.cat([yb for _, yb in evals.epoch(3)]), y)


class _Counting(Dataset):
    def __init__(self, x, y):
        self.x, self.y, self.loaded = x, y, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.loaded.append(i)
        return self.x[i], self.y[i]


def test_loader_batches_match_tensor_batches_and_skip_without_loading():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 2, generator=g), torch.arange(37)
    tensor = make_batches(TensorSplit(x, y), batch_size=8, shuffle=True, seed=11)
    counting = _Counting(x, y)
    loader = make_batches(StreamSplit(counting), batch_size=8, shuffle=True, seed=11)
    assert isinstance(loader, LoaderBatches) and len(loader) == len(tensor) == 5
    state = torch.get_rng_state()
    for epoch in (0, 1):
        for (xa, ya), (xb, yb) in zip(tensor.epoch(epoch), loader.epoch(epoch), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(torch.get_rng_state(), state)  # DataLoader seeds come from a private generator
    counting.loaded.clear()
    tail = list(loader.epoch(1, start=3))
    order = epoch_order(37, seed=11, epoch=1, shuffle=True)
    assert sorted(counting.loaded) == sorted(order[24:].tolist())  # skipped batches never loaded
    assert torch.equal(torch.cat([yb for _, yb in tail]), order[24:])


def test_loader_batches_with_worker_processes():
    x, y = torch.arange(20, dtype=torch.float32)[:, None], torch.arange(20)
    tensor = make_batches(TensorSplit(x, y), batch_size=6, shuffle=True, seed=2)
    loader = make_batches(StreamSplit(TensorDataset(x, y)), batch_size=6, shuffle=True, seed=2, num_workers=1)
    for epoch in (0, 1):  # persistent workers: the same loader serves both epochs
        got = torch.cat([yb for _, yb in loader.epoch(epoch)])
        assert torch.equal(got, torch.cat([yb for _, yb in tensor.epoch(epoch)]))


def test_bundle_is_plain_dataclass():
    bundle = load_data(cfg(source="digits", val_fraction=0.0), seed=0)
    assert isinstance(bundle, DataBundle) and bundle.val is None
    with pytest.raises(DataError, match="unknown data source `mnst`.*did you mean `mnist`"):
        load_data(cfg(source="mnst"), seed=0)


def test_streamed_bad_example_error_is_clean_even_from_a_worker(tmp_path):
    root = make_image_folder(tmp_path / "img", splits=("train",))
    bad = root / "train" / "cat" / "1.npy"
    np.save(bad, np.full((5, 6, 3), np.nan, dtype=np.float32))
    bundle = load_data(cfg(source="image-folder", path=str(root), val_fraction=0.0), seed=0)
    with pytest.raises(DataError, match="NaN/Inf") as err:
        fit_normalizer(bundle.train, "standardize", None)
    assert err.value.where == str(bad)
    batches = make_batches(bundle.train, batch_size=2, shuffle=False, seed=0, num_workers=1)
    with pytest.raises(DataError) as err:
        list(batches.epoch(0))
    assert str(err.value).startswith(f"{bad}: the example contains NaN/Inf") and "Traceback" not in str(err.value)


def test_classification_task_on_float_labels(tmp_path):
    path = write_npz(tmp_path / "d.npz", x=np.zeros((6, 2)), y=np.array([0.0, 1, 2, 1, 0, 2]))
    bundle = load_data(cfg(source="npz", path=str(path), task="classification", val_fraction=0.0), seed=0)
    assert bundle.train.y.dtype == torch.int64 and bundle.num_classes == 3
    path = write_npz(tmp_path / "e.npz", x=np.zeros((6, 2)), y=np.array([0.5, 1, 2, 1, 0, 2]))
    with pytest.raises(DataError, match="not integers"):
        load_data(cfg(source="npz", path=str(path), task="classification"), seed=0)


def test_npz_source_given_a_plain_npy_or_object_arrays(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(DataError, match="not an npz archive"):
        load_data(cfg(source="npz", path=str(tmp_path / "a.npy")), seed=0)
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="cannot read the npz"):
        load_data(cfg(source="npz", path=str(tmp_path / "o.npz")), seed=0)
