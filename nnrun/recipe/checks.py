"""Cross-field recipe checks: combinations that are each valid alone but fail together.

They run at validation time, before any data is read, so a recipe that validates does not fail
later for a reason the recipe could have shown. Each check returns :class:`~nnrun.errors.Problem`
values; the component sections' own rules are in :mod:`nnrun.recipe.rules`.
"""

from __future__ import annotations

import math
import re

from nnrun.errors import Problem, did_you_mean
from nnrun.recipe.rules import init_problems, loss_problems, model_problems
from nnrun.recipe.schema import ModelConfig, Recipe, ScheduleConfig
from nnrun.recipe.tables import FUSED_OPTIMIZERS, SOURCES, has_validation, known_task, metric_names
from nnrun.recipe.values import shown

MAX_SNAPSHOTS = 1000
"""Most members a snapshot ensemble may keep (one checkpoint per learning-rate cycle)."""


def name_problems(recipe: Recipe) -> list[Problem]:
    """`name` is one folder under `log.run_dir`: a separator or `..` would place the run elsewhere."""
    name = recipe.name
    if name in ("", ".", ".."):
        why = f"`{name}` is not a folder name"
    elif "/" in name or "\\" in name:
        why = f"`{shown(name)}` holds a path separator, so the run folder would not be `<log.run_dir>/<name>/`"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "holds a control character"
    elif len(name.encode("utf-8", "replace")) > 200:
        why = f"is {len(name)} characters long; a folder name this long is refused by most file systems"
    else:
        return []
    suggestion = re.sub(r"[/\\\x00-\x1f\x7f]+", "-", name).strip(". -")[:60] or "my-run"
    return [Problem(("name",), f"{why}; the name must be one folder name: letters, digits, `-`, `_`, `.` "
                               f"(e.g. `{suggestion}`); choose where runs go with log.run_dir")]


def known_steps_per_epoch(recipe: Recipe) -> int | None:
    """Optimizer steps per epoch when the data's size is fixed (`digits`), else None (the build
    counts them once the data is loaded). Mirrors the validation carve (round(fraction * n),
    at least one) and the batching; a test holds it to what the build counts."""
    n = SOURCES[recipe.data.source].train_examples
    d = recipe.data
    if n is None:
        return None
    n = min(n, d.limit) if d.limit is not None else n
    if d.val_fraction > 0:
        n -= max(1, round(d.val_fraction * n))
    batches = n // d.batch_size if d.drop_last else math.ceil(n / d.batch_size)
    if recipe.model.norm == "batch" and not d.drop_last and batches > 1 and n % d.batch_size == 1:
        return None  # the build may fold a last batch of one into the one before (BatchNorm): it counts
    return math.ceil(batches / recipe.clip.accumulate) if n > 0 and batches > 0 else None


def data_problems(recipe: Recipe) -> list[Problem]:
    d = recipe.data
    out = []
    kind = SOURCES[d.source].path_kind
    if kind and not d.path and not (SOURCES[d.source].public and d.download):  # a public set: the download cache
        hint = " (or leave it out with data.download: true to use the download cache)" if SOURCES[d.source].public \
            else ""
        out.append(Problem(("data", "path"), f"source `{d.source}` reads files: set data.path to the {kind} "
                                             f"that holds them{hint}"))
    if d.source == "python" and not d.factory:
        out.append(Problem(("data", "factory"), "source `python` needs data.factory: `module:function`"))
    if d.feature_columns is not None and d.source != "csv":
        out.append(Problem(("data", "feature_columns"), "only used by source `csv`; remove it"))
    return out + _size_problems(recipe)


