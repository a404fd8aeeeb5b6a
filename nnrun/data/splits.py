"""Splits (in-memory or streamed), the bundle :func:`nnrun.data.load_data` returns, and the
checks every source shares (lengths, emptiness, NaN/Inf).

Two kinds of split exist so that each gets the fast path it deserves: a :class:`TensorSplit`
holds all examples as two tensors and is batched by indexing (no per-example collate, no
DataLoader); a :class:`StreamSplit` wraps a map-style ``torch.utils.data.Dataset`` that loads one
example per item (file-backed sources) and is batched by a DataLoader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from nnrun.errors import DataError


class Split:
    """One split of examples; see :class:`TensorSplit` and :class:`StreamSplit`."""

    @property
    def num_examples(self) -> int:
        """How many examples the split holds."""
        raise NotImplementedError

    def targets(self) -> torch.Tensor:
        """All labels (int64 [N]) or regression targets (float32 [N] or [N, k]) as one tensor."""
        raise NotImplementedError

    def example_shape(self) -> tuple[int, ...]:
        """The shape of one input example, e.g. ``(1, 28, 28)``."""
        raise NotImplementedError

    def subset(self, indices: torch.Tensor) -> Split:
        """A split of the examples at ``indices`` (int64), in that order."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_examples


class TensorSplit(Split):
    """All examples in memory: ``x`` float32 [N, *input_shape], ``y`` [N] or [N, k].

    Args:
        x: inputs, float32.
        y: int64 class indices or float32 regression targets.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
        self.x = x
        self.y = y

    @property
    def num_examples(self) -> int:
        return int(self.x.shape[0])

    def targets(self) -> torch.Tensor:
        return self.y

    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, indices: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.x[indices], self.y[indices])

    def __repr__(self) -> str:
        return f"TensorSplit(x={tuple(self.x.shape)}, y={tuple(self.y.shape)} {self.y.dtype})"


class StreamSplit(Split):
    """A file-backed split: a map-style Dataset whose items are ``(x float32, y)`` pairs.

    Args:
        dataset: the dataset; when it has a ``targets`` attribute (a list or tensor of every
            label, the torchvision convention) :meth:`targets` uses it instead of loading
            every example.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._targets: torch.Tensor | None = None

    @property
    def num_examples(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def targets(self) -> torch.Tensor:
        if self._targets is None:
            known = _known_targets(self.dataset)
            if known is None:
                known = [torch.as_tensor(self.dataset[i][1]) for i in range(self.num_examples)]
                known = torch.stack(known) if known else torch.zeros(0, dtype=torch.int64)
            self._targets = known
        return self._targets

    def example_shape(self) -> tuple[int, ...]:
        if self.num_examples == 0:
            return ()
        return tuple(torch.as_tensor(self.dataset[0][0]).shape)

    def subset(self, indices: torch.Tensor) -> StreamSplit:
        return StreamSplit(Subset(self.dataset, indices.tolist()))

    def __repr__(self) -> str:
        return f"StreamSplit({type(self.dataset).__name__}, n={self.num_examples})"


def _known_targets(dataset: Any) -> torch.Tensor | None:
    """Labels a dataset can give without loading its examples (``targets``; Subset aware)."""
    if isinstance(dataset, Subset):
        parent = _known_targets(dataset.dataset)
        return None if parent is None else parent[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    return torch.as_tensor(np.asarray(targets) if not torch.is_tensor(targets) else targets)


@dataclass
class DataBundle:
    """What :func:`nnrun.data.load_data` returns.

    Attributes:
        train, val, test: the splits (val None when ``val_fraction`` is 0; test None unless
            requested and the source has one).
        task: ``"classification"`` or ``"regression"``.
        num_classes: the class count, None for regression.
        num_outputs: num_classes, or the regression target width (1 for targets of shape [N]).
        input_shape: one example's shape: (C, H, W) for images, (F,) for tabular data.
        class_names: names of the classes when the source knows them.
        description: one line for logs, e.g. ``"digits (built-in): 1294 train / 144 val"``.
        source: the recipe's ``data.source``.
        test_note: why ``test`` is None (used by :meth:`require_test`).
        where: the file or folder the data came from (named in messages), when there is one.
        notes: warnings about the training split (classes without examples).
        unfit: why the data cannot train a model (a single class), raised by :meth:`training_notes`.
    """

    train: Split
    val: Split | None
    test: Split | None
    task: str
    num_classes: int | None
    num_outputs: int
    input_shape: tuple[int, ...]
    class_names: list[str] | None
    description: str
    source: str = ""
    test_note: str | None = field(default=None, repr=False)
    where: str | None = None
    notes: list[str] = field(default_factory=list)
    unfit: DataError | None = field(default=None, repr=False)

    def training_notes(self) -> list[str]:
        """What training on this data should print; DataError when it cannot train (a single class).

        Prediction does not ask: predicting a file that holds one class is fine.
        """
        if self.unfit is not None:
            raise self.unfit
        return list(self.notes)

    def require_test(self) -> Split:
        """The test split, or a DataError saying why there is none and what to do."""
        if self.test is not None:
            return self.test
        note = self.test_note or f"source `{self.source}` has no test split"
        raise DataError(f"no test split: {note}",
                        hint="evaluate on the validation split, or use a source with a test split "
                             "(npz with x_test/y_test, image-folder with a test/ folder, mnist, "
                             "fashion-mnist, cifar10, digits)")


@dataclass
class SourceData:
    """What a source loader returns before the shared split/limit/task logic runs.

    Attributes:
        train, val, test: the source's own splits (val only from the python source).
        name: how the description names the source, e.g. ``"mnist (/data/mnist)"``.
        num_classes: the known class count (10 for mnist), None when unknown.
        class_names: names of the classes when known.
        where: the file or folder to name in errors found later.
        test_note: why test is None when the source has no test split.
    """

    train: Split
    val: Split | None = None
    test: Split | None = None
    name: str = ""
    num_classes: int | None = None
    class_names: list[str] | None = None
    where: str | None = None
    test_note: str | None = None


def as_inputs(x: Any, *, where: str, what: str = "inputs") -> torch.Tensor:
    """Inputs as a float32 tensor, refusing non-numeric arrays with a DataError."""
    try:
        arr = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{what} are not a numeric array ({exc})", where=where,
                        hint="provide numbers (int or float arrays)") from exc
    if arr.dtype == torch.bool or arr.is_complex():
        raise DataError(f"{what} have dtype {arr.dtype}; expected real numbers", where=where,
                        hint="convert them to float32")
    return arr.to(torch.float32)


def as_targets(y: Any, *, where: str) -> torch.Tensor:
    """Labels as int64 (integer or bool input) or float32 (floating input)."""
    try:
        arr = y if torch.is_tensor(y) else torch.as_tensor(np.asarray(y))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"labels are not a numeric array ({exc})", where=where,
                        hint="provide integer class indices or float targets") from exc
    if arr.dtype == torch.bool or not arr.is_floating_point():
        if arr.is_complex():
            raise DataError(f"labels have dtype {arr.dtype}", where=where, hint="use real numbers")
        return arr.to(torch.int64)
    return arr.to(torch.float32)


