"""``data.cache``: decode a streamed split once, then batch it by index like in-memory data.

A file-backed split (image-folder) is read through a DataLoader, one file per example, every
epoch: decoding 20,000 small PNGs costs about 7x the step time of the same images held in memory.
When the decoded inputs fit the budget, every example is decoded once, by a DataLoader's worker
processes (in order), into one float32 tensor, and the split becomes a
:class:`CachedSplit`: a :class:`TensorSplit` batched by index.

Nothing about the numbers changes: the examples are the same float32 values, the epoch order is
the same function of (seed, epoch), and whitening statistics are fitted on the same window of
examples in the same chunks as for the stream (see :func:`nnrun.data.normalize.fit_normalizer`),
so a run gives the same results bit for bit with and without the cache.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

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
    """Every example of ``split`` in one tensor, decoded by ``workers`` processes (default: torch's
    thread count; 1: in this process) with progress reported through :mod:`nnrun.progress`.

    The workers are a DataLoader's, in order: a file that cannot be decoded raises the same
    DataError as streaming would, and with several bad files the first in the split's order is the
    one reported, whatever the workers' timing. (Threads would not help: decoding a small image is
    mostly Python work under the GIL; measured, 2 threads were slower than 1.)
    """
    n, shape = split.num_examples, split.example_shape()
    x = torch.empty((n, *shape), dtype=torch.float32)
    workers = max(1, workers or torch.get_num_threads())
    items = _Inputs(split.dataset, shape, name)
    loader = DataLoader(items, batch_size=CHUNK, shuffle=False, num_workers=workers if workers > 1 else 0,
                        collate_fn=_stack_or_failure,
                        generator=torch.Generator().manual_seed(0))  # no draw from the global RNG
    lo = 0
    with progress.task(f"decoding {n:,} {name} examples into memory", n) as bar:
        for chunk in loader:
            if isinstance(chunk, _Failure):  # the error as streaming raises it, where and fix included
                raise DataError(chunk.message, hint=chunk.hint, where=chunk.where)
            x[lo:lo + len(chunk)] = chunk
            lo += len(chunk)
            bar.advance(len(chunk))
    return CachedSplit(x, split.targets())


class _Failure(NamedTuple):
    """A DataError met by a worker, as plain fields (a worker's exception would come back as text)."""

    message: str
    hint: str | None
    where: str | None


def _stack_or_failure(items: list) -> torch.Tensor | _Failure:
    """One tensor of a chunk's inputs, or the chunk's first failure."""
    failure = next((item for item in items if isinstance(item, _Failure)), None)
    return failure if failure is not None else torch.stack(items)


class _Inputs(Dataset):
    """The inputs of a dataset's items as float32, each checked against the first one's shape."""

    def __init__(self, dataset: Dataset, shape: tuple[int, ...], name: str):
        self.dataset, self.shape, self.name = dataset, shape, name

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> torch.Tensor | _Failure:
        try:
            item = torch.as_tensor(self.dataset[i][0], dtype=torch.float32)
        except DataError as exc:
            return _Failure(exc.message, exc.hint, exc.where)
        if tuple(item.shape) != self.shape:
            return _Failure(f"{self.name} example {i} has shape {tuple(item.shape)} but the first one {self.shape}",
                            "every example needs the same shape", None)
        return item


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
