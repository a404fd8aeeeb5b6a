"""The recipe's `search` section: distributions over recipe keys, stages, metric, sampler, pruner.

Every key of `search.space` is a real recipe key and every value a distribution sampled on the
scale it is written in (Bergstra & Bengio 2012: random search; CS231n: learning rates and
regularization strengths log-uniformly). Both ends of every range and every choice are validated
as command-line overrides of the recipe, so a search never proposes a value `nnrun train` would
refuse: the loader passes the override check in (``check_override``), so this module needs
neither the loader nor torch. Problems come back as :class:`~nnrun.errors.Problem` so
`nnrun check` names their lines. Drawing values from Optuna is :mod:`nnrun.tools.search.sampling`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nnrun.errors import Problem, RecipeError, did_you_mean
from nnrun.recipe.fields import is_optional
from nnrun.recipe.schema import Recipe
from nnrun.recipe.tables import METRICS, known_task, metric_info, metric_names, resolve_monitor
from nnrun.recipe.values import shown

KINDS = ("uniform", "log_uniform", "int", "int_log", "choice")
SEARCH_KEYS = ("metric", "trials", "sampler", "pruner", "space", "stages")
STAGE_KEYS = ("trials", "epochs", "keep_top")
PRUNER_KEYS = ("name", "startup_trials", "warmup_epochs")
SAMPLERS = ("random", "tpe")
PRUNERS = ("median", "halving", "none")
DEFAULT_TRIALS = 20
DEFAULT_KEEP_TOP = 0.25
MAX_TRIALS = 100_000   # per search or stage: far beyond any budget, small enough to count
MAX_CHOICES = 1000     # each choice is validated as a whole recipe
MAX_EPOCHS = 1_000_000  # as train.epochs

OverrideCheck = Callable[[str, Any], "str | None"]
"""`check(key, value)`: why `key=value` would not validate as an override of the recipe, or None."""


@dataclass(frozen=True)
class Param:
    """One searched recipe key and its distribution.

    Attributes:
        key: dotted recipe key, e.g. ``optimizer.lr`` (also the Optuna parameter name).
        kind: one of :data:`KINDS`.
        low, high: the numeric range (inclusive) for the four numeric kinds.
        choices: the values of a ``choice``.
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    @property
    def numeric(self) -> bool:
        return self.kind != "choice"

    @property
    def log(self) -> bool:
        return self.kind in ("log_uniform", "int_log")

    @property
    def integer(self) -> bool:
        return self.kind in ("int", "int_log")

    def scale(self, value: float) -> float:
        """The value on the scale the range is sampled on (natural log for log kinds)."""
        return math.log(value) if self.log else float(value)

    def unscale(self, u: float) -> float:
        return math.exp(u) if self.log else u


    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {json.dumps(list(self.choices))}"
        return f"{self.kind} [{self.low:.4g}, {self.high:.4g}]"

    def to_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high,
                "choices": list(self.choices)}

    @classmethod
    def from_dict(cls, d: dict) -> Param:
        return cls(d["key"], d["kind"], d.get("low"), d.get("high"), tuple(d.get("choices") or ()))


@dataclass(frozen=True)
class Stage:
    """One coarse-to-fine stage: `trials` trials of `epochs` epochs (None: the recipe's), ranges
    narrowed around the best `keep_top` fraction of the previous stage's trials."""

    trials: int
    epochs: float | None = None
    keep_top: float = DEFAULT_KEEP_TOP


@dataclass(frozen=True)
class SearchSpec:
    """The parsed, validated search section."""

    metric: str
    mode: str
    params: tuple[Param, ...]
    stages: tuple[Stage, ...]
    sampler: str = "random"
    pruner: str = "none"
    pruner_startup: int = 5
    pruner_warmup: int = 0


def override_text(key: str, value: Any) -> str:
    """`key=value` with the value as JSON, which the recipe loader reads back as the same YAML."""
    return f"{key}={json.dumps(value)}"


# ---------------------------------------------------------------------------------------------
# recipe keys


