"""Cross-field recipe checks: combinations that are each valid alone but fail together.

They run at validation time, before any data is read, so a recipe that validates does not fail
later for a reason the recipe could have shown. Each check returns :class:`~nnrun.errors.Problem`
values; the component sections' own rules are in :mod:`nnrun.recipe.rules`.
"""

from __future__ import annotations

import math

from nnrun.errors import Problem, did_you_mean
from nnrun.recipe.rules import init_problems, loss_problems, model_problems
from nnrun.recipe.schema import Recipe, ScheduleConfig
from nnrun.recipe.tables import FUSED_OPTIMIZERS, SOURCES, has_validation, known_task, metric_names


def data_problems(recipe: Recipe) -> list[Problem]:
    d = recipe.data
    out = []
    kind = SOURCES[d.source].path_kind
    if kind and not d.path:
        out.append(Problem(("data", "path"), f"source `{d.source}` reads files: set data.path to the {kind} "
                                             "that holds them"))
    if d.source == "python" and not d.factory:
        out.append(Problem(("data", "factory"), "source `python` needs data.factory: `module:function`"))
    if d.feature_columns is not None and d.source != "csv":
        out.append(Problem(("data", "feature_columns"), "only used by source `csv`; remove it"))
    return out


def monitor_problems(recipe: Recipe) -> list[Problem]:
    t = recipe.train
    task = known_task(recipe)
    out = []
    monitor = t.monitor
    if monitor != "auto" and task is None:
        both = sorted(set(metric_names("classification")) | set(metric_names("regression")))
        if monitor not in both:
            out.append(Problem(("train", "monitor"), f"`{monitor}` is not a metric nnrun produces; "
                                                     f"choose one of {', '.join(both)}"))
        elif monitor not in set(metric_names("classification")) & set(metric_names("regression")):
            out.append(Problem(("data", "task"), f"train.monitor `{monitor}` exists for one task only: "
                                                 "set data.task to classification or regression"))
    elif monitor != "auto" and monitor not in metric_names(task):
        names = metric_names(task)
        out.append(Problem(("train", "monitor"), f"`{monitor}` is not produced by a {task} task"
                                                 f"{did_you_mean(monitor, names)}; choose one of {', '.join(names)}"))
    uses_val = monitor.startswith("val_") or monitor == "auto" or t.patience is not None
    if not has_validation(recipe) and uses_val:
        out.append(Problem(("data", "val_fraction"), "is 0, so there is no validation split for the monitor or "
                                                     "early stopping: set it (e.g. 0.1) or set train.monitor: "
                                                     "train_loss"))
    return out


def optimizer_problems(recipe: Recipe) -> list[Problem]:
    o = recipe.optimizer
    out = []
    if o.nesterov and o.name != "sgd":
        out.append(Problem(("optimizer", "nesterov"), f"applies to sgd only, not {o.name}; remove it"))
    elif o.nesterov and o.momentum <= 0:
        out.append(Problem(("optimizer", "nesterov"), "needs optimizer.momentum > 0 (e.g. 0.9)"))
    if len(o.betas) != 2 or any(not 0 <= b < 1 for b in o.betas):
        out.append(Problem(("optimizer", "betas"), f"got {o.betas}; expected two numbers in [0, 1), "
                                                   "e.g. [0.9, 0.999]"))
    if o.fused == "on" and o.name not in FUSED_OPTIMIZERS:
        out.append(Problem(("optimizer", "fused"), f"no fused kernel for {o.name}; use auto or off"))
    for i, kind in enumerate(o.no_decay):
        if kind not in ("bias", "norm"):
            out.append(Problem(("optimizer", "no_decay", i), f"`{kind}` is not a kind; allowed: bias, norm"
                                                             f"{did_you_mean(kind, ['bias', 'norm'])}"))
    if o.groups and o.discriminative is not None:
        out.append(Problem(("optimizer", "discriminative"), "use either optimizer.groups or "
                                                            "optimizer.discriminative, not both"))
    if o.momentum_schedule is not None and o.name == "adagrad":
        out.append(Problem(("optimizer", "momentum_schedule"), "adagrad has no momentum; use sgd, rmsprop, "
                                                               "adam or adamw"))
    return out


def schedule_section_problems(recipe: Recipe) -> list[Problem]:
    s, o = recipe.schedule, recipe.optimizer
    out = schedule_problems(s, epochs=recipe.train.epochs)
    if s.name == "one_cycle" and s.cycle_momentum:
        if o.momentum_schedule is not None:
            out.append(Problem(("optimizer", "momentum_schedule"), "one_cycle already cycles momentum; remove "
                                                                   "momentum_schedule or set "
                                                                   "schedule.cycle_momentum: false"))
        if o.name == "adagrad" or (o.name in ("sgd", "rmsprop") and o.momentum == 0):
            out.append(Problem(("schedule", "cycle_momentum"), f"{o.name} runs without momentum here; set "
                                                               "schedule.cycle_momentum: false (or "
                                                               "optimizer.momentum > 0)"))
    if s.base_momentum > s.max_momentum:
        out.append(Problem(("schedule", "base_momentum"), f"{s.base_momentum} must not exceed max_momentum "
                                                          f"{s.max_momentum}"))
    if s.warmup_start > 0 and s.warmup == 0:
        out.append(Problem(("schedule", "warmup_start"), "has no effect without schedule.warmup"))
    uses_plateau = s.name == "plateau" or s.on_plateau is not None
    val_monitor = recipe.train.monitor in ("auto",) + tuple(f"val_{m}" for m in ("loss", "acc", "mae", "rmse"))
    if uses_plateau and not has_validation(recipe) and val_monitor:
        out.append(Problem(("schedule", "on_plateau"), "watches train.monitor, but there is no validation split: "
                                                       "set data.val_fraction > 0 or train.monitor: train_loss"))
    return out + ensemble_problems(recipe)


