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
from nnrun.data import DataBundle, load_data, make_batches, normalize_split, shard_split
from nnrun.data.batching import Batches
from nnrun.data.normalize import fit_normalizer
from nnrun.distributed import SINGLE, World
from nnrun.errors import CheckpointError, DataError, Problem, RecipeError
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
    world: World = SINGLE  # the processes that share each global batch

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


def _one_example_bn(model: nn.Module, data: DataBundle, device: torch.device) -> list[str]:
    """Names of the BatchNorm layers that cannot train on a batch of one example: those that would
    see one value per channel (BatchNorm1d on vectors, BatchNorm2d on 1x1 maps). Found by one
    eval-mode forward of one training example; modes and RNG states are put back."""
    bns = {m: name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not bns:
        return []
    single: list[nn.Module] = []

    def spy(module, args):
        if math.prod(args[0].shape[2:]) == 1:
            single.append(module)

    hooks = [m.register_forward_pre_hook(spy) for m in bns]
    modes, rng = [(m, m.training) for m in model.modules()], checkpoint.capture_rng()
    try:
        x, _ = next(iter(make_batches(data.train, batch_size=1, shuffle=False, seed=0).epoch(0)))
        model.eval()
        with torch.no_grad():
            model(x.to(device))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training
        checkpoint.restore_rng(rng)
    return [bns[m] or "(the model)" for m in dict.fromkeys(single)]


def _batch_of_one(recipe: Recipe, data: DataBundle, model: nn.Module, device: torch.device) -> tuple[bool, list[str]]:
    """D4: (fold the last batch, notes). A batch of one example meets BatchNorm layers that cannot
    train on it: a last batch of one joins the batch before it; when every batch (or the only one)
    holds one example there is nothing to join, and the recipe is refused before training starts."""
    d, n = recipe.data, data.train.num_examples
    if not (d.batch_size == 1 or n == 1 or (not d.drop_last and n % d.batch_size == 1)):
        return False, []
    layers = _one_example_bn(model, data, device)
    if not layers:
        return False, []
    named = ", ".join(f"`{name}`" for name in layers[:3]) + (" ..." if len(layers) > 3 else "")
    why = f"BatchNorm layer(s) {named} cannot train on a batch of one example (one value per channel)"
    other_norm = "model.norm: group, layer or none (batch-size independent)"
    if d.batch_size == 1:
        raise RecipeError([Problem(("data", "batch_size"), f"1 trains on batches of one example, and {why}; "
                                                           f"use a batch_size of 2 or more, or {other_norm}")])
    if n == 1:
        raise DataError(f"the training split holds 1 example, and {why}", where=data.where,
                        hint=f"use more examples (data.limit, a lower data.val_fraction) or {other_norm}")
    return True, [f"data: {n} training examples in batches of {d.batch_size} leave a last batch of 1 example, and "
                  f"{why}; it joins the batch before it ({d.batch_size + 1} examples). data.drop_last: true drops "
                  "it instead"]


def _batches(recipe: Recipe, data: DataBundle, device: torch.device, model: nn.Module, *,
             one_batch: bool = False, world: World = SINGLE) -> tuple[Batches, Batches | None, list[str]]:
    """Training and validation batches, and what a person should know about them (see _batch_of_one;
    ``one_batch``: the caller trains on the first batch only and judges its size itself). With
    several processes each takes its chunk of every global batch and a contiguous slice of the
    validation split."""
    d = recipe.data
    fold, notes = (False, []) if one_batch or world.active else _batch_of_one(recipe, data, model, device)
    shard = (world.rank, world.world_size)
    train = make_batches(data.train, batch_size=d.batch_size, shuffle=d.shuffle, seed=recipe.seed,
                         drop_last=d.drop_last, num_workers=d.num_workers, device=device, fold_single=fold,
                         shard=shard)
    if len(train) == 0:
        raise RecipeError([Problem(("data", "batch_size"), f"{d.batch_size} with drop_last leaves no batch of the "
                                                           f"{data.train.num_examples} training examples; lower it "
                                                           "or set drop_last: false")])
    if world.active:
        _check_chunks(recipe, train, model, world)
    val = data.val if data.val is None or not world.active else shard_split(data.val, world.rank, world.world_size)
    val = None if val is None else make_batches(val, batch_size=d.eval_batch_size, shuffle=False,
                                                seed=recipe.seed, num_workers=d.num_workers, device=device)
    return train, val, notes


def _check_chunks(recipe: Recipe, train: Batches, model: nn.Module, world: World) -> None:
    """Several processes: the global batch must reach every process, and a BatchNorm layer (which
    normalizes over its own process's chunk) must never get a chunk of one example."""
    d, w = recipe.data, world.world_size
    if d.batch_size < w:
        raise RecipeError([Problem(("data", "batch_size"), f"{d.batch_size} is the global batch and cannot be "
                                                           f"shared by {w} processes; use at least {w}")])
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
                 for m in model.modules())
    sizes = {train.global_size(0), train.global_size(len(train) - 1)}
    if has_bn and any(0 < s < 2 * w for s in sizes) and not recipe.train.sync_bn == "on":
        raise RecipeError([Problem(("data", "batch_size"), f"BatchNorm on {w} processes normalizes each process's "
                                                           f"chunk of a batch, and a batch of {min(sizes)} gives "
                                                           "some process a single example; use a global batch of "
                                                           f"at least {2 * w}, data.drop_last: true, or "
                                                           "model.norm: group")])


def _accumulation_note(recipe: Recipe, model: nn.Module) -> list[str]:
    if recipe.clip.accumulate == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return []
    b = recipe.data.batch_size
    return [f"warning: BatchNorm sees micro-batches of {b}, not the accumulated batch of {b * recipe.clip.accumulate} "
            "(its statistics are per micro-batch); GroupNorm/LayerNorm do not depend on the batch"]


def build(recipe: Recipe, *, device: torch.device, base_dir: Path | None = None,
          normalizer: dict | None = None, one_batch: bool = False, world: World = SINGLE) -> Components:
    """Build every component of a training run from a validated recipe (``one_batch``: for
    overfit-one-batch, which trains on the first batch only; ``world``: the processes that share
    each global batch, see :mod:`nnrun.distributed`)."""
    seed_everything(recipe.seed)
    data, normalizer = build_data(recipe, base_dir=base_dir, normalizer=normalizer)
    notes = data.training_notes()
    model = build_initialized_model(recipe, data, device=device)
    train_batches, val_batches, batch_notes = _batches(recipe, data, device, model, one_batch=one_batch, world=world)
    notes += [load_pretrained(model, recipe.init.from_)] if recipe.init.from_ else []
    notes += batch_notes
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
                      train_batches, val_batches, total_steps, notes, world)
