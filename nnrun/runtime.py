"""Runtime facts of this process: its rank, its CPU threads, its device and its seeds.

The one place that knows whether this process may write files (rank 0 under torchrun), which
device `auto` means, and how the recipe's seed reaches every RNG. Workflows use
:func:`recipe_threads` so a library call leaves no thread setting behind.
"""

from __future__ import annotations

import functools
import os
import random

import numpy as np
import torch

from nnrun.errors import NnrunError


def is_main_process() -> bool:
    """True unless torchrun (or another launcher) says this is a non-zero rank."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; asking for cuda without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NnrunError("device `cuda` was asked for but torch sees no CUDA GPU",
                         hint="use --device cpu (or auto), or install a CUDA build of torch")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from the recipe's seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def recipe_threads(fn):
    """Decorate a workflow whose first argument is a Recipe: run it with `recipe.train.threads`.

    A library call must leave no global state behind: a recipe with `train.threads: 1` would
    otherwise slow (and change the float rounding of) everything the caller runs next.
    """

    @functools.wraps(fn)
    def wrapper(recipe, *args, **kwargs):
        previous = torch.get_num_threads()
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        try:
            return fn(recipe, *args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper
