"""Mini-batches whose order is a pure function of (seed, epoch).

Exact mid-epoch resume needs nothing but the epoch number and the batch index: the order is
regenerated from its own ``torch.Generator`` and the first ``start`` batches are skipped
without being loaded. Batching never draws from the global RNG, so dropout and other random
ops see the same stream whether or not a run was resumed (the failure behind Lightning
#17543/#18780).

With several processes (`shard=(rank, world)`) every process draws the same order, and each
*global* batch (of `batch_size` examples) is cut into `world` contiguous chunks, one per process
(the first `n % world` chunks one example longer; a chunk can be empty). The position stays
(epoch, global batch), so a run resumes on any number of processes at the same place.
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

    def global_size(self, b: int) -> int:
        """Examples in global batch ``b`` over all processes."""


def order_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch's order (distinct for each (seed, epoch) pair in practice)."""
    return (seed * 1_000_003 + epoch) % (2 ** 63)


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The int64 example order of ``epoch``: a seeded permutation, or 0..n-1 without shuffle."""
    if not shuffle:
        return torch.arange(n, dtype=torch.int64)
    return torch.randperm(n, generator=torch.Generator().manual_seed(order_seed(seed, epoch)))


def num_batches(n: int, batch_size: int, drop_last: bool, fold_single: bool = False) -> int:
    """Batches per epoch for ``n`` examples; ``fold_single`` merges a last batch of one example
    into the batch before it (BatchNorm cannot train on one example), so it counts one batch less."""
    if drop_last:
        return n // batch_size
    count = -(-n // batch_size)
    return count - 1 if fold_single and count > 1 and n % batch_size == 1 else count


def chunk(idx: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    """This process's contiguous part of a global batch's indices (all of them with one process)."""
    rank, world = shard
    return idx if world == 1 else idx.tensor_split(world)[rank]


def batch_bounds(b: int, count: int, n: int, batch_size: int, drop_last: bool) -> tuple[int, int]:
    """The [lo, hi) example positions of batch ``b`` of ``count``: the last batch keeps every
    remaining example unless ``drop_last`` (which is how a folded single example joins it)."""
    lo = b * batch_size
    return lo, (n if b == count - 1 and not drop_last else lo + batch_size)


class TensorBatches:
    """Batches of an in-memory split by indexing its tensors (no collate, no DataLoader).

    On CUDA the tensors are moved to the device once (when they fit) so that batches are
    device-side gathers; on CPU the only copy is the index gather of each batch.
    """

    def __init__(self, split: TensorSplit, *, batch_size: int, shuffle: bool, seed: int,
                 drop_last: bool = False, device: torch.device | None = None, fold_single: bool = False,
                 shard: tuple[int, int] = (0, 1)):
        self.x, self.y = split.x, split.y
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.fold_single, self.shard = fold_single, shard
        if device is not None and torch.device(device).type == "cuda":
            self.x, self.y = _to_device_if_fits(self.x, self.y, torch.device(device))

    def __len__(self) -> int:
        return num_batches(self.x.shape[0], self.batch_size, self.drop_last, self.fold_single)

    def global_size(self, b: int) -> int:
        lo, hi = batch_bounds(b, len(self), self.x.shape[0], self.batch_size, self.drop_last)
        return hi - lo

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        n, count = self.x.shape[0], len(self)
        order = None
        if self.shuffle or self.shard[1] > 1:
            order = epoch_order(n, seed=self.seed, epoch=epoch, shuffle=self.shuffle).to(self.x.device)
        for b in range(start, count):
            lo, hi = batch_bounds(b, count, n, self.batch_size, self.drop_last)
            if order is None:  # sequential (evaluation): slices are views, no copy at all
                yield self.x[lo:hi], self.y[lo:hi]
            else:
                idx = chunk(order[lo:hi], self.shard)
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

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool, fold_single: bool = False,
                 shard: tuple[int, int] = (0, 1)):
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.fold_single, self.shard = fold_single, shard
        self.epoch, self.start = 0, 0

    def count(self) -> int:
        """Batches per epoch (from the first one)."""
        return num_batches(self.n, self.batch_size, self.drop_last, self.fold_single)

    def __len__(self) -> int:
        return self.count() - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.n, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle)
        count = self.count()
        for b in range(self.start, count):
            lo, hi = batch_bounds(b, count, self.n, self.batch_size, self.drop_last)
            yield chunk(order[lo:hi], self.shard).tolist()


class LoaderBatches:
    """Batches of a streamed split through one DataLoader whose batch sampler yields the same
    per-epoch order as :class:`TensorBatches`. Move batches with ``non_blocking=True``."""

    def __init__(self, dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int,
                 drop_last: bool = False, num_workers: int = 0, device: torch.device | None = None,
                 fold_single: bool = False, shard: tuple[int, int] = (0, 1)):
        self.sampler = _EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last, fold_single, shard)
        self.seed = seed
        # A private generator: the DataLoader otherwise draws its worker base seed from the
        # global RNG, which would shift dropout's random stream on every epoch (and on resume).
        self.generator = torch.Generator().manual_seed(seed)
        cuda = device is not None and torch.device(device).type == "cuda"
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=cuda, persistent_workers=num_workers > 0,
                                 generator=self.generator)

    def __len__(self) -> int:
        return self.sampler.count()

    def global_size(self, b: int) -> int:
        lo, hi = batch_bounds(b, len(self), self.sampler.n, self.sampler.batch_size, self.sampler.drop_last)
        return hi - lo

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self.sampler.epoch, self.sampler.start = epoch, start
        # worker seeds per epoch (and per process), resumable
        self.generator.manual_seed(order_seed(self.seed, epoch) + self.sampler.shard[0])
        try:
            yield from self.loader
        except DataError as exc:
            raise unwrap_worker_error(exc) from exc


def unwrap_worker_error(exc: DataError) -> DataError:
    """A DataError re-raised by a DataLoader worker carries the worker's traceback as its
    message; keep only the original error text (which names the file and the fix)."""
    text = exc.message
    marker = "DataError: "
    if "Original Traceback" not in text or marker not in text:
        return exc
    return DataError(text.rsplit(marker, 1)[1].strip())


def make_batches(split: Split, *, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False,
                 num_workers: int = 0, device: torch.device | None = None, fold_single: bool = False,
                 shard: tuple[int, int] = (0, 1)) -> Batches:
    """The right batcher for a split: :class:`TensorBatches` in memory, :class:`LoaderBatches` streamed.

    Args:
        split: the split to batch.
        batch_size: examples per batch.
        shuffle: a fresh seeded permutation every epoch (False for evaluation).
        seed: the run's seed; with the epoch it fixes the order.
        drop_last: drop the last incomplete batch.
        num_workers: DataLoader workers (streamed splits only).
        device: the training device; cuda moves in-memory data there once / pins streamed batches.
        fold_single: a last batch of one example joins the batch before it (for BatchNorm, which
            cannot train on one example; see :func:`num_batches`).
        shard: (rank, world): yield this process's chunk of every global batch.

    Returns:
        An object with ``len()`` (batches per epoch) and ``epoch(e, start=0)``.
    """
    if isinstance(split, TensorSplit):
        return TensorBatches(split, batch_size=batch_size, shuffle=shuffle, seed=seed,
                             drop_last=drop_last, device=device, fold_single=fold_single, shard=shard)
    if isinstance(split, StreamSplit):
        return LoaderBatches(split.dataset, batch_size=batch_size, shuffle=shuffle, seed=seed,
                             drop_last=drop_last, num_workers=num_workers, device=device, fold_single=fold_single,
                             shard=shard)
    raise TypeError(f"cannot batch a {type(split).__name__}")
