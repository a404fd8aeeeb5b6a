"""``data.cache``: decode a streamed split once, then batch it by index like in-memory data.

A file-backed split (image-folder) is read through a DataLoader, one file per example, every
epoch: decoding 20,000 small PNGs costs about 7x the step time of the same images held in memory.
When the decoded inputs fit the budget, every example is decoded once, by a few threads (Pillow
and NumPy release the GIL while they decode), into one float32 tensor, and the split becomes a
:class:`CachedSplit`: a :class:`TensorSplit` batched by index.

Nothing about the numbers changes: the examples are the same float32 values, the epoch order is
the same function of (seed, epoch), and whitening statistics are fitted on the same window of
examples in the same chunks as for the stream (see :func:`nnrun.data.normalize.fit_normalizer`),
so a run gives the same results bit for bit with and without the cache.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

from nnrun import progress
from nnrun.data.splits import Split, StreamSplit, TensorSplit
from nnrun.errors import DataError

CHUNK = 128  # examples per decoding task: small enough that Ctrl-C waits for little
MIB = 2 ** 20


class CachedSplit(TensorSplit):
    """A streamed split decoded into memory: batched like a TensorSplit, whitened like a stream."""

    def subset(self, indices: torch.Tensor) -> CachedSplit:
        return CachedSplit(self.x[indices], self.y[indices])


def decoded_bytes(split: Split) -> int:
    """The bytes a split's inputs take as float32 once decoded (from the first example's shape)."""
    if split.num_examples == 0:
        return 0
    return split.num_examples * math.prod(split.example_shape()) * 4


def decode(split: StreamSplit, *, name: str = "train", workers: int | None = None) -> CachedSplit:
    """Every example of ``split`` in one tensor, decoded by ``workers`` threads (default: torch's
    thread count) with progress reported through :mod:`nnrun.progress`.

    A file that cannot be decoded raises the same DataError as streaming would; with several bad
    files, the first one in the split's order is reported, whatever the threads' timing.
    """
    n, shape = split.num_examples, split.example_shape()
    x = torch.empty((n, *shape), dtype=torch.float32)
    dataset = split.dataset

    def fill(lo: int) -> int:
        hi = min(lo + CHUNK, n)
        for i in range(lo, hi):
            item = torch.as_tensor(dataset[i][0], dtype=torch.float32)
            if tuple(item.shape) != shape:
                raise DataError(f"{name} example {i} has shape {tuple(item.shape)} but the first one {shape}",
                                hint="every example needs the same shape")
            x[i] = item
        return hi - lo

    workers = max(1, workers or torch.get_num_threads())
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nnrun-decode")
    try:
        with progress.task(f"decoding {n:,} {name} examples into memory", n) as bar:
            futures = [pool.submit(fill, lo) for lo in range(0, n, CHUNK)]
            for future in futures:  # in order: the first failure in the split's order is raised
                bar.advance(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return CachedSplit(x, split.targets())


def cache_splits(splits: dict[str, Split | None], *, mode: str, max_mb: int, fixed_items: bool) -> list[str]:
    """Decode the streamed splits in place (``splits`` maps names to splits) when ``mode`` says so.

    Args:
        splits: {"train": ..., "val": ..., "test": ...}; streamed ones are replaced.
        mode: ``auto`` (fixed-item sources within ``max_mb``), ``memory`` (always) or ``none``.
        max_mb: the budget of ``auto`` for all streamed splits together, in MiB.
        fixed_items: the source's examples are pure functions of its files (no augmentation).

    Returns:
        Notes for the person running it (why the splits stayed streamed under ``auto``).
    """
    streamed = {k: s for k, s in splits.items() if isinstance(s, StreamSplit)}
    if not streamed or mode == "none" or (mode == "auto" and not fixed_items):
        return []
    need = sum(decoded_bytes(s) for s in streamed.values())
    if mode == "auto" and need > max_mb * MIB:
        return [f"data.cache auto: the decoded inputs would take {need / MIB:,.0f} MiB, over data.cache_max_mb "
                f"{max_mb}; streaming from the files every epoch (raise data.cache_max_mb, or set data.cache: "
                "memory, to decode them once)"]
    for key, split in streamed.items():
        splits[key] = decode(split, name=key)
    return []
