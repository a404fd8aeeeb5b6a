"""What the data tests share: a DataConfig builder, writers of tiny fixture files (IDX, CIFAR-10
pickles, npz, image folders) and an importable data factory module.

Each writer is a plain function here and a fixture of the same name that returns it: under
`--import-mode=importlib` a test module cannot import this conftest, so a test asks for the writer it
needs by naming it as a parameter, e.g. `def test_x(tmp_path, cfg, make_mnist)`.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from nnrun.data.idx import IMAGES_MAGIC, LABELS_MAGIC
from nnrun.recipe.schema import DataConfig


def cfg(**kw) -> DataConfig:
    """The default data section with the given fields replaced."""
    return dataclasses.replace(DataConfig(), **kw)


def write_idx(path: Path, arr: np.ndarray, magic: int, *, gz: bool = False) -> Path:
    """One IDX file (uint8 values), gzipped to `<path>.gz` when `gz`."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return path


def make_mnist(folder: Path, n_train: int = 30, n_test: int = 10, *, gz: bool = False) -> Path:
    """The four MNIST IDX files with random 28x28 images and labels 0..9 in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), IMAGES_MAGIC, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, LABELS_MAGIC, gz=gz)
    return folder


def make_cifar(folder: Path, per_batch: int = 4) -> Path:
    """The six CIFAR-10 python batches (protocol-2 pickles, bytes keys) with `per_batch` random images each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)], b"batch_label": b"x"}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return folder


def write_npz(path: Path, **arrays) -> Path:
    """An npz archive of the given arrays."""
    np.savez(path, **arrays)
    return path


def make_image_folder(root: Path, splits=("train", "val", "test"), n: int = 3) -> Path:
    """`root/<split>/{cat,dog}/<i>.npy`: 5x6x3 uint8 arrays filled with class * 10 + i."""
    for split in splits:
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                np.save(root / split / cls / f"{i}.npy", np.full((5, 6, 3), c * 10 + i, dtype=np.uint8))
    return root


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
    """The name of an importable module of data factories (`tensors`, `streamed`, `broken`)."""
    (tmp_path / "nnrun_test_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "nnrun_test_factory"


# The plain functions above, as fixtures of the same name (see the module docstring).


@pytest.fixture(name="cfg")
def cfg_fixture():
    return cfg


@pytest.fixture(name="write_idx")
def write_idx_fixture():
    return write_idx


@pytest.fixture(name="make_mnist")
def make_mnist_fixture():
    return make_mnist


@pytest.fixture(name="make_cifar")
def make_cifar_fixture():
    return make_cifar


@pytest.fixture(name="write_npz")
def write_npz_fixture():
    return write_npz


@pytest.fixture(name="make_image_folder")
def make_image_folder_fixture():
    return make_image_folder
