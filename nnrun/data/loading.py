"""``load_data``: a recipe's data section -> a :class:`DataBundle`.

Order of operations: load the source; keep the first ``limit`` training examples; settle the
task and label dtypes; count the classes on the (limited) training set; carve the seeded
validation split (unless the source gave one); check every split's labels and input shapes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from nnrun.data.cache import cache_splits
from nnrun.data.classes import check_class_count, empty_classes_note, single_class_error
from nnrun.data.datasets import DATASETS
from nnrun.data.download import is_conventional, public_folder
from nnrun.data.sources import get_source
from nnrun.data.splits import DataBundle, SourceData, Split, StreamSplit, TensorSplit, describe_counts
from nnrun.errors import DataError


def resolve_path(raw: str | None, kind: str, source: str, base_dir: Path | None) -> Path:
    """``data.path`` made absolute: against ``base_dir`` (the recipe's folder), then the cwd."""
    if not raw:
        raise DataError(f"data.path is required for source `{source}` (a {kind})",
                        hint=f"set data.path to the {kind} holding the data")
    candidates = _candidates(raw, base_dir)
    for cand in candidates:
        if (cand.is_dir() if kind == "folder" else cand.is_file()):
            return cand.resolve()
    wrong = next((c for c in candidates if c.exists()), None)
    if wrong is not None:
        raise DataError(f"is not a {kind} (source `{source}` needs a {kind})", where=str(wrong),
                        hint=f"point data.path at a {kind}")
    tried = " or ".join(str(c) for c in candidates)
    fetch = f", or fetch it there with `nnrun data get {source} --to {raw}`" if source in DATASETS else ""
    raise DataError(f"data {kind} not found: {raw} (looked for {tried})", where=str(raw),
                    hint="relative paths are resolved against the recipe's folder, then the current "
                         f"directory; fix data.path or download the data there{fetch}")


def _candidates(raw: str, base_dir: Path | None) -> list[Path]:
    path = Path(os.path.expanduser(raw))
    return [path] if path.is_absolute() else [c / path for c in (base_dir, Path.cwd()) if c is not None]


def data_location(cfg, path_kind: str | None, base_dir: Path | None) -> tuple[Path | None, list[str]]:
    """Where the source reads from, and notes: ``data.path``; for a public set (`mnist`,
    `fashion-mnist`, `cifar10`) with no ``data.path``, or with the shipped recipes' ``data/<set>``
    that does not exist, the download cache (filled first unless ``data.download`` is false)."""
    if not path_kind:
        return None, []
    if cfg.source in DATASETS:
        if not cfg.path:
            return public_folder(cfg.source, download=cfg.download)
        if is_conventional(cfg.path) and not any(c.exists() for c in _candidates(cfg.path, base_dir)):
            return public_folder(cfg.source, download=cfg.download, missing=cfg.path)
    return resolve_path(cfg.path, path_kind, cfg.source, base_dir), []


class _CastTargets(Dataset):
    """A streamed dataset whose labels are cast to ``dtype`` (regression on integer labels)."""

    def __init__(self, dataset: Dataset, dtype: torch.dtype):
        self.dataset, self.dtype = dataset, dtype

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return x, torch.as_tensor(y).to(self.dtype)


def _cast(split: Split | None, dtype: torch.dtype) -> Split | None:
    """The split with targets of ``dtype`` (no-op when they already are)."""
    if split is None or split.targets().dtype == dtype:
        return split
    if isinstance(split, TensorSplit):
        return TensorSplit(split.x, split.y.to(dtype))
    cast = StreamSplit(_CastTargets(split.dataset, dtype))
    cast._targets = split.targets().to(dtype)
    return cast


def settle_task(task: str, data: SourceData) -> str:
    """The task (auto -> by label dtype) with every split's labels converted to match."""
    y = data.train.targets()
    if task == "auto":
        task = "regression" if y.is_floating_point() else "classification"
    if task == "classification" and y.is_floating_point():
        for split in (data.train, data.val, data.test):
            if split is None:
                continue
            t = split.targets()
            if not isinstance(split, TensorSplit) or not bool((t == t.round()).all()):
                raise DataError("data.task is classification but the labels are not integers "
                                f"(e.g. {t.flatten()[0].item()})", where=data.where,
                                hint="use integer class indices, or set data.task: regression")
    dtype = torch.int64 if task == "classification" else torch.float32
    data.train, data.val, data.test = (_cast(s, dtype) for s in (data.train, data.val, data.test))
    return task


def carve_val(train: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """Split off round(fraction * n) (at least 1) examples with a permutation seeded by ``seed``."""
    n = train.num_examples
    if fraction <= 0:
        return train, None
    n_val = max(1, int(round(fraction * n)))
    if n_val >= n:
        raise DataError(f"val_fraction {fraction} of {n} examples leaves none for training",
                        hint="lower data.val_fraction or use more examples (data.limit)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return train.subset(train_idx), train.subset(val_idx)


def check_labels(task: str, splits: dict[str, Split | None], known: int | None, where: str | None) -> int:
    """Check label shapes and ranges; return the output width (classes or target width)."""
    train_y = splits["train"].targets()
    if task == "regression":
        if train_y.dim() > 2:
            raise DataError(f"regression targets have shape {tuple(train_y.shape)}; expected [N] or [N, k]",
                            where=where, hint="flatten each target to a vector")
        return 1 if train_y.dim() == 1 else int(train_y.shape[1])
    num_classes = known if known is not None else int(train_y.max()) + 1
    check_class_count(num_classes, where=where)
    for name, split in splits.items():
        if split is None:
            continue
        y = split.targets()
        if y.dim() != 1:
            raise DataError(f"{name} class labels have shape {tuple(y.shape)}; expected one integer per "
                            "example", where=where, hint="store labels as a 1-D array of class indices")
        bad = (y < 0) | (y >= num_classes)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise DataError(f"{name} label {int(y[first])} (example {first}) is outside 0..{num_classes - 1}; "
                            f"{int(bad.sum())} label(s) out of range", where=where,
                            hint="class labels must be 0..num_classes-1, counted on the training split")
    return num_classes


def load_data(cfg, *, seed: int, base_dir: Path | None = None, with_test: bool = False) -> DataBundle:
    """Load the recipe's data: train, a seeded val split and, when asked, test.

    Args:
        cfg: the recipe's ``DataConfig``.
        seed: seeds the validation carve-out (same seed, same split).
        base_dir: the recipe's folder; relative ``data.path`` resolves against it, then the cwd.
        with_test: also load the test split (None when the source has none; see
            :meth:`DataBundle.require_test`).

    Returns:
        The DataBundle. Inputs are raw (normalize with :mod:`nnrun.data.normalize`).

    Raises:
        DataError: missing/corrupt files, bad shapes, labels out of range, NaN/Inf inputs; a public
            set that cannot be downloaded (see :mod:`nnrun.data.download`).
        OutputError: the download cache cannot be written.
    """
    info, loader = get_source(cfg.source)
    path, located = data_location(cfg, info.path_kind, base_dir)
    data = loader(cfg, path, with_test)
    limited = cfg.limit is not None and cfg.limit < data.train.num_examples
    if limited:
        data.train = data.train.subset(torch.arange(cfg.limit))
    task = settle_task(cfg.task, data)
    known, unfit = data.num_classes, None
    if task == "classification" and known is None:  # count on the whole (limited) training set
        known = check_labels(task, {"train": data.train}, None, data.where)
    if task == "classification":
        unfit = single_class_error(cfg, data.train.targets(), data.class_names, where=data.where,
                                   limit=cfg.limit if limited else None)
    if data.val is None:
        data.train, data.val = carve_val(data.train, cfg.val_fraction, seed)
    splits = {"train": data.train, "val": data.val, "test": data.test}
    width = check_labels(task, splits, known, data.where)
    empty = None
    if task == "classification" and unfit is None:
        empty = empty_classes_note(data.train.targets(), width, data.class_names, where=data.where,
                                   counted=data.num_classes is None, limit=cfg.limit if limited else None)
    input_shape = data.train.example_shape()
    for name, split in splits.items():
        if split is not None and split.example_shape() != input_shape:
            raise DataError(f"{name} examples have shape {split.example_shape()} but train examples "
                            f"{input_shape}", where=data.where, hint="every split needs the same input shape")
    notes = located + ([empty] if empty else [])
    notes += cache_splits(splits, mode=cfg.cache, max_mb=cfg.cache_max_mb, fixed_items=info.fixed_items)
    data.train, data.val, data.test = splits["train"], splits["val"], splits["test"]
    note = None
    if data.test is None:
        note = "the test split was not requested (load_data(..., with_test=True))" if not with_test \
            else data.test_note or f"source `{cfg.source}` has no test split"
    counts = describe_counts([("train", data.train), ("val", data.val), ("test", data.test)])
    return DataBundle(train=data.train, val=data.val, test=data.test, task=task,
                      num_classes=width if task == "classification" else None, num_outputs=width,
                      input_shape=tuple(input_shape),
                      class_names=data.class_names if task == "classification" else None,
                      description=f"{data.name}: {counts}", source=cfg.source, test_note=note, where=data.where,
                      notes=notes, unfit=unfit)