def ensemble_problems(recipe: Recipe) -> list[Problem]:
    e, s = recipe.ensemble, recipe.schedule
    out = []
    if e.strategy == "snapshots" and s.name not in ("sgdr", "cyclic"):
        out.append(Problem(("ensemble", "strategy"), f"snapshots are taken at the end of learning-rate cycles, "
                                                     f"and schedule `{s.name}` has none: use schedule.name sgdr "
                                                     "or cyclic"))
    if e.strategy == "swa" and e.swa_start is not None and e.swa_start >= recipe.train.epochs:
        out.append(Problem(("ensemble", "swa_start"), f"epoch {e.swa_start:g} is not before the end of the run "
                                                      f"(train.epochs {recipe.train.epochs:g})"))
    if e.swa_lr is not None and e.strategy != "swa":
        out.append(Problem(("ensemble", "swa_lr"), "only used with ensemble.strategy: swa"))
    if recipe.model.unfreeze and not recipe.model.freeze:
        out.append(Problem(("model", "unfreeze"), "nothing is frozen: set model.freeze first"))
    return out


def schedule_problems(cfg: ScheduleConfig, *, epochs: float, steps_per_epoch: int | None = None) -> list[Problem]:
    """Schedules that do not fit the run. Steps-based checks need `steps_per_epoch` (known once
    the data is loaded; the build calls this again then)."""
    out = []
    per_unit = 1.0 if cfg.unit == "epochs" else (steps_per_epoch or 0)
    if cfg.unit == "steps" and not per_unit:
        return out
    span = epochs * (1.0 if cfg.unit == "epochs" else per_unit)  # the run's length in `unit`
    unit = "epoch" if cfg.unit == "epochs" else "step"
    if cfg.warmup >= span:
        out.append(Problem(("schedule", "warmup"), f"{cfg.warmup:g} {unit}s of warmup is the whole run "
                                                   f"({span:g}); shorten it"))
    if cfg.name == "sgdr" and cfg.warmup < span:
        out += _sgdr_fit(cfg, span - cfg.warmup, unit)
    if cfg.name == "multistep" and sorted(cfg.milestones) != list(cfg.milestones):
        out.append(Problem(("schedule", "milestones"), f"must increase, got {cfg.milestones}"))
    if cfg.name == "cyclic" and cfg.base_lr is not None and cfg.max_lr is not None and cfg.base_lr >= cfg.max_lr:
        out.append(Problem(("schedule", "base_lr"), f"{cfg.base_lr:g} must be below max_lr {cfg.max_lr:g}"))
    return out


def sgdr_cycle_end(k: int, cycle_len: float, mult: float) -> float:
    """When the k-th SGDR cycle ends (k >= 1), cycles growing by `mult` each time."""
    return cycle_len * k if mult == 1.0 else cycle_len * (mult ** k - 1) / (mult - 1)


def sgdr_cycles_within(cycle_len: float, mult: float, span: float) -> int:
    """How many whole SGDR cycles end by `span` (closed form: no list of every cycle end)."""
    if mult == 1.0:
        k = math.floor(span / cycle_len + 1e-9)
    else:
        k = math.floor(math.log(1 + span * (mult - 1) / cycle_len, mult) + 1e-9)
    while k > 0 and sgdr_cycle_end(k, cycle_len, mult) > span + 1e-6:
        k -= 1
    while sgdr_cycle_end(k + 1, cycle_len, mult) <= span + 1e-6:
        k += 1
    return k


def _sgdr_fit(cfg: ScheduleConfig, span: float, unit: str) -> list[Problem]:
    k = sgdr_cycles_within(cfg.cycle_len, cfg.cycle_mult, span)
    last = sgdr_cycle_end(k, cfg.cycle_len, cfg.cycle_mult) if k else 0.0
    if k and abs(last - span) < 1e-6:
        return []
    following = sgdr_cycle_end(k + 1, cfg.cycle_len, cfg.cycle_mult)
    offset = cfg.warmup
    options = " or ".join(f"{e + offset:g}" for e in ([last] if k else []) + [following])
    return [Problem(("train", "epochs"),
                    f"SGDR cycles (cycle_len {cfg.cycle_len:g}, cycle_mult {cfg.cycle_mult:g}) do not end with the "
                    f"run: {k} cycle(s) complete by {unit} {last + offset:g} and the run stops {span - last:g} "
                    f"{unit}s into the next; set the run to end on a cycle ({unit}s: {options})")]


def cross_field_problems(recipe: Recipe) -> list[Problem]:
    """Every cross-field problem of a recipe whose fields are each valid (the `search` section is
    checked by :func:`nnrun.recipe.search.search_problems`, called by the loader)."""
    shape = SOURCES[recipe.data.source].input_shape
    out = data_problems(recipe) + monitor_problems(recipe) + optimizer_problems(recipe)
    out += schedule_section_problems(recipe)
    out += model_problems(recipe.model, input_shape=shape)
    out += init_problems(recipe.init)
    out += loss_problems(recipe.train, task=known_task(recipe))
    return out
