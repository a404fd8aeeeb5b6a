"""The composition root: validated recipe -> the components of a training run.

Each builder gets only its own recipe section plus the runtime facts it needs (input shape,
steps per epoch), torchtune style. The loop's own parts (stepper, clipper, guard, weight
average) are assembled by :class:`nnrun.training.trainer.Trainer` from these components;
prediction-time rebuilds from a checkpoint live in :mod:`nnrun.inference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnrun import checkpoint
from nnrun.components.freeze import check_patterns
from nnrun.components.init import init_weights
from nnrun.components.losses import build_loss
from nnrun.components.models import build_model
from nnrun.components.optim import build_optimizer, describe_groups
from nnrun.components.schedules import Schedule, build_schedule
from nnrun.data import DataBundle, load_data, make_batches, normalize_split
from nnrun.data.batching import Batches
from nnrun.data.normalize import fit_normalizer
from nnrun.errors import CheckpointError, Problem, RecipeError
from nnrun.recipe import to_dict
from nnrun.recipe.checks import resolution_problems, schedule_problems
from nnrun.recipe.schema import Recipe
from nnrun.recipe.tables import metric_info, metric_names, resolve_monitor, split_seed
from nnrun.runtime import seed_everything


@dataclass
class Components:
    """Everything a run needs, built from one recipe."""

    recipe: Recipe
    device: torch.device
    data: DataBundle
    normalizer: dict
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loss_fn: nn.Module
    train_batches: Batches
    val_batches: Batches | None
    total_steps: int
    notes: list[str] = field(default_factory=list)  # what the build did that a person should see

    def data_info(self) -> dict:
        """What predict/ensemble need to know about the data without loading it."""
        d = self.data
        return {"task": d.task, "num_classes": d.num_classes, "num_outputs": d.num_outputs,
                "input_shape": list(d.input_shape), "class_names": d.class_names}

    def recipe_dict(self) -> dict:
        return to_dict(self.recipe)


def monitor_of(recipe: Recipe, task: str) -> tuple[str, str]:
    """The monitored metric and its direction (from the metric table, never from its name)."""
    name = resolve_monitor(recipe.train.monitor, task)
    if name not in metric_names(task):
        raise RecipeError([Problem(("train", "monitor"), f"`{name}` is not produced by a {task} task; "
                                                         f"choose one of {', '.join(metric_names(task))}")])
    return name, metric_info(name).mode


def build_data(recipe: Recipe, *, base_dir: Path | None, normalizer: dict | None = None,
               with_test: bool = False) -> tuple[DataBundle, dict]:
    """Load the splits and whiten them with training-split statistics (or stored ones)."""
    bundle = load_data(recipe.data, seed=split_seed(recipe), base_dir=base_dir, with_test=with_test)
    if normalizer is None:
        normalizer = fit_normalizer(bundle.train, recipe.data.normalize, recipe.data.tanh_scale)
    for split in ("train", "val", "test"):
        part = getattr(bundle, split)
        if part is not None:
            setattr(bundle, split, normalize_split(part, normalizer))
    return bundle, normalizer


def build_initialized_model(recipe: Recipe, data: DataBundle, *, device: torch.device) -> nn.Module:
    """The network, initialized per `init` (LSUV sees one training batch)."""
    model = build_model(recipe.model, input_shape=tuple(data.input_shape), num_outputs=data.num_outputs)
    sample = None
    if recipe.init.weights == "lsuv":
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
    path = Path(source)
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        hint = (f"name the file itself, e.g. init.from={last}" if last.is_file() else
                "name a .pt file: an nnrun checkpoint (a run's checkpoints/last.pt or a top-k file) or a state dict")
        raise CheckpointError(f"init.from: {path} is a folder; it needs a checkpoint file", hint=hint)
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


def _batches(recipe: Recipe, data: DataBundle, device: torch.device) -> tuple[Batches, Batches | None]:
    d = recipe.data
    train = make_batches(data.train, batch_size=d.batch_size, shuffle=d.shuffle, seed=recipe.seed,
                         drop_last=d.drop_last, num_workers=d.num_workers, device=device)
    if len(train) == 0:
        raise RecipeError([Problem(("data", "batch_size"), f"{d.batch_size} with drop_last leaves no batch of the "
                                                           f"{data.train.num_examples} training examples; lower it "
                                                           "or set drop_last: false")])
    val = None if data.val is None else make_batches(data.val, batch_size=d.eval_batch_size, shuffle=False,
                                                     seed=recipe.seed, num_workers=d.num_workers, device=device)
    return train, val


def _accumulation_note(recipe: Recipe, model: nn.Module) -> list[str]:
    if recipe.clip.accumulate == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return []
    b = recipe.data.batch_size
    return [f"warning: BatchNorm sees micro-batches of {b}, not the accumulated batch of {b * recipe.clip.accumulate} "
            "(its statistics are per micro-batch); GroupNorm/LayerNorm do not depend on the batch"]


def build(recipe: Recipe, *, device: torch.device, base_dir: Path | None = None,
          normalizer: dict | None = None) -> Components:
    """Build every component of a training run from a validated recipe."""
    seed_everything(recipe.seed)
    data, normalizer = build_data(recipe, base_dir=base_dir, normalizer=normalizer)
    train_batches, val_batches = _batches(recipe, data, device)
    model = build_initialized_model(recipe, data, device=device)
    notes = [load_pretrained(model, recipe.init.from_)] if recipe.init.from_ else []
    check_patterns(recipe.model, model)
    optimizer = build_optimizer(recipe.optimizer, model, device=device)
    notes += describe_groups(optimizer) if len(optimizer.param_groups) > 1 else []
    notes += _accumulation_note(recipe, model)
    steps_per_epoch = math.ceil(len(train_batches) / recipe.clip.accumulate)  # optimizer steps
    total_steps = max(1, math.ceil(recipe.train.epochs * steps_per_epoch))
    problems = schedule_problems(recipe.schedule, epochs=recipe.train.epochs, steps_per_epoch=steps_per_epoch,
                                 snapshots=recipe.ensemble.strategy == "snapshots")
    if problems and recipe.schedule.unit == "steps":
        raise RecipeError(problems)
    problems = resolution_problems(recipe.schedule, steps_per_epoch)  # in epochs, known only now
    if problems:
        raise RecipeError(problems)
    _, mode = monitor_of(recipe, data.task)
    schedule = build_schedule(recipe.schedule, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                              lr=recipe.optimizer.lr, monitor_mode=mode, momentum=recipe.optimizer.momentum_schedule)
    loss_fn = build_loss(recipe.train, task=data.task)
    return Components(recipe, device, data, normalizer, model, optimizer, schedule, loss_fn,
                      train_batches, val_batches, total_steps, notes)
