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


def resolve_device(name: str, *, local_rank: int | None = None) -> torch.device:
    """`auto` -> cuda when available, else cpu; asking for cuda without one is a user error. With
    several processes on a machine (`local_rank`), each takes its own GPU, `cuda:<local_rank>`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise NnrunError("device `cuda` was asked for but torch sees no CUDA GPU",
                         hint="use --device cpu (or auto), or install a CUDA build of torch")
    if name == "cuda" and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise NnrunError(f"process {local_rank} on this machine needs GPU {local_rank}, but torch sees "
                             f"{torch.cuda.device_count()}", hint="start at most one process per GPU (--nproc)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from the recipe's seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def recipe_threads(fn):
    """Decorate a workflow whose first argument is a Recipe: run it with `recipe.train.threads`
    (default with several processes on a machine: its cores shared out among them).

    A library call must leave no global state behind: a recipe with `train.threads: 1` would
    otherwise slow (and change the float rounding of) everything the caller runs next.
    """

    @functools.wraps(fn)
    def wrapper(recipe, *args, **kwargs):
        previous = torch.get_num_threads()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # processes sharing this machine's cores
        threads = recipe.train.threads or (max(1, (os.cpu_count() or 1) // local) if local > 1 else None)
        if threads:
            torch.set_num_threads(threads)
        try:
            return fn(recipe, *args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper
