"""What the class labels of a classification task say before training: a single class (nothing
to learn), classes with no training example (labels that skip numbers), and class counts too
large to be class indices.

A single class and empty classes concern training only (predicting on a file that holds one
class is fine), so :func:`nnrun.data.load_data` records them on the :class:`DataBundle` and the
training build asks for them (:meth:`DataBundle.training_notes`).
"""

from __future__ import annotations

import torch

from nnrun.errors import DataError

MAX_CLASSES = 1_000_000
"""More classes than this are not class indices but ids (a classifier gets one output per class)."""

SHOWN = 8
"""Empty classes named in a warning; the rest are counted."""


def _label_phrase(cfg) -> tuple[str, str]:
    """How messages name the labels of ``cfg.source``, and how to give them more classes."""
    if cfg.source == "csv":
        return (f"the label column `{cfg.label_column}`",
                "point data.label_column at the column holding each row's class, or use data.task: regression "
                "for a numeric target")
    if cfg.source == "image-folder":
        return "the image folder", "put each class's images in its own subfolder, one subfolder per class"
    return "the training labels", "give examples of every class (class indices 0..K-1)"


def _name(index: int, class_names: list[str] | None) -> str:
    return f"`{class_names[index]}`" if class_names and index < len(class_names) else str(index)


def single_class_error(cfg, targets: torch.Tensor, class_names: list[str] | None, *, where: str | None,
                       limit: int | None) -> DataError | None:
    """A DataError when the (limited) training labels hold fewer than 2 classes, else None.

    Args:
        cfg: the recipe's DataConfig (source, label_column).
        targets: the class indices of the training examples before the validation carve-out.
        class_names: the names of the classes when the source knows them.
        where: the file or folder named in the message.
        limit: ``data.limit`` when it cut the training examples.
    """
    present = torch.unique(targets)
    if present.numel() >= 2:
        return None
    what, hint = _label_phrase(cfg)
    found = _name(int(present[0]), class_names) if present.numel() else "none"
    if limit is not None:
        return DataError(f"the first {limit} training examples (data.limit) hold a single class ({found}); "
                         "a classifier needs at least 2", where=where,
                         hint="raise data.limit, or order the examples so that the first ones mix the classes")
    return DataError(f"{what} has a single class ({found}); a classifier needs at least 2", where=where, hint=hint)


def _spans(indices: list[int]) -> list[str]:
    """[3, 4, 5, 9] -> ['3..5', '9']."""
    out, start = [], None
    for i, v in enumerate(indices):
        if start is None:
            start = v
        if i + 1 == len(indices) or indices[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}..{v}")
            start = None
    return out


def empty_classes_note(targets: torch.Tensor, num_classes: int, class_names: list[str] | None, *,
                       where: str | None, counted: bool, limit: int | None) -> str | None:
    """A warning naming the classes 0..num_classes-1 that no training example has, else None.

    Args:
        targets: the training split's class indices (after the validation carve-out).
        counted: the class count comes from the largest label (csv, npz, python), not the source.
        limit: ``data.limit`` when it cut the training examples.
    """
    counts = torch.bincount(targets.flatten(), minlength=num_classes)
    empty = (counts == 0).nonzero().flatten().tolist()
    if not empty:
        return None
    if class_names:
        listed = [_name(i, class_names) for i in empty[:SHOWN]] + (["..."] if len(empty) > SHOWN else [])
    else:
        spans = _spans(empty)
        listed = spans[:SHOWN] + (["..."] if len(spans) > SHOWN else [])
    verb = "has" if len(empty) == 1 else "have"
    text = (f"warning: {len(empty)} of {num_classes} classes {verb} no training example"
            f"{f' in {where}' if where else ''}: {', '.join(listed)}; their outputs are never trained")
    if counted:
        text += (f" (the model has one output per label 0..{num_classes - 1}, up to the largest label: "
                 "renumber the labels 0..K-1 if the gaps are not intended)")
    elif limit is not None:
        text += f" (data.limit keeps only the first {limit} examples)"
    return text


def check_class_count(num_classes: int, *, where: str | None) -> None:
    """Refuse a label so large that it cannot be a class index (one output per class)."""
    if num_classes > MAX_CLASSES:
        raise DataError(f"the largest label is {num_classes - 1}, which would make a classifier with "
                        f"{num_classes:,} outputs (one per class 0..{num_classes - 1})", where=where,
                        hint=f"class labels must be indices 0..K-1 (at most {MAX_CLASSES:,} classes): renumber "
                             "them, use text labels (they are numbered for you), or set data.task: regression")