def _size_problems(recipe: Recipe) -> list[Problem]:
    """For a source of fixed size (`digits`), what loading and batching would refuse: a validation
    carve that leaves no training example, or drop_last with a batch larger than the training set."""
    d = recipe.data
    n = SOURCES[d.source].train_examples
    if n is None:
        return []
    n = min(n, d.limit) if d.limit is not None else n
    n_val = max(1, round(d.val_fraction * n)) if d.val_fraction > 0 else 0
    if n_val >= n:
        key = "limit" if d.limit is not None else "val_fraction"
        return [Problem(("data", key), f"val_fraction {d.val_fraction:g} of {n} examples leaves none for training; "
                                       "lower data.val_fraction or use more examples (data.limit)")]
    if d.drop_last and n - n_val < d.batch_size:
        return [Problem(("data", "batch_size"), f"{d.batch_size} with drop_last leaves no batch of the "
                                                f"{n - n_val} training examples; lower it or set drop_last: false")]
    return []


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
    layers = mlp_parameter_layers(recipe.model) if recipe.model.arch == "mlp" else None
    if o.discriminative is not None and layers is not None and o.discriminative.groups > layers:
        out.append(Problem(("optimizer", "discriminative", "groups"),
                           f"{o.discriminative.groups} groups but the model has only {layers} layers with parameters; "
                           f"use at most {layers}"))
    if o.momentum_schedule is not None and o.name == "adagrad":
        out.append(Problem(("optimizer", "momentum_schedule"), "adagrad has no momentum; use sgd, rmsprop, "
                                                               "adam or adamw"))
    return out


def mlp_parameter_layers(model: ModelConfig) -> int:
    """Modules that own parameters in an mlp, which discriminative rates split into groups: a linear
    layer per hidden width and the head, and a norm layer after each hidden one unless norm is
    none (a test holds this to the built model)."""
    return len(model.hidden) + 1 + (len(model.hidden) if model.norm != "none" else 0)


def schedule_section_problems(recipe: Recipe) -> list[Problem]:
    s, o = recipe.schedule, recipe.optimizer
    out = schedule_problems(s, epochs=recipe.train.epochs, steps_per_epoch=known_steps_per_epoch(recipe),
                            snapshots=recipe.ensemble.strategy == "snapshots")
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


def schedule_problems(cfg: ScheduleConfig, *, epochs: float, steps_per_epoch: int | None = None,
                      snapshots: bool = False) -> list[Problem]:
    """Schedules that do not fit the run. Steps-based checks need `steps_per_epoch` (known once
    the data is loaded; the build calls this again then): durations shorter than one optimizer
    step (in epochs, they need it too), and the fit of a steps-unit schedule."""
    out = resolution_problems(cfg, steps_per_epoch)
    if out:
        return out
    per_unit = 1.0 if cfg.unit == "epochs" else (steps_per_epoch or 0)
    if cfg.unit == "steps" and not per_unit:
        return out
    span = epochs * (1.0 if cfg.unit == "epochs" else per_unit)  # the run's length in `unit`
    unit = "epoch" if cfg.unit == "epochs" else "step"
    if snapshots and cfg.warmup < span:
        out += _snapshot_problems(cfg, span - cfg.warmup, unit)
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


def resolution_problems(cfg: ScheduleConfig, steps_per_epoch: int | None) -> list[Problem]:
    """An SGDR cycle, a step-decay interval or a cyclic half cycle shorter than one optimizer step:
    the schedule would restart or decay between two steps (and a tiny one overflows the arithmetic).
    In epochs this needs `steps_per_epoch`; None skips it."""
    per_unit = 1 if cfg.unit == "steps" else steps_per_epoch  # optimizer steps per unit
    if not per_unit:
        return []
    durations = {"sgdr": ("cycle_len", "an SGDR cycle"), "step": ("step_size", "the interval between decays"),
                 "cyclic": ("step_size", "a half cycle")}
    if cfg.name not in durations:
        return []
    key, what = durations[cfg.name]
    value = getattr(cfg, key)
    if value * per_unit >= 1:
        return []
    if cfg.unit == "steps":
        return [Problem(("schedule", key), f"{value:g} steps is shorter than one optimizer step, so {what} would "
                                           "end between two steps; use at least 1")]
    return [Problem(("schedule", key), f"{value:g} epochs is shorter than one optimizer step (an epoch has "
                                       f"{per_unit} here), so {what} would end between two steps; use at least "
                                       f"{1 / per_unit:.3g} epochs, or schedule.unit: steps")]


