"""`nnrun schedule` as a function: a recipe's learning rates and momentum per step, no training.

Seeing the whole curve (warmup, restarts, cycles, the final decay) before spending compute
catches a schedule that does not fit the run. The plateau modifier depends on metrics that do
not exist yet, so the preview shows the schedule as if the metric kept improving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nnrun.build import build
from nnrun.components.optim import get_momentum, group_names
from nnrun.errors import NnrunError, writing
from nnrun.recipe.schema import Recipe


@dataclass
class SchedulePreview:
    steps: list[int]
    lrs: dict[str, list[float]]           # per group name
    momentum: list[float] | None          # momentum or Adam beta1, when it moves or is set
    steps_per_epoch: int
    total_steps: int
    notes: list[str]


def preview(recipe: Recipe, *, max_points: int = 2000) -> SchedulePreview:
    """Every group's rate (and the momentum) over the run, sampled at up to `max_points` steps."""
    c = build(recipe, device=torch.device("cpu"))
    total = c.total_steps
    stride = max(1, total // max_points)
    steps = list(range(0, total, stride)) + ([total - 1] if (total - 1) % stride else [])
    names = group_names(c.optimizer)
    bases = [g["lr"] for g in c.optimizer.param_groups]
    lrs = {n: [] for n in names}
    for step in steps:
        factor = c.schedule.factor(step)
        for n, base in zip(names, bases):
            lrs[n].append(base * factor)
    base_m = get_momentum(c.optimizer.param_groups[0])
    moms = [c.schedule.momentum_at(s) for s in steps]
    momentum = None if base_m is None and all(m is None for m in moms) else \
        [base_m if m is None else m for m in moms]
    notes = []
    if c.schedule.plateau is not None:
        notes.append("the plateau modifier cuts the rate when train.monitor stalls: not shown (needs metrics)")
    return SchedulePreview(steps, lrs, momentum, len(c.train_batches), total, notes)


def plot(result: SchedulePreview, path: str | Path, title: str) -> Path:
    """PNG of the rates (log axis) and the momentum; needs matplotlib (`pip install 'nnrun[plot]'`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise NnrunError("the PNG plot needs matplotlib", hint="pip install 'nnrun[plot]' (or matplotlib)") from exc
    epochs = [s / result.steps_per_epoch for s in result.steps]
    rows = 2 if result.momentum else 1
    fig, axes = plt.subplots(rows, 1, figsize=(8, 3 * rows), sharex=True, squeeze=False)
    for name, values in result.lrs.items():
        axes[0][0].plot(epochs, values, label=name)
    axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel("learning rate")
    axes[0][0].legend(fontsize="small")
    axes[0][0].set_title(title)
    if result.momentum:
        axes[1][0].plot(epochs, result.momentum, color="tab:orange")
        axes[1][0].set_ylabel("momentum / beta1")
    axes[-1][0].set_xlabel("epoch")
    fig.tight_layout()
    path = Path(path)
    try:
        with writing(str(path), hint="choose a writable --out path"):
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
