"""Normalization (nnrun/data/normalize.py): training statistics only, per channel or per feature,
minmax, constants, tanh squashing, and streamed splits like tensor ones."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from nnrun.data import StreamSplit, TensorSplit, apply_normalizer, fit_normalizer, load_data, normalize_split


def test_standardize_uses_train_statistics_only(factory_module, cfg):
    bundle = load_data(cfg(source="python", factory=f"{factory_module}:tensors"), seed=0)
    stats = fit_normalizer(bundle.train, "standardize", None)
    assert stats["shift"].shape == (3,) and stats["shift"].dtype == torch.float32
    torch.testing.assert_close(stats["shift"], bundle.train.x.mean(0))
    train = normalize_split(bundle.train, stats)
    torch.testing.assert_close(train.x.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.x.std(0, unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    val = normalize_split(bundle.val, stats)  # val is far away: its mean must NOT be removed
    assert float(val.x.mean()) > 10
    assert bundle.train.x.mean() > 3  # the input split is not modified in place


def test_per_channel_image_stats_minmax_constant_and_tanh():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 4, 4, generator=g) * torch.tensor([1.0, 5.0, 0.1]).view(3, 1, 1) \
        + torch.tensor([0.0, 10.0, -3.0]).view(3, 1, 1)
    split = TensorSplit(x, torch.zeros(64, dtype=torch.int64))
    stats = fit_normalizer(split, "standardize", None)
    assert stats["scale"].shape == (3, 1, 1)
    out = normalize_split(split, stats).x
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    mm = normalize_split(split, fit_normalizer(split, "minmax", None)).x
    assert float(mm.min()) == 0.0 and abs(float(mm.amax((0, 2, 3)).min()) - 1.0) < 1e-6
    const = TensorSplit(torch.full((5, 2), 7.0), torch.zeros(5))
    assert torch.isfinite(normalize_split(const, fit_normalizer(const, "standardize", None)).x).all()
    wide = TensorSplit(x * 1000, split.y)
    squashed = normalize_split(wide, fit_normalizer(wide, "standardize", 2.0)).x
    assert float(squashed.abs().max()) < 1.0
    torch.testing.assert_close(squashed, torch.tanh(out / 2.0), atol=1e-5, rtol=0)
    none = fit_normalizer(split, "none", None)
    assert apply_normalizer(x, none) is x and float(none["scale"].sum()) == 3.0


def test_stream_normalization_matches_tensor():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(50, 2, 3, 3, generator=g) * 9, torch.arange(50) % 5
    tensor, stream = TensorSplit(x, y), StreamSplit(TensorDataset(x, y))
    stats_t, stats_s = fit_normalizer(tensor, "standardize", 1.5), fit_normalizer(stream, "standardize", 1.5)
    torch.testing.assert_close(stats_t["shift"], stats_s["shift"])
    torch.testing.assert_close(stats_t["scale"], stats_s["scale"])
    first10 = fit_normalizer(stream, "standardize", None, max_examples=10)
    torch.testing.assert_close(first10["shift"], x[:10].mean((0, 2, 3)).view(2, 1, 1))
    norm_t, norm_s = normalize_split(tensor, stats_t), normalize_split(stream, stats_s)
    torch.testing.assert_close(norm_s.dataset[7][0], norm_t.x[7])
    assert torch.equal(norm_s.targets(), y)