def _snapshot_problems(cfg: ScheduleConfig, span: float, unit: str) -> list[Problem]:
    if cfg.name == "sgdr":
        cycles = sgdr_cycles_within(cfg.cycle_len, cfg.cycle_mult, span)
    elif cfg.name == "cyclic":
        cycles = math.floor(span / (2 * cfg.step_size) * (1 + 1e-12))
    else:
        return []
    if cycles <= MAX_SNAPSHOTS:
        return []
    cycles_text = f"{cycles:,}" if cycles < 10**12 else f"{float(cycles):.3g}"
    key = "cycle_len" if cfg.name == "sgdr" else "step_size"
    return [Problem(("ensemble", "strategy"), f"snapshots keep one member per learning-rate cycle, and this run has "
                                              f"{cycles_text} cycles ({span:g} {unit}s); at most {MAX_SNAPSHOTS}: "
                                              f"lengthen schedule.{key}")]


def sgdr_cycle_end(k: int, cycle_len: float, mult: float) -> float:
    """When the k-th SGDR cycle ends (k >= 1), cycles growing by `mult` each time (inf past a float)."""
    if mult == 1.0:
        return cycle_len * k
    try:
        return cycle_len * (mult ** k - 1) / (mult - 1)
    except OverflowError:
        return math.inf


def sgdr_cycles_within(cycle_len: float, mult: float, span: float) -> int:
    """How many whole SGDR cycles end by `span` (closed form, then at most a few corrections for
    rounding: no list of cycle ends and no loop whose length a value decides)."""
    tol = 1e-9 * max(span, cycle_len)
    if mult == 1.0:
        k = math.floor((span + tol) / cycle_len)
    else:  # the k with cycle_len * (mult**k - 1) / (mult - 1) = span, in logs so nothing overflows
        log_ratio = math.log(span + tol) + math.log(mult - 1) - math.log(cycle_len)
        k = math.floor((math.log1p(math.exp(log_ratio)) if log_ratio < 700 else log_ratio) / math.log(mult))
    for _ in range(4):
        if k > 0 and sgdr_cycle_end(k, cycle_len, mult) > span + tol:
            k -= 1
        elif sgdr_cycle_end(k + 1, cycle_len, mult) <= span + tol:
            k += 1
        else:
            break
    return k


def _sgdr_fit(cfg: ScheduleConfig, span: float, unit: str) -> list[Problem]:
    k = sgdr_cycles_within(cfg.cycle_len, cfg.cycle_mult, span)
    last = sgdr_cycle_end(k, cfg.cycle_len, cfg.cycle_mult) if k else 0.0
    following = sgdr_cycle_end(k + 1, cfg.cycle_len, cfg.cycle_mult)
    tol = 4e-9 * max(span, cfg.cycle_len)  # the count itself allows 1e-9 of rounding
    if k and (abs(last - span) <= tol or abs(following - span) <= tol):
        return []
    offset = cfg.warmup
    options = " or ".join(f"{e + offset:g}" for e in ([last] if k else []) + [following])
    count = f"{k:,}" if k < 10**12 else f"{float(k):.3g}"
    return [Problem(("train", "epochs"),
                    f"SGDR cycles (cycle_len {cfg.cycle_len:g}, cycle_mult {cfg.cycle_mult:g}) do not end with the "
                    f"run: {count} cycle(s) complete by {unit} {last + offset:g} and the run stops {span - last:g} "
                    f"{unit}s into the next; set the run to end on a cycle ({unit}s: {options})")]


def cross_field_problems(recipe: Recipe) -> list[Problem]:
    """Every cross-field problem of a recipe whose fields are each valid (the `search` section is
    checked by :func:`nnrun.recipe.search.search_problems`, called by the loader)."""
    shape = SOURCES[recipe.data.source].input_shape
    out = name_problems(recipe) + data_problems(recipe) + monitor_problems(recipe) + optimizer_problems(recipe)
    out += schedule_section_problems(recipe)
    out += model_problems(recipe.model, input_shape=shape)
    out += init_problems(recipe.init)
    out += loss_problems(recipe.train, task=known_task(recipe))
    return out
