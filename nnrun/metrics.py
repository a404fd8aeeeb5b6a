"""Metrics: names with an explicit mode, and an on-device accumulator.

Every metric says whether bigger is better (``mode``); nothing guesses it from the name (Lightning's
EarlyStopping takes ``mode`` explicitly; Keras' guess from "acc" in the name is the counter-example).

:class:`Accumulator` keeps its sums as tensors on the model's device and never calls ``.item()``
per batch: a host sync per batch stalls an asynchronous GPU pipeline. :meth:`Accumulator.compute`
moves everything to the host in one transfer. Sums are kept in float64 (int64 for counts) so a
large evaluation set does not lose precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from nnrun.errors import NnrunError, did_you_mean
from nnrun.losses import match_regression, summed_loss


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


class Accumulator:
    """Sums of loss, correct predictions and errors over batches, kept on ``device``.

    Args:
        task: ``classification`` or ``regression``.
        device: where the sums live (the model's device).
    """

    def __init__(self, task: str, device: torch.device | str):
        metric_names(task)  # validates the task
        self.task = task
        self.device = torch.device(device)
        # MPS has no float64; everywhere else float64 sums do not drift over large sets.
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._sums = torch.zeros(3, dtype=dtype, device=self.device)  # loss, correct|abs err, sq err
        self.examples = 0  # host-side ints: batch sizes are known on the host, no sync needed
        self.values = 0

    def update(self, outputs: Tensor, targets: Tensor, loss_sum: Tensor) -> None:
        """Add one batch.

        Args:
            outputs: the model's outputs for the batch (logits for classification).
            targets: class indices (or class probabilities) / regression targets.
            loss_sum: the batch's *summed* per-example loss (see :func:`nnrun.losses.summed_loss`).
        """
        outputs, targets = outputs.detach(), targets.detach()
        sums = self._sums.dtype
        if self.task == "classification":
            labels = targets.argmax(1) if targets.dim() == outputs.dim() else targets
            correct = (outputs.argmax(1) == labels).sum().to(sums)
            batch = torch.stack([torch.as_tensor(loss_sum, device=self.device).detach().to(sums),
                                 correct, correct.new_zeros(())])
        else:
            outputs, targets = match_regression(outputs, targets)
            err = (outputs - targets).to(sums)
            batch = torch.stack([torch.as_tensor(loss_sum, device=self.device).detach().to(sums),
                                 err.abs().sum(), err.square().sum()])
            self.values += err.numel()
        self._sums += batch
        self.examples += targets.shape[0]

    def compute(self, prefix: str = "val_") -> dict[str, float]:
        """The metrics so far, e.g. ``{"val_loss": ..., "val_acc": ...}`` (one host transfer).

        Raises:
            NnrunError: nothing was accumulated (an empty split).
        """
        if self.examples == 0:
            raise NnrunError(f"no examples to compute {prefix}metrics from (the split is empty)",
                             hint="check data.val_fraction / data.limit")
        loss, a, b = self._sums.cpu().tolist()
        result = {f"{prefix}loss": loss / self.examples}
        if self.task == "classification":
            result[f"{prefix}acc"] = a / self.examples
        else:
            result[f"{prefix}mae"] = a / self.values
            result[f"{prefix}rmse"] = math.sqrt(b / self.values)
        return result


def evaluate(model: nn.Module, batches: Iterable, loss_fn: nn.Module, *, task: str,
             device: torch.device | str, prefix: str = "val_") -> dict[str, float]:
    """Loss and metrics of ``model`` over ``batches`` of ``(x, y)``.

    Runs in eval mode under ``torch.inference_mode()`` and restores every module's previous
    train/eval flag afterwards (a module frozen in eval on purpose stays so). The loss is
    ``loss_fn`` (mean) times the batch size, summed and divided by the example count: the mean
    per-example loss over the whole set, however the last batch is cut.

    Args:
        model: the network.
        batches: an iterable of ``(x, y)`` tensor pairs.
        loss_fn: the training loss (mean reduction).
        task: ``classification`` or ``regression``.
        device: the model's device; batches are moved there with ``non_blocking=True``.
        prefix: metric name prefix (``val_``, ``test_``...).

    Returns:
        e.g. ``{"val_loss": 0.31, "val_acc": 0.91}``.
    """
    device = torch.device(device)
    acc = Accumulator(task, device)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            for x, y in batches:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                out = model(x)
                acc.update(out, y, summed_loss(loss_fn, out, y))
    finally:
        for m, mode in modes.items():
            m.training = mode
    return acc.compute(prefix)
