"""The registry of data sources: ``data.source`` -> (loader, what ``data.path`` must be).

A loader is ``load(cfg, path, with_test) -> SourceData``; modules are imported only when their
source is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from nnrun.errors import DataError, did_you_mean


@dataclass(frozen=True)
class SourceInfo:
    """One data source.

    Attributes:
        loader: ``"module:function"`` of the loader, imported lazily.
        path_kind: ``"folder"``, ``"file"`` or None when ``data.path`` is not used.
        doc: one line for listings.
    """

    loader: str
    path_kind: str | None
    doc: str


SOURCES: dict[str, SourceInfo] = {
    "digits": SourceInfo("nnrun.data.digits:load_digits", None,
                         "1,797 8x8 digits shipped with nnrun (fixed 20% test split)"),
    "mnist": SourceInfo("nnrun.data.idx:load_idx", "folder", "MNIST IDX files (optionally .gz)"),
    "fashion-mnist": SourceInfo("nnrun.data.idx:load_idx", "folder", "Fashion-MNIST IDX files"),
    "cifar10": SourceInfo("nnrun.data.cifar:load_cifar10", "folder", "CIFAR-10 python batches"),
    "csv": SourceInfo("nnrun.data.tabular:load_csv", "file", "a csv file with a header row"),
    "npz": SourceInfo("nnrun.data.tabular:load_npz", "file", "an npz file with x, y [, x_test, y_test]"),
    "image-folder": SourceInfo("nnrun.data.image_folder:load_image_folder", "folder",
                               "train/[val/ test/] folders of class subfolders of .npy/.png/.jpg files"),
    "python": SourceInfo("nnrun.data.python_source:load_python", None,
                         "module:function returning (train, val, test)"),
}


def get_source(name: str) -> tuple[SourceInfo, Callable]:
    """The source's info and its loader function; DataError listing the sources on a typo."""
    info = SOURCES.get(name)
    if info is None:
        raise DataError(f"unknown data source `{name}`{did_you_mean(name, SOURCES)}",
                        hint=f"data.source must be one of: {', '.join(SOURCES)}")
    module, func = info.loader.split(":")
    return info, getattr(importlib.import_module(module), func)
