"""Weight averaging: checkpoint averaging and model soups (uniform or greedy), with BatchNorm
statistics measured both ways.

Parameters and floating buffers are summed in float64 and divided once (timm
``avg_checkpoints.py``), then cast back to each tensor's dtype; integer buffers (BatchNorm's
``num_batches_tracked``) keep the first member's value and dtype. Averaged BatchNorm running
statistics are not the statistics of the averaged network, so every soup is evaluated twice on
the validation split: with the averaged statistics, and after one pass over the training data in
train mode with cumulative statistics (``torch.optim.swa_utils.update_bn``); the better is kept
(a tie keeps the recomputed ones). The greedy soup (Wortsman et al., ICML 2022) adds members in
order of validation score only while the validation metric strictly improves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from nnrun import checkpoint
from nnrun.inference import predict, score


class WeightSum:
    """A running float64 sum of state dicts; :meth:`mean` gives the uniform average."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.first: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, state: dict) -> None:
        if self.n == 0:
            self.first = {k: v.detach().cpu().clone() for k, v in state.items()}
            self.sums = {k: v.detach().cpu().double() for k, v in state.items() if v.is_floating_point()}
        else:
            for k in self.sums:
                self.sums[k] += state[k].detach().cpu().double()
        self.n += 1

    def mean(self, extra: dict | None = None) -> dict:
        """The average of the states added so far (plus ``extra``, without adding it)."""
        n = self.n + (extra is not None)
        out = {}
        for k, first in self.first.items():
            if k not in self.sums:
                out[k] = first.clone()
                continue
            total = self.sums[k] + extra[k].detach().cpu().double() if extra is not None else self.sums[k]
            avg = total / n
            info = torch.finfo(first.dtype)
            out[k] = avg.clamp(info.min, info.max).to(first.dtype)
        return out


def average_state_dicts(states: Sequence[dict]) -> dict:
    """The uniform average of ``states`` (float64 sums, integer buffers from the first)."""
    acc = WeightSum()
    for state in states:
        acc.add(state)
    return acc.mean()


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass
class SoupContext:
    """What evaluating a soup needs: a model skeleton, the validation split, training batches."""

    model: nn.Module
    val: Any                   # whitened validation split
    train_batches: Any         # batches of the whitened training split (for BN statistics)
    loss_fn: nn.Module
    task: str
    device: torch.device
    metric: str                # validation metric that decides (e.g. val_acc)
    mode: str                  # max or min
    batch_size: int

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


@dataclass
class SoupEval:
    """A soup's validation metrics both ways and the weights kept."""

    state_dict: dict = field(repr=False)
    bn: str                          # recomputed | averaged | none (no BatchNorm layers)
    averaged_bn: dict                # validation metrics with the averaged running statistics
    recomputed_bn: dict | None       # ... after recomputing them on the training data
    metrics: dict                    # those of the kept weights
    metric: str                      # the deciding metric's name

    @property
    def value(self) -> float:
        return self.metrics[self.metric]


def _val_metrics(ctx: SoupContext) -> dict:
    outputs, targets = predict(ctx.model, ctx.val, batch_size=ctx.batch_size, device=ctx.device)
    return score(outputs, targets, ctx.loss_fn, task=ctx.task, prefix="val_")


def evaluate_soup(state: dict, ctx: SoupContext) -> SoupEval:
    """Validation metrics of ``state`` with averaged and with recomputed BN statistics."""
    ctx.model.load_state_dict(state)
    averaged = _val_metrics(ctx)
    if not has_batchnorm(ctx.model):
        return SoupEval(state, "none", averaged, None, averaged, ctx.metric)
    update_bn(ctx.train_batches.epoch(0), ctx.model, device=ctx.device)
    recomputed_state = {k: v.detach().cpu().clone() for k, v in ctx.model.state_dict().items()}
    recomputed = _val_metrics(ctx)
    if ctx.better(averaged[ctx.metric], recomputed[ctx.metric]):
        return SoupEval(state, "averaged", averaged, recomputed, averaged, ctx.metric)
    return SoupEval(recomputed_state, "recomputed", averaged, recomputed, recomputed, ctx.metric)


@dataclass
class GreedyStep:
    label: str
    value: float       # validation metric of the soup with this member added
    kept: bool


def uniform_soup(states: Sequence[dict], ctx: SoupContext) -> SoupEval:
    """Every member averaged with equal weight."""
    return evaluate_soup(average_state_dicts(states), ctx)


def greedy_soup(states: Sequence[dict], labels: Sequence[str], ctx: SoupContext) -> tuple[SoupEval, list[GreedyStep]]:
    """Greedy soup: ``states`` best first; each is kept only if the soup's metric strictly improves."""
    acc = WeightSum()
    acc.add(states[0])
    current = evaluate_soup(acc.mean(), ctx)
    steps = [GreedyStep(labels[0], current.value, True)]
    for state, label in zip(states[1:], labels[1:]):
        candidate = evaluate_soup(acc.mean(extra=state), ctx)
        kept = ctx.better(candidate.value, current.value)
        steps.append(GreedyStep(label, candidate.value, kept))
        if kept:
            acc.add(state)
            current = candidate
    return current, steps


def export_checkpoint(path: str | Path, *, template: str | Path, state_dict: dict, metrics: dict,
                      info: dict) -> Path:
    """Write the averaged model as a full nnrun checkpoint (``nnrun predict`` and resume load it).

    Everything but the weights comes from ``template`` (the first member: recipe, normalization,
    data info, optimizer/schedule/RNG state, history); ``ema`` is dropped, ``metrics`` and
    ``best`` describe the averaged model, and ``ensemble`` records how it was made.
    """
    payload = checkpoint.load(template)
    payload.pop("path", None)
    payload["model"] = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    payload["ema"] = None
    payload["metrics"] = dict(metrics)
    monitor = payload.get("monitor")
    if monitor in metrics:
        payload["best"] = {"value": metrics[monitor], "epoch": payload.get("epoch"), "step": payload.get("step")}
    payload["ensemble"] = dict(info)
    path = Path(path)
    checkpoint.save_atomic(payload, path)
    return path
