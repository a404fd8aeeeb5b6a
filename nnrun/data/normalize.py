"""Input whitening with statistics from the training split only.

The statistics are a plain dict (``mode``, ``shift``, ``scale``, ``tanh_scale``) of float32
tensors and primitives, so a checkpoint stores them and ``torch.load(weights_only=True)`` reads
them back; prediction re-applies exactly the training transform:
``x' = (x - shift) / scale``, then ``tanh(x' / tanh_scale)`` when ``tanh_scale`` is set.
Images (C, H, W) get per-channel statistics shaped [C, 1, 1]; tabular inputs (F,) per-feature
statistics shaped [F]; both broadcast against a batch [B, *input_shape].
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset

from nnrun.data.cache import CachedSplit
from nnrun.data.splits import Split, StreamSplit, TensorSplit

MODES = ("standardize", "minmax", "none")
TINY = 1e-8  # a spread below this counts as constant: divide by 1 instead of blowing up
CHUNK = 4096


def stat_shape(example_shape: tuple[int, ...]) -> tuple[int, ...]:
    """[C, 1, ..., 1] for inputs of rank >= 2 (channel first), [F] for vectors, [] for scalars."""
    if len(example_shape) >= 2:
        return (example_shape[0],) + (1,) * (len(example_shape) - 1)
    return tuple(example_shape)


def _chunks(split: Split, max_examples: int) -> Iterator[torch.Tensor]:
    """Inputs in chunks: all of a TensorSplit; the first ``max_examples`` of a StreamSplit."""
    if isinstance(split, TensorSplit) and not isinstance(split, CachedSplit):
        for i in range(0, split.num_examples, CHUNK):
            yield split.x[i:i + CHUNK]
        return
    n = min(split.num_examples, max_examples)
    for i in range(0, n, 256):  # a cached stream: the same window and chunks, so the same statistics
        if isinstance(split, CachedSplit):
            yield split.x[i:min(i + 256, n)]
        else:
            yield torch.stack([torch.as_tensor(split.dataset[j][0], dtype=torch.float32)
                               for j in range(i, min(i + 256, n))])


def _moments(split: Split, max_examples: int, channels: int, per_channel: bool):
    """Per-column count, mean, M2, min, max in float64 (Chan et al.'s parallel update)."""
    count, mean = 0, torch.zeros(channels, dtype=torch.float64)
    m2 = torch.zeros(channels, dtype=torch.float64)
    lo = torch.full((channels,), float("inf"), dtype=torch.float64)
    hi = torch.full((channels,), float("-inf"), dtype=torch.float64)
    for chunk in _chunks(split, max_examples):
        cols = (chunk.movedim(1, -1) if per_channel else chunk).reshape(-1, channels).double()
        k, cmean = cols.shape[0], cols.mean(dim=0)
        cm2 = ((cols - cmean) ** 2).sum(dim=0)
        delta, total = cmean - mean, count + k
        mean = mean + delta * (k / total)
        m2 = m2 + cm2 + delta ** 2 * (count * k / total)
        count = total
        lo, hi = torch.minimum(lo, cols.min(dim=0).values), torch.maximum(hi, cols.max(dim=0).values)
    return count, mean, m2, lo, hi


def fit_normalizer(split: Split, mode: str, tanh_scale: float | None, *, max_examples: int = 10000) -> dict:
    """Compute the whitening statistics of a (training) split.

    Args:
        split: the training split (never val or test: that would leak them into training).
        mode: ``standardize`` (shift mean, scale std), ``minmax`` (shift min, scale max - min)
            or ``none``.
        tanh_scale: squash as ``tanh(x / tanh_scale)`` after shifting/scaling; None: off.
        max_examples: how many examples of a StreamSplit to read (the first ones, so the result
            is deterministic); a TensorSplit always uses every example.

    Returns:
        ``{"mode", "shift", "scale", "tanh_scale"}`` with float32 tensors shaped to broadcast.
    """
    if mode not in MODES:
        raise ValueError(f"normalize mode {mode!r} is not one of {MODES}")
    shape = stat_shape(split.example_shape())
    channels = shape[0] if shape else 1
    shift = torch.zeros(channels, dtype=torch.float64)
    scale = torch.ones(channels, dtype=torch.float64)
    if mode != "none":
        count, mean, m2, lo, hi = _moments(split, max_examples, channels, per_channel=len(shape) >= 2)
        if mode == "standardize":
            shift, scale = mean, (m2 / max(count, 1)).sqrt()  # population std
        else:
            shift, scale = lo, hi - lo
        scale = torch.where(scale < TINY, torch.ones_like(scale), scale)
    return {"mode": mode, "shift": shift.float().reshape(shape), "scale": scale.float().reshape(shape),
            "tanh_scale": None if tanh_scale is None else float(tanh_scale)}


def is_identity(stats: dict) -> bool:
    """True when the statistics leave inputs unchanged (mode none, no tanh)."""
    return stats["mode"] == "none" and stats.get("tanh_scale") is None


def apply_normalizer(x: torch.Tensor, stats: dict) -> torch.Tensor:
    """Whiten a batch [B, *input_shape] (or one example) with training statistics.

    Args:
        x: float inputs on any device.
        stats: the dict from :func:`fit_normalizer` (or a checkpoint).

    Returns:
        A new tensor (or ``x`` itself when the statistics are the identity).
    """
    if is_identity(stats):
        return x
    out = x - stats["shift"].to(device=x.device, dtype=x.dtype)
    out /= stats["scale"].to(device=x.device, dtype=x.dtype)
    if stats.get("tanh_scale") is not None:
        out /= stats["tanh_scale"]
        out.tanh_()
    return out


class NormalizedDataset(Dataset):
    """Items of ``dataset`` with the input whitened by ``stats`` (labels untouched)."""

    def __init__(self, dataset: Dataset, stats: dict):
        self.dataset, self.stats = dataset, stats
        if hasattr(dataset, "targets"):
            self.targets = dataset.targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return apply_normalizer(torch.as_tensor(x, dtype=torch.float32), self.stats), y


def normalize_split(split: Split | None, stats: dict) -> Split | None:
    """The split with whitened inputs: computed once for a TensorSplit, per item for a StreamSplit.

    Args:
        split: any split (or None, returned as is).
        stats: training statistics from :func:`fit_normalizer`.

    Returns:
        A new split; the input split is not modified.
    """
    if split is None or is_identity(stats):
        return split
    if isinstance(split, TensorSplit):
        return TensorSplit(apply_normalizer(split.x, stats), split.y)
    out = StreamSplit(NormalizedDataset(split.dataset, stats))
    out._targets = split._targets
    return out
