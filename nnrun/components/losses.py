"""Training losses, always on the model's raw outputs (logits for classification).

``cross_entropy`` applies log-softmax itself, so the model must not end in a softmax (a softmax
before ``CrossEntropyLoss`` trains badly and is a classic bug, design/algorithms.md section 10).
Regression losses compare float targets with the outputs element-wise; a ``[N]`` target against a
``[N, 1]`` output is matched by squeezing the output, and any other shape mismatch is an error,
because broadcasting ``[N, 1]`` against ``[N]`` would silently compare every output with every
target (an ``N x N`` loss).

All losses use ``reduction="mean"``: the mean over the batch's examples (and over the outputs of
each example for regression). ``loss * batch_size`` is therefore the batch's sum of per-example
losses, which :func:`nnrun.metrics.evaluate` relies on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nnrun.errors import NnrunError, RecipeError
from nnrun.recipe.rules import loss_problems
from nnrun.recipe.schema import TrainConfig
from nnrun.recipe.tables import TASKS

REGRESSION_LOSSES = {"mse": nn.MSELoss, "l1": nn.L1Loss, "smooth_l1": nn.SmoothL1Loss}


def match_regression(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs and float targets of the same shape (``[N, 1]`` outputs squeezed for ``[N]`` targets).

    Raises:
        NnrunError: shapes that differ otherwise (usually a wrong number of model outputs).
    """
    if targets.dim() == 1 and outputs.dim() == 2 and outputs.shape[1] == 1:
        outputs = outputs.squeeze(1)
    if outputs.shape != targets.shape:
        raise NnrunError(f"model outputs have shape {tuple(outputs.shape)} but regression targets have "
                         f"shape {tuple(targets.shape)}",
                         hint="build the model with one output per target value")
    return outputs, targets.to(outputs.dtype)


class RegressionLoss(nn.Module):
    """``mse``/``l1``/``smooth_l1`` (mean reduction) with the target-shape matching above."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = REGRESSION_LOSSES[name]()

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        outputs, targets = match_regression(outputs, targets)
        return self.fn(outputs, targets)


def build_loss(train_cfg: TrainConfig, *, task: str) -> nn.Module:
    """The loss module for ``train.loss`` on a known task.

    Args:
        train_cfg: the ``train`` section.
        task: ``classification`` or ``regression`` (resolved, not ``auto``).

    Returns:
        ``nn.CrossEntropyLoss(label_smoothing=...)`` or a :class:`RegressionLoss`; mean reduction.

    Raises:
        RecipeError: the problems :func:`nnrun.recipe.rules.loss_problems` finds.
        NnrunError: an unresolved task.
    """
    if task not in TASKS:
        raise NnrunError(f"the loss needs a resolved task, got `{task}`", where="data.task",
                         hint="set data.task to classification or regression")
    problems = loss_problems(train_cfg, task=task)
    if problems:
        raise RecipeError(problems)
    if train_cfg.loss == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=train_cfg.label_smoothing)
    return RegressionLoss(train_cfg.loss)


def summed_loss(loss_fn: nn.Module, outputs: Tensor, targets: Tensor) -> Tensor:
    """The batch's sum of per-example losses, from a mean-reduced loss: ``mean * batch size``.

    Equal up to rounding for every loss :func:`build_loss` returns (label smoothing included), as
    none has class weights, so summing over batches and dividing by the example count gives the
    full set's mean loss, the training loss's definition. Computed in float64, so the sum does not
    depend on how the set is cut into batches or shared out across processes (to ~1e-15). Stays on
    the device (no host sync; float32 on MPS, which has no float64).
    """
    wide = torch.float32 if outputs.device.type == "mps" else torch.float64
    return loss_fn(outputs.to(wide), targets) * targets.shape[0]
