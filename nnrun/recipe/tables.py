"""Pure tables that the recipe layer and the components share, one place each.

- the metrics a run reports, each with an explicit direction (`mode`): nothing guesses it from
  the name (Lightning's EarlyStopping takes ``mode`` explicitly; Keras' guess from "acc" in the
  name is the counter-example);
- what each data source is known to hold (task, input shape, whether `data.path` names a file or
  a folder), so shape and task checks run before any data is read;
- the optimizers with fused kernels;
- how `train.monitor: auto` resolves.

No torch here: `nnrun check` validates a recipe without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnrun.errors import NnrunError, did_you_mean

# ---------------------------------------------------------------------------------------------
# metrics


@dataclass(frozen=True)
class MetricInfo:
    """A metric's name, whether bigger (``max``) or smaller (``min``) is better, and what it is."""

    name: str
    mode: str
    doc: str


_BASE = {
    "loss": ("min", "mean loss per example, same definition as the training loss"),
    "acc": ("max", "classification accuracy: share of examples whose top logit is the label"),
    "mae": ("min", "regression mean absolute error over all target values"),
    "rmse": ("min", "regression root mean squared error over all target values"),
}
_SPLITS = {"train_": "training set (averaged over the epoch's batches)", "val_": "validation split",
           "test_": "test split"}
METRICS = {f"{split}{base}": MetricInfo(f"{split}{base}", mode, f"{doc}, on the {where}")
           for split, where in _SPLITS.items() for base, (mode, doc) in _BASE.items()}
TASKS = ("classification", "regression")


def metric_names(task: str) -> list[str]:
    """The metrics a training run reports for ``task`` (``classification`` or ``regression``)."""
    if task == "classification":
        return ["val_loss", "val_acc", "train_loss"]
    if task == "regression":
        return ["val_loss", "val_mae", "val_rmse", "train_loss"]
    raise NnrunError(f"unknown task `{task}`", where="data.task", hint="use classification or regression")


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of ``name`` (e.g. ``val_acc``).

    Raises:
        NnrunError: an unknown name, listing the valid ones and the closest.
    """
    if name not in METRICS:
        raise NnrunError(f"unknown metric `{name}`{did_you_mean(name, METRICS)}",
                         hint=f"valid metrics: {', '.join(METRICS)}")
    return METRICS[name]


def default_monitor(task: str) -> str:
    """The metric that picks the best checkpoint: ``val_acc`` (classification) or ``val_loss``."""
    metric_names(task)  # validates the task
    return "val_acc" if task == "classification" else "val_loss"


# ---------------------------------------------------------------------------------------------
# data sources


@dataclass(frozen=True)
class SourceFacts:
    """What a data source is known to hold before anything is read.

    Attributes:
        task: the task it fixes, or None when the labels decide (`csv`, `npz`, `python`).
        input_shape: (C, H, W) of its examples, or None when the files decide.
        path_kind: ``"folder"``, ``"file"`` or None when ``data.path`` is not used.
        doc: one line for listings.
        train_examples: the training set's size (before `data.limit` and the validation carve) when
            it is fixed, so checks that count optimizer steps can run before any data is read.
        fixed_items: a streamed source whose examples are pure functions of its files (no random
            augmentation), so `data.cache: auto` may decode them once and keep them in memory.
        public: a public set nnrun can download (:mod:`nnrun.data.datasets` holds its files and
            checksums): without `data.path` it is read from the download cache.
    """

    task: str | None
    input_shape: tuple[int, ...] | None
    path_kind: str | None
    doc: str
    train_examples: int | None = None
    fixed_items: bool = False
    public: bool = False


SOURCES: dict[str, SourceFacts] = {
    "digits": SourceFacts("classification", (1, 8, 8), None,
                          "1,797 8x8 digits shipped with nnrun (fixed 20% test split)", train_examples=1438),
    "mnist": SourceFacts("classification", (1, 28, 28), "folder", "MNIST IDX files (optionally .gz)",
                         public=True),
    "fashion-mnist": SourceFacts("classification", (1, 28, 28), "folder", "Fashion-MNIST IDX files", public=True),
    "cifar10": SourceFacts("classification", (3, 32, 32), "folder", "CIFAR-10 python batches", public=True),
    "csv": SourceFacts(None, None, "file", "a csv file with a header row"),
    "npz": SourceFacts(None, None, "file", "an npz file with x, y [, x_test, y_test]"),
    "image-folder": SourceFacts("classification", None, "folder",
                                "train/[val/ test/] folders of class subfolders of .npy/.png/.jpg files",
                                fixed_items=True),
    "python": SourceFacts(None, None, None, "module:function returning (train, val, test)"),
}

# ---------------------------------------------------------------------------------------------
# optimizers and the monitor

FUSED_OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")
"""Optimizers whose torch implementation has a fused kernel (CPU and CUDA)."""


def known_task(recipe) -> str | None:
    """The task when the recipe fixes it (explicitly or through a built-in source), else None."""
    if recipe.data.task != "auto":
        return recipe.data.task
    return SOURCES[recipe.data.source].task


def has_validation(recipe) -> bool:
    """Whether the run has a validation split (carved by `data.val_fraction`, or given by `python`)."""
    return recipe.data.val_fraction > 0 or recipe.data.source == "python"


def resolve_monitor(monitor: str, task: str | None) -> str:
    """`auto` -> the task's default monitor (`val_loss` while the task is unknown); others unchanged."""
    if monitor != "auto":
        return monitor
    return default_monitor(task) if task else "val_loss"


def split_seed(recipe) -> int:
    """The seed that carves the validation split: `data.split_seed`, else `seed`."""
    return recipe.data.split_seed if recipe.data.split_seed is not None else recipe.seed
