"""Mini-batches whose order is a pure function of (seed, epoch).

Exact mid-epoch resume needs nothing but the epoch number and the batch index: the order is
regenerated from its own ``torch.Generator`` and the first ``start`` batches are skipped
without being loaded. Batching never draws from the global RNG, so dropout and other random
ops see the same stream whether or not a run was resumed (the failure behind Lightning
#17543/#18780). Later, DDP can shard the same per-epoch order by rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from nnrun.data.splits import Split, StreamSplit, TensorSplit
from nnrun.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]


class Batches(Protocol):
    """An epoch-addressable source of (x, y) mini-batches."""

    def __len__(self) -> int:
        """Batches per epoch."""

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch``, skipping the first ``start`` of them."""


def order_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch's order (distinct for each (seed, epoch) pair in practice)."""
    return (seed * 1_000_003 + epoch) % (2 ** 63)


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The int64 example order of ``epoch``: a seeded permutation, or 0..n-1 without shuffle."""
    if not shuffle:
        return torch.arange(n, dtype=torch.int64)
    return torch.randperm(n, generator=torch.Generator().manual_seed(order_seed(seed, epoch)))


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch for ``n`` examples."""
    return n // batch_size if drop_last else -(-n // batch_size)


class TensorBatches:
    """Batches of an in-memory split by indexing its tensors (no collate, no DataLoader).

    On CUDA the tensors are moved to the device once (when they fit) so that batches are
    device-side gathers; on CPU the only copy is the index gather of each batch.
    """

    def __init__(self, split: TensorSplit, *, batch_size: int, shuffle: bool, seed: int,
                 drop_last: bool = False, device: torch.device | None = None):
        self.x, self.y = split.x, split.y
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        if device is not None and torch.device(device).type == "cuda":
            self.x, self.y = _to_device_if_fits(self.x, self.y, torch.device(device))

    def __len__(self) -> int:
        return num_batches(self.x.shape[0], self.batch_size, self.drop_last)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        n, bs = self.x.shape[0], self.batch_size
        order = None
        if self.shuffle:
            order = epoch_order(n, seed=self.seed, epoch=epoch, shuffle=True).to(self.x.device)
        for b in range(start, len(self)):
            lo, hi = b * bs, min((b + 1) * bs, n)
            if order is None:  # sequential (evaluation): slices are views, no copy at all
                yield self.x[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                yield self.x[idx], self.y[idx]


def _to_device_if_fits(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Batch:
    """x, y on ``device`` when they use under half its free memory, else left on the host."""
    need = x.numel() * x.element_size() + y.numel() * y.element_size()
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError):
        return x, y
    if need > free // 2:
        return x, y
    return x.to(device), y.to(device)


class _EpochBatchSampler:
    """A batch sampler told which epoch and start batch to yield (mutable, so a persistent
    DataLoader keeps its workers across epochs)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool):
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return num_batches(self.n, self.batch_size, self.drop_last) - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.n, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle).tolist()
        for b in range(self.start, num_batches(self.n, self.batch_size, self.drop_last)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


class LoaderBatches:
    """Batches of a streamed split through one DataLoader whose batch sampler yields the same
    per-epoch order as :class:`TensorBatches`. Move batches with ``non_blocking=True``."""

    def __init__(self, dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int,
                 drop_last: bool = False, num_workers: int = 0, device: torch.device | None = None):
        self.sampler = _EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last)
        self.seed = seed
        # A private generator: the DataLoader otherwise draws its worker base seed from the
        # global RNG, which would shift dropout's random stream on every epoch (and on resume).
        self.generator = torch.Generator().manual_seed(seed)
        cuda = device is not None and torch.device(device).type == "cuda"
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=cuda, persistent_workers=num_workers > 0,
                                 generator=self.generator)

    def __len__(self) -> int:
        return num_batches(self.sampler.n, self.sampler.batch_size, self.sampler.drop_last)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self.sampler.epoch, self.sampler.start = epoch, start
        self.generator.manual_seed(order_seed(self.seed, epoch))  # worker seeds per epoch, resumable
        try:
            yield from self.loader
        except DataError as exc:
            raise _unwrap_worker_error(exc) from exc


def _unwrap_worker_error(exc: DataError) -> DataError:
    """A DataError re-raised by a DataLoader worker carries the worker's traceback as its
    message; keep only the original error text (which names the file and the fix)."""
    text = exc.message
    marker = "DataError: "
    if "Original Traceback" not in text or marker not in text:
        return exc
    return DataError(text.rsplit(marker, 1)[1].strip())


def make_batches(split: Split, *, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False,
                 num_workers: int = 0, device: torch.device | None = None) -> Batches:
    """The right batcher for a split: :class:`TensorBatches` in memory, :class:`LoaderBatches` streamed.

    Args:
        split: the split to batch.
        batch_size: examples per batch.
        shuffle: a fresh seeded permutation every epoch (False for evaluation).
        seed: the run's seed; with the epoch it fixes the order.
        drop_last: drop the last incomplete batch.
        num_workers: DataLoader workers (streamed splits only).
        device: the training device; cuda moves in-memory data there once / pins streamed batches.

    Returns:
        An object with ``len()`` (batches per epoch) and ``epoch(e, start=0)``.
    """
    if isinstance(split, TensorSplit):
        return TensorBatches(split, batch_size=batch_size, shuffle=shuffle, seed=seed,
                             drop_last=drop_last, device=device)
    if isinstance(split, StreamSplit):
        return LoaderBatches(split.dataset, batch_size=batch_size, shuffle=shuffle, seed=seed,
                             drop_last=drop_last, num_workers=num_workers, device=device)
    raise TypeError(f"cannot batch a {type(split).__name__}")
