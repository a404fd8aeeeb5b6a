"""Where each data source's loader lives: ``data.source`` -> ``module:function``.

What a source holds (task, input shape, whether ``data.path`` is a file or a folder) is in the
recipe layer's table (:data:`nnrun.recipe.tables.SOURCES`); this module adds only the loaders. A
loader is ``load(cfg, path, with_test) -> SourceData``; modules are imported only when their
source is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from nnrun.errors import DataError, did_you_mean
from nnrun.recipe.tables import SOURCES, SourceFacts

LOADERS = {
    "digits": "nnrun.data.digits:load_digits",
    "mnist": "nnrun.data.idx:load_idx",
    "fashion-mnist": "nnrun.data.idx:load_idx",
    "cifar10": "nnrun.data.cifar:load_cifar10",
    "csv": "nnrun.data.tabular:load_csv",
    "npz": "nnrun.data.tabular:load_npz",
    "image-folder": "nnrun.data.image_folder:load_image_folder",
    "python": "nnrun.data.python_source:load_python",
}


def get_source(name: str) -> tuple[SourceFacts, Callable]:
    """The source's facts and its loader function; DataError listing the sources on a typo."""
    if name not in LOADERS:
        raise DataError(f"unknown data source `{name}`{did_you_mean(name, LOADERS)}",
                        hint=f"data.source must be one of: {', '.join(LOADERS)}")
    module, func = LOADERS[name].split(":")
    return SOURCES[name], getattr(importlib.import_module(module), func)