def recipe_fields() -> dict[str, tuple[Any, dict]]:
    """Every searchable dotted recipe key -> (type, field metadata)."""
    out: dict[str, tuple[Any, dict]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            elif f.name not in ("search", "name"):
                out[prefix + f.name] = (hints[f.name], dict(f.metadata))

    walk(Recipe, "")
    return out


def _is_int_type(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return tp is int or (is_optional(tp) and args == [int])


def _is_number(v: Any) -> bool:
    """A finite int or float (an int is finite even where it is too large for a float)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return isinstance(v, int) or math.isfinite(v)


def _is_count(v: Any, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


# ---------------------------------------------------------------------------------------------
# validation


def search_problems(search: dict, recipe: Recipe, *, check_override: OverrideCheck) -> list[Problem]:
    """Every problem of a recipe's `search` section (called by :func:`nnrun.recipe.load.validate`).

    Args:
        search: the raw section (a mapping).
        recipe: the validated recipe it belongs to.
        check_override: tells why one value would not validate as an override of the recipe
            (every range end and every choice is checked with it).

    Returns:
        The problems; empty when the section is valid.
    """
    if not isinstance(search, dict):
        return [Problem(("search",), f"expected a mapping (metric, trials, space, stages, ...), got `{shown(search)}`")]
    out: list[Problem] = []
    for key in search:
        if key not in SEARCH_KEYS:
            out.append(Problem(("search", key), f"unknown key{did_you_mean(str(key), SEARCH_KEYS)}; "
                                         f"valid keys here: {', '.join(SEARCH_KEYS)}"))
    out += _space_problems(search.get("space"), check_override)
    out += _stage_problems(search.get("stages"))
    out += _option_problems(search, recipe)
    return out


def _space_problems(space: Any, check_override: OverrideCheck) -> list[Problem]:
    if not isinstance(space, dict) or not space:
        return [Problem(("search", "space"), "needs a mapping of recipe keys to distributions, e.g. "
                                      "`optimizer.lr: {log_uniform: [1e-4, 1e-1]}`")]
    fields = recipe_fields()
    out: list[Problem] = []
    for key, dist in space.items():
        path = ("search", "space", key)
        if key not in fields:
            out.append(Problem(path, f"`{key}` is not a recipe key{did_you_mean(str(key), fields)}"))
            continue
        problem = _dist_problem(key, dist, fields[key][0])
        if problem:
            out.append(Problem(path + problem[0], problem[1]))
            continue
        (kind, args), = dist.items()
        for value in args:
            bad = check_override(key, value)
            if bad:
                out.append(Problem(path, f"{kind} value {shown(value)} is not a valid `{key}`: {bad}"))
                break
    return out


def _dist_problem(key: str, dist: Any, tp: Any) -> tuple[tuple, str] | None:
    """Shape problems of one distribution: (sub-path, message) or None."""
    example = "e.g. {log_uniform: [1e-4, 1e-1]}, {uniform: [0, 0.5]}, {int: [1, 4]}, {choice: [a, b]}"
    if not isinstance(dist, dict) or len(dist) != 1:
        return (), f"expected one distribution as a mapping, {example}"
    (kind, args), = dist.items()
    if kind not in KINDS:
        return (kind,), f"unknown distribution{did_you_mean(str(kind), KINDS)}; choose one of {', '.join(KINDS)}"
    if kind == "choice":
        if not isinstance(args, list) or not 2 <= len(args) <= MAX_CHOICES:
            return (kind,), f"expected a list of 2 to {MAX_CHOICES} values"
        return None
    if not isinstance(args, list) or len(args) != 2 or not all(_is_number(v) for v in args):
        return (kind,), f"expected [low, high], two finite numbers, got `{shown(args)}`"
    low, high = args
    if not low < high:
        return (kind,), f"low {low} must be below high {high}"
    if kind in ("int", "int_log") and not all(isinstance(v, int) for v in args):
        return (kind,), f"{kind} needs integer ends, got {args}"
    if kind in ("log_uniform", "int_log") and low <= 0:
        return (kind,), (f"a log scale needs low > 0, got {low}: use a small positive low "
                         f"(e.g. {1 if kind == 'int_log' else '1e-6'}) or `uniform`")
    if _is_int_type(tp) and kind in ("uniform", "log_uniform"):
        return (kind,), f"`{key}` is an integer key: use `int` or `int_log`"
    return None


def _stage_problems(stages: Any) -> list[Problem]:
    if stages is None:
        return []
    if not isinstance(stages, list) or not stages:
        return [Problem(("search", "stages"), "expected a list of stages, e.g. [{trials: 40, epochs: 1}, "
                                       "{trials: 12, epochs: 5, keep_top: 0.2}]")]
    out: list[Problem] = []
    for i, stage in enumerate(stages):
        path = ("search", "stages", i)
        if not isinstance(stage, dict):
            out.append(Problem(path, f"expected a mapping with trials, epochs, keep_top; got `{shown(stage)}`"))
            continue
        for key in stage:
            if key not in STAGE_KEYS:
                out.append(Problem(path + (key,), f"unknown key{did_you_mean(str(key), STAGE_KEYS)}; "
                                           f"valid keys here: {', '.join(STAGE_KEYS)}"))
        trials = stage.get("trials")
        if not _is_count(trials, 1, MAX_TRIALS):
            out.append(Problem(path + ("trials",), f"needs an integer between 1 and {MAX_TRIALS}, "
                                                   f"got `{shown(trials)}`"))
        epochs = stage.get("epochs")
        if epochs is not None and (not _is_number(epochs) or not 0 < epochs <= MAX_EPOCHS):
            out.append(Problem(path + ("epochs",), f"needs a finite number > 0 and <= {MAX_EPOCHS}, got "
                                                   f"`{shown(epochs)}`"))
        keep = stage.get("keep_top")
        if keep is not None and i == 0:
            out.append(Problem(path + ("keep_top",), "the first stage has no previous stage to narrow around; "
                                                     "remove it"))
        elif keep is not None and (not _is_number(keep) or not 0 < keep <= 1):
            out.append(Problem(path + ("keep_top",), f"needs a fraction in (0, 1], got `{shown(keep)}`"))
    return out


def _option_problems(search: dict, recipe) -> list[Problem]:
    out: list[Problem] = []
    trials = search.get("trials", DEFAULT_TRIALS)
    if not _is_count(trials, 1, MAX_TRIALS):
        out.append(Problem(("search", "trials"), f"needs an integer between 1 and {MAX_TRIALS}, got `{shown(trials)}`"))
    if search.get("sampler", "random") not in SAMPLERS:
        s = search.get("sampler")
        out.append(Problem(("search", "sampler"), f"got `{shown(s)}`; allowed: {', '.join(SAMPLERS)}"
                                                  f"{did_you_mean(str(s), SAMPLERS)}"))
    out += _pruner_problems(search.get("pruner", "none"))
    metric = search.get("metric")
    if metric is not None:
        task = known_task(recipe)
        names = metric_names(task) if task else [m for m in METRICS if not m.startswith("test_")]
        if metric not in names:
            out.append(Problem(("search", "metric"), f"`{shown(metric)}` is not a metric the runs report"
                                              f"{did_you_mean(str(metric), names)}; choose one of {', '.join(names)}"))
    return out


def _pruner_problems(pruner: Any) -> list[Problem]:
    path = ("search", "pruner")
    if isinstance(pruner, str):
        pruner = {"name": pruner}
    if not isinstance(pruner, dict):
        return [Problem(path, f"expected median, halving, none or {{name: median, startup_trials: 5, "
                       f"warmup_epochs: 0}}; got `{shown(pruner)}`")]
    out: list[Problem] = []
    for key, value in pruner.items():
        if key not in PRUNER_KEYS:
            out.append(Problem(path + (key,), f"unknown key{did_you_mean(str(key), PRUNER_KEYS)}; "
                                       f"valid keys here: {', '.join(PRUNER_KEYS)}"))
        elif key != "name" and not _is_count(value, 0, MAX_TRIALS):
            out.append(Problem(path + (key,), f"needs an integer between 0 and {MAX_TRIALS}, got `{shown(value)}`"))
    name = pruner.get("name", "none")
    if name not in PRUNERS:
        out.append(Problem(path, f"got `{shown(name)}`; allowed: {', '.join(PRUNERS)}"
                                 f"{did_you_mean(str(name), PRUNERS)}"))
    return out


# ---------------------------------------------------------------------------------------------
# parsing


def parse(search: dict, recipe: Recipe, *, trials: int | None = None, sampler: str | None = None,
          pruner: str | None = None, check_override: OverrideCheck | None = None) -> SearchSpec:
    """The section -> :class:`SearchSpec`; command-line options override the section.

    A loaded recipe's section was validated with its values by the loader; ``check_override``
    checks them again (a section assembled in code needs it), else only the section's shape is.

    Raises:
        RecipeError: the section has problems, or `trials` is given for a staged search.
    """
    problems = search_problems(search, recipe, check_override=check_override or (lambda key, value: None))
    if problems:
        raise RecipeError(problems, source="search section")
    if trials is not None and search.get("stages"):
        raise RecipeError([Problem((), "--trials applies to a search without stages; set each stage's trials in "
                                       "search.stages (or override it: 'search.stages=[{trials: 8, epochs: 1}]')")])
    metric, mode = resolve_metric(search.get("metric"), recipe)
    params = tuple(_param(k, d) for k, d in search["space"].items())
    stages = tuple(Stage(s["trials"], s.get("epochs"), s.get("keep_top", DEFAULT_KEEP_TOP))
                   for s in search.get("stages") or [])
    if not stages:
        stages = (Stage(trials or search.get("trials", DEFAULT_TRIALS)),)
    p = search.get("pruner", "none")
    p = {"name": p} if isinstance(p, str) else p
    if pruner is not None and pruner not in PRUNERS:
        raise RecipeError([Problem((), f"--pruner {pruner}: choose one of {', '.join(PRUNERS)}")])
    return SearchSpec(metric=metric, mode=mode, params=params, stages=stages,
                      sampler=sampler or search.get("sampler", "random"), pruner=pruner or p.get("name", "none"),
                      pruner_startup=p.get("startup_trials", 5), pruner_warmup=p.get("warmup_epochs", 0))


def resolve_metric(metric: str | None, recipe: Recipe) -> tuple[str, str]:
    """The searched metric (default: the recipe's monitor) and whether bigger is better."""
    metric = resolve_monitor(metric or recipe.train.monitor, known_task(recipe))
    return metric, metric_info(metric).mode


def _param(key: str, dist: dict) -> Param:
    (kind, args), = dist.items()
    if kind == "choice":
        return Param(key, kind, choices=tuple(args))
    low, high = args
    return Param(key, kind, low, high)
