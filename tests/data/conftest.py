"""What the data tests share: a DataConfig builder, writers of tiny fixture files (npz, image
folders; the IDX and CIFAR-10 writers are in tests/conftest.py) and an importable data factory module.

Each writer is a plain function here and a fixture of the same name that returns it: under
`--import-mode=importlib` a test module cannot import this conftest, so a test asks for the writer it
needs by naming it as a parameter, e.g. `def test_x(tmp_path, cfg, make_mnist)`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from nnrun.recipe.schema import DataConfig


def cfg(**kw) -> DataConfig:
    """The default data section with the given fields replaced."""
    return dataclasses.replace(DataConfig(), **kw)


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





@pytest.fixture(name="write_npz")
def write_npz_fixture():
    return write_npz


@pytest.fixture(name="make_image_folder")
def make_image_folder_fixture():
    return make_image_folder
