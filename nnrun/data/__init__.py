"""Data: sources -> splits -> normalization -> mini-batches.

``load_data(cfg, seed=...)`` turns the recipe's data section into a :class:`DataBundle` of
splits (in memory or streamed from files); :mod:`nnrun.data.normalize` whitens with training
statistics only; :mod:`nnrun.data.batching` yields batches in an order that is a pure function
of (seed, epoch), so resume is exact.
"""

from nnrun.data.batching import Batches, LoaderBatches, TensorBatches, epoch_order, make_batches
from nnrun.data.loading import load_data
from nnrun.data.normalize import apply_normalizer, fit_normalizer, normalize_split
from nnrun.data.sources import LOADERS
from nnrun.data.splits import DataBundle, Split, StreamSplit, TensorSplit, shard_split

__all__ = ["load_data", "DataBundle", "Split", "TensorSplit", "StreamSplit", "fit_normalizer",
           "apply_normalizer", "normalize_split", "Batches", "TensorBatches", "LoaderBatches",
           "epoch_order", "make_batches", "LOADERS", "shard_split"]
