"""Metrics: an on-device accumulator and the evaluation loop.

The metric names and their direction (``mode``) live in :mod:`nnrun.recipe.tables`.

:class:`Accumulator` keeps its sums as tensors on the model's device and never calls ``.item()``
per batch: a host sync per batch stalls an asynchronous GPU pipeline. :meth:`Accumulator.compute`
moves everything to the host in one transfer. Sums are kept in float64 (int64 for counts) so a
large evaluation set does not lose precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from nnrun.components.losses import match_regression, summed_loss
from nnrun.errors import NnrunError
from nnrun.recipe.tables import metric_names


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

    def reduce(self, all_reduce_sum) -> None:
        """Add up the sums and counts of every process (one collective): metrics of a split shared
        out across processes are then exactly those of the whole split."""
        packed = torch.cat([self._sums.double(), torch.tensor([float(self.examples), float(self.values)],
                                                              dtype=torch.float64, device=self.device)])
        all_reduce_sum(packed)
        self._sums = packed[:3].to(self._sums.dtype)
        self.examples, self.values = int(packed[3].item()), int(packed[4].item())

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
             device: torch.device | str, prefix: str = "val_",
             all_reduce_sum: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
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
        all_reduce_sum: several processes, each with its part of the split: sums the accumulated
            sums and counts over them before the metrics are computed.

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
    if all_reduce_sum is not None:
        acc.reduce(all_reduce_sum)
    return acc.compute(prefix)
