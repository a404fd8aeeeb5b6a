"""`data.cache` (nnrun/data/cache.py): a streamed split decoded once into memory gives the same
examples, the same whitening statistics and the same batches as the stream; the budget, the
sources `auto` may cache, a bad file found while decoding in parallel, and progress reporting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnrun import progress
from nnrun.data import StreamSplit, fit_normalizer, load_data, make_batches, normalize_split
from nnrun.data.cache import CHUNK, CachedSplit, decode
from nnrun.errors import DataError


@pytest.fixture
def folder(tmp_path):
    """`train/<class>/<i>.npy` of 3x5x6 float arrays with distinct, non-round values (600 examples,
    more than one decoding chunk and more than one statistics chunk)."""
    rng = np.random.default_rng(1)
    for c in range(3):
        (tmp_path / "img" / "train" / f"c{c}").mkdir(parents=True)
        for i in range(200):
            np.save(tmp_path / "img" / "train" / f"c{c}" / f"{i:03d}.npy",
                    (rng.standard_normal((5, 6, 3)) * (c + 1) + 7).astype(np.float32))
    return tmp_path / "img"


def both(cfg, folder, **kw):
    streamed = load_data(cfg(source="image-folder", path=str(folder), cache="none", **kw), seed=4, with_test=True)
    cached = load_data(cfg(source="image-folder", path=str(folder), cache="auto", **kw), seed=4, with_test=True)
    return streamed, cached


def test_the_cached_split_holds_the_streams_examples_and_gives_the_same_statistics_and_batches(cfg, folder):
    streamed, cached = both(cfg, folder, val_fraction=0.2)
    assert isinstance(streamed.train, StreamSplit) and isinstance(cached.train, CachedSplit)
    assert isinstance(cached.val, CachedSplit) and cached.train.num_examples == 480
    for name in ("train", "val"):
        s, c = getattr(streamed, name), getattr(cached, name)
        assert torch.equal(torch.stack([s.dataset[i][0] for i in range(s.num_examples)]), c.x)
        assert torch.equal(s.targets(), c.targets())
    # the statistics window of a stream (its first examples, in chunks) is kept, bit for bit
    for mode, tanh in (("standardize", None), ("minmax", 2.0)):
        a = fit_normalizer(streamed.train, mode, tanh, max_examples=300)
        b = fit_normalizer(cached.train, mode, tanh, max_examples=300)
        assert torch.equal(a["shift"], b["shift"]) and torch.equal(a["scale"], b["scale"])
        assert not torch.equal(a["shift"], fit_normalizer(streamed.train, mode, tanh)["shift"])  # the window matters
        ns, nc = normalize_split(streamed.train, a), normalize_split(cached.train, a)
        bs = make_batches(ns, batch_size=64, shuffle=True, seed=9)
        bc = make_batches(nc, batch_size=64, shuffle=True, seed=9)
        for epoch in (0, 3):
            for (xs, ys), (xc, yc) in zip(bs.epoch(epoch, start=2), bc.epoch(epoch, start=2), strict=True):
                assert torch.equal(xs, xc) and torch.equal(ys, yc)


def test_auto_keeps_to_the_budget_and_to_sources_with_fixed_items(cfg, folder, factory_module):
    fits = load_data(cfg(source="image-folder", path=str(folder), cache_max_mb=1, val_fraction=0.1), seed=0)
    assert isinstance(fits.train, CachedSplit) and fits.notes == []  # 0.2 MiB fit in 1 MiB
    # a python dataset may augment at random: auto streams it, memory decodes it
    py = cfg(source="python", factory=f"{factory_module}:streamed", val_fraction=0.0)
    assert isinstance(load_data(py, seed=0, with_test=True).train, StreamSplit)
    mem = load_data(cfg(source="python", factory=f"{factory_module}:streamed", val_fraction=0.0, cache="memory"),
                    seed=0, with_test=True)
    assert isinstance(mem.train, CachedSplit) and isinstance(mem.test, CachedSplit)
    assert mem.train.x[5].tolist() == [5.0, 0.0]


def test_over_the_budget_auto_streams_and_says_why(cfg, tmp_path):
    root = tmp_path / "big"
    for c in range(2):
        (root / f"k{c}").mkdir(parents=True)
        for i in range(3):
            np.save(root / f"k{c}" / f"{i}.npy", np.zeros((1, 300, 300), dtype=np.float32))  # 0.34 MiB each
    bundle = load_data(cfg(source="image-folder", path=str(root), cache_max_mb=1, val_fraction=0.0), seed=0)
    assert isinstance(bundle.train, StreamSplit)
    assert len(bundle.notes) == 1 and "over data.cache_max_mb 1" in bundle.notes[0] and "2 MiB" in bundle.notes[0]
    forced = load_data(cfg(source="image-folder", path=str(root), cache_max_mb=1, val_fraction=0.0, cache="memory"),
                       seed=0)
    assert isinstance(forced.train, CachedSplit) and forced.notes == []


def test_a_bad_file_is_reported_as_streaming_would_the_first_in_order_whatever_the_workers(cfg, folder):
    files = sorted((folder / "train" / "c2").iterdir())
    bad, later = files[10], files[190]  # examples 410 and 590: two different decoding chunks
    assert 410 // CHUNK != 590 // CHUNK
    np.save(bad, np.full((5, 6, 3), np.nan, dtype=np.float32))
    np.save(later, np.full((5, 6, 3), np.inf, dtype=np.float32))
    for _ in range(5):  # the workers finish their chunks in any order; the error named is always the first bad file
        with pytest.raises(DataError, match="NaN/Inf") as err:
            load_data(cfg(source="image-folder", path=str(folder), val_fraction=0.0), seed=0)
        assert err.value.where == str(bad)


def test_decoding_reports_progress_and_shares_the_work_among_processes(cfg, folder):
    streamed = load_data(cfg(source="image-folder", path=str(folder), cache="none", val_fraction=0.0), seed=0)
    seen = []

    class Handle:
        def __init__(self, description, total):
            seen.append([description, total, 0, False])

        def advance(self, n=1):
            seen[-1][2] += n

        def close(self):
            seen[-1][3] = True

    with progress.reporting(Handle):
        cached = decode(streamed.train, name="train", workers=2)
    assert seen == [["decoding 600 train examples into memory", 600, 600, True]]
    assert 600 > 2 * CHUNK  # several chunks, so both workers get some
    assert torch.equal(cached.x, decode(streamed.train, workers=1).x)
