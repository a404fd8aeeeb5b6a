"""The composition root: validated recipe -> the components of a run.

Each builder gets only its own recipe section plus the runtime facts it needs (input shape,
steps per epoch), torchtune style; nothing else in nnrun wires components together.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnrun import recipe as recipe_io
from nnrun.config import Recipe
from nnrun.errors import NnrunError, RecipeError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from the recipe's seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; asking for cuda without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NnrunError("device `cuda` was asked for but torch sees no CUDA GPU",
                         hint="use --device cpu (or auto), or install a CUDA build of torch")
    return torch.device(name)


@dataclass
class Components:
    """Everything a run needs, built from one recipe."""

    recipe: Recipe
    device: torch.device
    data: Any                   # nnrun.data.DataBundle
    normalizer: dict
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any               # nnrun.schedules.Schedule
    loss_fn: nn.Module
    train_batches: Any          # nnrun.data.batching.Batches
    val_batches: Any | None
    total_steps: int
    notes: list[str] = field(default_factory=list)  # what the build did that a person should see

    def data_info(self) -> dict:
        """What predict/ensemble need to know about the data without loading it."""
        d = self.data
        return {"task": d.task, "num_classes": d.num_classes, "num_outputs": d.num_outputs,
                "input_shape": list(d.input_shape), "class_names": d.class_names}

    def recipe_dict(self) -> dict:
        return recipe_io.to_dict(self.recipe)


def monitor_of(recipe: Recipe, task: str) -> tuple[str, str]:
    """The monitored metric and its direction (from the metric registry, never from its name)."""
    from nnrun.metrics import default_monitor, metric_info, metric_names

    name = recipe.train.monitor if recipe.train.monitor != "auto" else default_monitor(task)
    if name not in metric_names(task):
        raise RecipeError([f"`train.monitor`: `{name}` is not produced by a {task} task; "
                           f"choose one of {', '.join(metric_names(task))}"])
    return name, metric_info(name).mode


def split_seed(recipe: Recipe) -> int:
    """The seed that carves the validation split: `data.split_seed`, else `seed`."""
    return recipe.data.split_seed if recipe.data.split_seed is not None else recipe.seed


def build_data(recipe: Recipe, *, base_dir: Path | None, normalizer: dict | None = None,
               with_test: bool = False):
    """Load the splits and whiten them with training-split statistics (or stored ones)."""
    from nnrun.data import load_data
    from nnrun.data.normalize import fit_normalizer, normalize_split

    bundle = load_data(recipe.data, seed=split_seed(recipe), base_dir=base_dir, with_test=with_test)
    if normalizer is None:
        normalizer = fit_normalizer(bundle.train, recipe.data.normalize, recipe.data.tanh_scale)
    for split in ("train", "val", "test"):
        part = getattr(bundle, split)
        if part is not None:
            setattr(bundle, split, normalize_split(part, normalizer))
    return bundle, normalizer


def build_model(recipe: Recipe, data: Any, *, device: torch.device) -> nn.Module:
    """The network, initialized per `init` (LSUV sees one training batch)."""
    from nnrun.init import init_weights
    from nnrun.models import build_model as make

    model = make(recipe.model, input_shape=tuple(data.input_shape), num_outputs=data.num_outputs)
    sample = None
    if recipe.init.weights == "lsuv":
        from nnrun.data.batching import make_batches

        batches = make_batches(data.train, batch_size=max(recipe.data.batch_size, 32), shuffle=False,
                               seed=recipe.seed)
        sample = next(iter(batches.epoch(0)))[0]
    init_weights(model, recipe.init, activation=recipe.model.activation, sample=sample)
    return model.to(device)


def load_pretrained(model: nn.Module, source: str) -> str:
    """`init.from`: non-strict load of an nnrun checkpoint's (or a plain state dict's) weights.

    Tensors whose shape differs (a new head, say) are skipped like missing ones; the returned
    note lists what was loaded, missing, unexpected and skipped.
    """
    from nnrun import checkpoint
    from nnrun.errors import CheckpointError

    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"init.from: {path} does not exist", hint="give an nnrun .pt file or a state-dict file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the safe loader names the problem
        blob = checkpoint.load(path)
    state = blob.get("model", blob.get("state_dict", blob)) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"init.from: {path} holds no state dict of tensors",
                              hint="give an nnrun checkpoint or a file saved with torch.save(model.state_dict())")
    own = model.state_dict()
    shape_skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    result = model.load_state_dict({k: v for k, v in state.items() if k not in shape_skipped}, strict=False)
    loaded = len(state) - len(shape_skipped) - len(result.unexpected_keys)
    parts = [f"init.from {path.name}: loaded {loaded} tensors"]
    for label, keys in (("missing (kept their init)", result.missing_keys),
                        ("unexpected (ignored)", result.unexpected_keys), ("shape differs (kept init)", shape_skipped)):
        if keys:
            parts.append(f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
    return "; ".join(parts)


def build(recipe: Recipe, *, device: torch.device, base_dir: Path | None = None,
          normalizer: dict | None = None) -> Components:
    """Build every component of a training run from a validated recipe."""
    from nnrun.data.batching import make_batches
    from nnrun.freeze import check_patterns
    from nnrun.losses import build_loss
    from nnrun.optim import build_optimizer, describe_groups
    from nnrun.schedules import build_schedule, schedule_problems

    seed_everything(recipe.seed)
    data, normalizer = build_data(recipe, base_dir=base_dir, normalizer=normalizer)
    d = recipe.data
    train_batches = make_batches(data.train, batch_size=d.batch_size, shuffle=d.shuffle, seed=recipe.seed,
                                 drop_last=d.drop_last, num_workers=d.num_workers, device=device)
    if len(train_batches) == 0:
        raise RecipeError([f"`data.batch_size`: {d.batch_size} with drop_last leaves no batch of the "
                           f"{data.train.num_examples} training examples; lower it or set drop_last: false"])
    val_batches = None if data.val is None else make_batches(
        data.val, batch_size=d.eval_batch_size, shuffle=False, seed=recipe.seed,
        num_workers=d.num_workers, device=device)
    model = build_model(recipe, data, device=device)
    notes = [load_pretrained(model, recipe.init.from_)] if recipe.init.from_ else []
    check_patterns(recipe.model, model)
    optimizer = build_optimizer(recipe.optimizer, model, device=device)
    notes += describe_groups(optimizer) if len(optimizer.param_groups) > 1 else []
    steps_per_epoch = math.ceil(len(train_batches) / recipe.clip.accumulate)  # optimizer steps
    total_steps = max(1, math.ceil(recipe.train.epochs * steps_per_epoch))
    if recipe.clip.accumulate > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        notes.append(f"warning: BatchNorm sees micro-batches of {d.batch_size}, not the accumulated batch of "
                     f"{d.batch_size * recipe.clip.accumulate} (its statistics are per micro-batch); "
                     "GroupNorm/LayerNorm do not depend on the batch")
    problems = schedule_problems(recipe.schedule, epochs=recipe.train.epochs, steps_per_epoch=steps_per_epoch)
    if problems and recipe.schedule.unit == "steps":
        raise RecipeError([f"`{'.'.join(p)}`: {m}" for p, m in problems])
    monitor, mode = monitor_of(recipe, data.task)
    schedule = build_schedule(recipe.schedule, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                              lr=recipe.optimizer.lr, monitor_mode=mode, momentum=recipe.optimizer.momentum_schedule)
    loss_fn = build_loss(recipe.train, task=data.task)
    return Components(recipe, device, data, normalizer, model, optimizer, schedule, loss_fn,
                      train_batches, val_batches, total_steps, notes)
