"""Cross-field recipe checks: combinations that are each valid alone but fail together.

They run at validation time, before any data is read, so a recipe that validates does not fail
later for a reason the recipe could have shown. Each check returns ``(key path, message)``.
"""

from __future__ import annotations

from nnrun.config import Recipe

# What the built-in sources are known to hold, so shape and task checks can run before loading.
KNOWN_SOURCES = {
    "digits": ("classification", (1, 8, 8)),
    "mnist": ("classification", (1, 28, 28)),
    "fashion-mnist": ("classification", (1, 28, 28)),
    "cifar10": ("classification", (3, 32, 32)),
    "image-folder": ("classification", None),
}
FILE_SOURCES = ("mnist", "fashion-mnist", "cifar10", "csv", "npz", "image-folder")
FUSED_OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")

Problem = tuple[tuple, str]


def known_task(recipe: Recipe) -> str | None:
    """The task when the recipe fixes it (explicitly or through a built-in source), else None."""
    if recipe.data.task != "auto":
        return recipe.data.task
    return KNOWN_SOURCES.get(recipe.data.source, (None, None))[0]


def _split_problem(text: str) -> Problem:
    """'model.groups: message' -> (('model', 'groups'), 'message')."""
    head, sep, message = text.partition(": ")
    if sep and " " not in head:
        return tuple(head.split(".")), message
    return (), text


def data_problems(recipe: Recipe) -> list[Problem]:
    d = recipe.data
    out = []
    if d.source in FILE_SOURCES and not d.path:
        out.append((("data", "path"), f"source `{d.source}` reads files: set data.path to the "
                                      f"{'file' if d.source in ('csv', 'npz') else 'folder'} that holds them"))
    if d.source == "python" and not d.factory:
        out.append((("data", "factory"), "source `python` needs data.factory: `module:function`"))
    if d.feature_columns is not None and d.source != "csv":
        out.append((("data", "feature_columns"), "only used by source `csv`; remove it"))
    return out


def monitor_problems(recipe: Recipe) -> list[Problem]:
    from nnrun.metrics import metric_names

    t = recipe.train
    task = known_task(recipe)
    has_val = recipe.data.val_fraction > 0 or recipe.data.source == "python"
    out = []
    monitor = t.monitor
    if monitor != "auto":
        if task is None:
            both = sorted(set(metric_names("classification")) | set(metric_names("regression")))
            if monitor not in both:
                out.append((("train", "monitor"), f"`{monitor}` is not a metric nnrun produces; "
                                                  f"choose one of {', '.join(both)}"))
            elif monitor not in set(metric_names("classification")) & set(metric_names("regression")):
                out.append((("data", "task"), f"train.monitor `{monitor}` exists for one task only: "
                                              "set data.task to classification or regression"))
        elif monitor not in metric_names(task):
            from nnrun.errors import did_you_mean

            names = metric_names(task)
            out.append((("train", "monitor"), f"`{monitor}` is not produced by a {task} task"
                                              f"{did_you_mean(monitor, names)}; choose one of {', '.join(names)}"))
    uses_val = monitor.startswith("val_") or monitor == "auto" or t.patience is not None
    if not has_val and uses_val:
        out.append((("data", "val_fraction"), "is 0, so there is no validation split for the monitor or "
                                              "early stopping: set it (e.g. 0.1) or set train.monitor: train_loss"))
    return out


def optimizer_problems(recipe: Recipe) -> list[Problem]:
    o = recipe.optimizer
    out = []
    if o.nesterov and o.name != "sgd":
        out.append((("optimizer", "nesterov"), f"applies to sgd only, not {o.name}; remove it"))
    elif o.nesterov and o.momentum <= 0:
        out.append((("optimizer", "nesterov"), "needs optimizer.momentum > 0 (e.g. 0.9)"))
    if len(o.betas) != 2 or any(not 0 <= b < 1 for b in o.betas):
        out.append((("optimizer", "betas"), f"got {o.betas}; expected two numbers in [0, 1), e.g. [0.9, 0.999]"))
    if o.fused == "on" and o.name not in FUSED_OPTIMIZERS:
        out.append((("optimizer", "fused"), f"no fused kernel for {o.name}; use auto or off"))
    for i, kind in enumerate(o.no_decay):
        if kind not in ("bias", "norm"):
            from nnrun.errors import did_you_mean

            out.append((("optimizer", "no_decay", i), f"`{kind}` is not a kind; allowed: bias, norm"
                                                       f"{did_you_mean(kind, ['bias', 'norm'])}"))
    if o.groups and o.discriminative is not None:
        out.append((("optimizer", "discriminative"), "use either optimizer.groups or optimizer.discriminative, "
                                                     "not both"))
    if o.momentum_schedule is not None and o.name == "adagrad":
        out.append((("optimizer", "momentum_schedule"), "adagrad has no momentum; use sgd, rmsprop, adam or adamw"))
    return out


