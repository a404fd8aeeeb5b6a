"""Runtime facts of this process: its rank, its CPU threads, its device and its seeds.

The one place that knows whether this process may write files (rank 0 under torchrun), which
device `auto` means, and how the recipe's seed reaches every RNG. Workflows use
:func:`recipe_threads` (or :func:`cpu_settings`) so a library call leaves no thread or
denormal setting behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
from collections.abc import Iterator

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


def denormals_flushed() -> bool:
    """Whether this thread's CPU math flushes denormals to zero (torch offers a setter only, so the
    state is read by one tiny multiplication whose exact result is a denormal)."""
    return float(torch.tensor([1e-30], dtype=torch.float32) * 1e-10) == 0.0


def wants_flush(setting: str | bool, *, device: str, precision: str) -> bool:
    """`train.flush_denormal` resolved: auto flushes for fp32/bf16 work on the CPU. fp16 keeps its
    denormals: they are 6e-8..6e-5 there, within the range loss scaling is there to protect."""
    if setting in ("on", True):
        return True
    if setting in ("off", False):
        return False
    if device == "auto":
        device = resolve_device("auto").type
    return device == "cpu" and precision != "fp16"


@functools.cache
def _gomp():
    """(libgomp, callback type) when torch's OpenMP runtime is GNU's, loaded in this process, else None."""
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]), None)
    except OSError:
        return None
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)  # the same file: dlopen hands back the copy torch already uses
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
        lib.GOMP_parallel.argtypes = [proto, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        lib.GOMP_parallel.restype = None
    except (OSError, AttributeError):
        return None
    return lib, proto


_largest_team = [1]  # the most threads torch's pool was asked for, as far as this module saw


def set_flush_denormal(on: bool) -> None:
    """Flush denormals (or stop) in this thread and in every thread of torch's CPU thread pool.

    The flag lives in each thread's MXCSR register and `torch.set_flush_denormal` sets only the
    calling thread's, so the pool's other threads would keep computing with denormals (measured:
    half of a 2-thread elementwise product and all of a matmul's pool work). An OpenMP parallel
    region runs the setter once in each thread of the pool: as many as the machine has cores or the
    most threads torch was set to in this process, whichever is more, so that idle threads of an
    earlier, larger setting change too; threads the pool starts later inherit the caller's flag
    (POSIX threads inherit the floating-point environment)."""
    torch.set_flush_denormal(on)
    gomp = _gomp()
    if gomp is not None:
        lib, proto = gomp
        body = proto(lambda _: torch.set_flush_denormal(on))
        _largest_team[0] = max(_largest_team[0], torch.get_num_threads(), os.cpu_count() or 1)
        lib.GOMP_parallel(body, None, _largest_team[0], 0)



@contextlib.contextmanager
def cpu_settings(*, threads: int | None = None, flush_denormal: bool = False) -> Iterator[None]:
    """Run a block with `threads` torch CPU threads (default with several processes on a machine:
    its cores shared out among them) and, when asked, denormals flushed to zero; both are put back
    afterwards, so a library call leaves no global state behind (a recipe with `train.threads: 1`
    would otherwise slow, and change the float rounding of, everything the caller runs next)."""
    previous_threads, previous_flush = torch.get_num_threads(), denormals_flushed()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # processes sharing this machine's cores
    threads = threads or (max(1, (os.cpu_count() or 1) // local) if local > 1 else None)
    _largest_team[0] = max(_largest_team[0], previous_threads, threads or 1)
    try:
        if threads:
            torch.set_num_threads(threads)
        if flush_denormal and not previous_flush:
            set_flush_denormal(True)  # no change on CPUs without FTZ/DAZ
        yield
    finally:
        if denormals_flushed() != previous_flush:
            set_flush_denormal(previous_flush)
        torch.set_num_threads(previous_threads)


def recipe_threads(fn):
    """Decorate a workflow whose first argument is a Recipe: run it under :func:`cpu_settings`
    with `train.threads` and `train.flush_denormal` (resolved for the `device` keyword argument
    when the call gives one, else `train.device`)."""

    @functools.wraps(fn)
    def wrapper(recipe, *args, **kwargs):
        t = recipe.train
        flush = wants_flush(t.flush_denormal, device=kwargs.get("device") or t.device, precision=t.precision)
        with cpu_settings(threads=t.threads, flush_denormal=flush):
            return fn(recipe, *args, **kwargs)

    return wrapper
