"""Batching (nnrun/data/batching.py): the order is a pure function of (seed, epoch), every example
once, exact resume mid-epoch, and DataLoader batches equal to tensor batches."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset

from nnrun.data import LoaderBatches, StreamSplit, TensorBatches, TensorSplit, epoch_order, make_batches


def test_epoch_order_pure_function_of_seed_and_epoch():
    state = torch.get_rng_state()
    a = epoch_order(100, seed=3, epoch=0, shuffle=True)
    assert torch.equal(a, epoch_order(100, seed=3, epoch=0, shuffle=True))
    assert not torch.equal(a, epoch_order(100, seed=3, epoch=1, shuffle=True))
    assert not torch.equal(a, epoch_order(100, seed=4, epoch=0, shuffle=True))
    assert torch.equal(a.sort().values, torch.arange(100)) and a.dtype == torch.int64
    assert torch.equal(epoch_order(5, seed=3, epoch=9, shuffle=False), torch.arange(5))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched


def test_tensor_batches_cover_each_example_once_and_resume():
    x, y = torch.arange(103, dtype=torch.float32)[:, None], torch.arange(103)
    batches = make_batches(TensorSplit(x, y), batch_size=10, shuffle=True, seed=5)
    assert isinstance(batches, TensorBatches) and len(batches) == 11
    for epoch in (0, 1):
        seen = torch.cat([yb for _, yb in batches.epoch(epoch)])
        assert torch.equal(seen.sort().values, torch.arange(103))
        assert torch.equal(seen, epoch_order(103, seed=5, epoch=epoch, shuffle=True))
    full = list(batches.epoch(2))
    tail = list(batches.epoch(2, start=4))
    assert len(tail) == 7 and all(torch.equal(a[1], b[1]) for a, b in zip(full[4:], tail))
    dropped = make_batches(TensorSplit(x, y), batch_size=10, shuffle=True, seed=5, drop_last=True)
    assert len(dropped) == 10 and all(len(yb) == 10 for _, yb in dropped.epoch(0))
    evals = make_batches(TensorSplit(x, y), batch_size=50, shuffle=False, seed=0)
    assert [len(yb) for _, yb in evals.epoch(0)] == [50, 50, 3]
    assert torch.equal(torch.cat([yb for _, yb in evals.epoch(3)]), y)


class _Counting(Dataset):
    def __init__(self, x, y):
        self.x, self.y, self.loaded = x, y, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.loaded.append(i)
        return self.x[i], self.y[i]


def test_loader_batches_match_tensor_batches_and_skip_without_loading():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 2, generator=g), torch.arange(37)
    tensor = make_batches(TensorSplit(x, y), batch_size=8, shuffle=True, seed=11)
    counting = _Counting(x, y)
    loader = make_batches(StreamSplit(counting), batch_size=8, shuffle=True, seed=11)
    assert isinstance(loader, LoaderBatches) and len(loader) == len(tensor) == 5
    state = torch.get_rng_state()
    for epoch in (0, 1):
        for (xa, ya), (xb, yb) in zip(tensor.epoch(epoch), loader.epoch(epoch), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(torch.get_rng_state(), state)  # DataLoader seeds come from a private generator
    counting.loaded.clear()
    tail = list(loader.epoch(1, start=3))
    order = epoch_order(37, seed=11, epoch=1, shuffle=True)
    assert sorted(counting.loaded) == sorted(order[24:].tolist())  # skipped batches never loaded
    assert torch.equal(torch.cat([yb for _, yb in tail]), order[24:])


def test_loader_batches_with_worker_processes():
    x, y = torch.arange(20, dtype=torch.float32)[:, None], torch.arange(20)
    tensor = make_batches(TensorSplit(x, y), batch_size=6, shuffle=True, seed=2)
    loader = make_batches(StreamSplit(TensorDataset(x, y)), batch_size=6, shuffle=True, seed=2, num_workers=1)
    for epoch in (0, 1):  # persistent workers: the same loader serves both epochs
        got = torch.cat([yb for _, yb in loader.epoch(epoch)])
        assert torch.equal(got, torch.cat([yb for _, yb in tensor.epoch(epoch)]))