def schedule_section_problems(recipe: Recipe) -> list[Problem]:
    from nnrun.schedules import schedule_problems

    s, o = recipe.schedule, recipe.optimizer
    out = list(schedule_problems(s, epochs=recipe.train.epochs))
    if s.name == "one_cycle" and s.cycle_momentum:
        if o.momentum_schedule is not None:
            out.append((("optimizer", "momentum_schedule"), "one_cycle already cycles momentum; remove "
                                                            "momentum_schedule or set schedule.cycle_momentum: false"))
        if o.name == "adagrad" or (o.name in ("sgd", "rmsprop") and o.momentum == 0):
            out.append((("schedule", "cycle_momentum"), f"{o.name} runs without momentum here; set "
                                                        "schedule.cycle_momentum: false (or optimizer.momentum > 0)"))
    if s.base_momentum > s.max_momentum:
        out.append((("schedule", "base_momentum"), f"{s.base_momentum} must not exceed max_momentum {s.max_momentum}"))
    if s.warmup_start > 0 and s.warmup == 0:
        out.append((("schedule", "warmup_start"), "has no effect without schedule.warmup"))
    uses_plateau = s.name == "plateau" or s.on_plateau is not None
    has_val = recipe.data.val_fraction > 0 or recipe.data.source == "python"
    if uses_plateau and not has_val and recipe.train.monitor in ("auto",) + tuple(f"val_{m}" for m in
                                                                                 ("loss", "acc", "mae", "rmse")):
        out.append((("schedule", "on_plateau"), "watches train.monitor, but there is no validation split: set "
                                                "data.val_fraction > 0 or train.monitor: train_loss"))
    e = recipe.ensemble
    if e.strategy == "snapshots" and s.name not in ("sgdr", "cyclic"):
        out.append((("ensemble", "strategy"), f"snapshots are taken at the end of learning-rate cycles, and "
                                              f"schedule `{s.name}` has none: use schedule.name sgdr or cyclic"))
    if e.strategy == "swa" and e.swa_start is not None and e.swa_start >= recipe.train.epochs:
        out.append((("ensemble", "swa_start"), f"epoch {e.swa_start:g} is not before the end of the run "
                                               f"(train.epochs {recipe.train.epochs:g})"))
    if e.swa_lr is not None and e.strategy != "swa":
        out.append((("ensemble", "swa_lr"), "only used with ensemble.strategy: swa"))
    if recipe.model.unfreeze and not recipe.model.freeze:
        out.append((("model", "unfreeze"), "nothing is frozen: set model.freeze first"))
    return out


def cross_field_problems(recipe: Recipe) -> list[Problem]:
    """Every cross-field problem of a recipe whose fields are each valid."""
    from nnrun.init import init_problems
    from nnrun.losses import loss_problems
    from nnrun.models import model_problems

    shape = KNOWN_SOURCES.get(recipe.data.source, (None, None))[1]
    task = known_task(recipe)
    out = data_problems(recipe) + monitor_problems(recipe) + optimizer_problems(recipe)
    out += schedule_section_problems(recipe)
    out += [_split_problem(p) for p in model_problems(recipe.model, input_shape=shape)]
    out += [_split_problem(p) if p.startswith("init.") else (("init", "weights"), p)
            for p in init_problems(recipe.init)]
    out += [_split_problem(p) if p.startswith("train.") else (("train", "loss"), p)
            for p in loss_problems(recipe.train, task=task)]
    if recipe.search:
        from nnrun.search.space import search_problems

        out += search_problems(recipe.search, recipe)
    return out