def check_pair(x: torch.Tensor, y: torch.Tensor, *, where: str, split: str) -> None:
    """Refuse empty data, x/y length mismatch and NaN/Inf in inputs or float targets."""
    if x.dim() == 0 or x.shape[0] == 0:
        raise DataError(f"the {split} split is empty", where=where,
                        hint="check the file/folder holds examples")
    if y.dim() == 0 or x.shape[0] != y.shape[0]:
        ny = 0 if y.dim() == 0 else y.shape[0]
        raise DataError(f"the {split} split has {x.shape[0]} inputs but {ny} labels", where=where,
                        hint="inputs and labels must have one entry per example, in the same order")
    check_finite(x, where=where, what=f"{split} inputs")
    if y.is_floating_point():
        check_finite(y, where=where, what=f"{split} targets")


def check_finite(t: torch.Tensor, *, where: str, what: str) -> None:
    """DataError naming how many values are NaN/Inf and the first example holding one."""
    if not t.is_floating_point():  # integer data (IDX, CIFAR bytes) cannot hold NaN/Inf
        return
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return
    count = int(bad.sum())
    first = int(bad.reshape(t.shape[0], -1).any(dim=1).nonzero()[0, 0]) if t.dim() > 0 else 0
    raise DataError(f"{what} contain {count} NaN/Inf value(s) (first in example {first})", where=where,
                    hint="remove or impute the missing/invalid values before training")


def tensor_split(x: Any, y: Any, *, where: str, split: str) -> TensorSplit:
    """Convert and check an (x, y) pair into a :class:`TensorSplit`."""
    xt, yt = as_inputs(x, where=where), as_targets(y, where=where)
    check_pair(xt, yt, where=where, split=split)
    return TensorSplit(xt, yt)


def describe_counts(parts: Sequence[tuple[str, Split | None]]) -> str:
    """``"1294 train / 144 val / 359 test"`` for the splits that exist."""
    return " / ".join(f"{s.num_examples} {name}" for name, s in parts if s is not None)


def shard_split(split: Split, rank: int, world: int) -> Split:
    """Process `rank`'s contiguous part of a split (evaluation on several processes: no example
    twice, none padded; the first `n % world` parts one example longer)."""
    if world == 1:
        return split
    return split.subset(torch.arange(split.num_examples).tensor_split(world)[rank])
