"""Recipe text -> validated, frozen :class:`~nnrun.recipe.schema.Recipe`.

Everything a person can get wrong in a recipe is caught here, before any work starts, and
reported at once: unknown keys (with the closest valid key), wrong types and out-of-range
values (with the file and line), and cross-field problems (GroupNorm groups that do not divide
a width, a monitor the task does not produce, ...). Dotted ``key=value`` overrides from the
command line go through the same checks.

The one recursion of validation lives here, in plain sight: the `search` section's values are
checked by validating the recipe again with each value as an override (:func:`_override_problem`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nnrun.errors import Problem, RecipeError, did_you_mean
from nnrun.recipe.checks import cross_field_problems
from nnrun.recipe.schema import Recipe, dataclass_of, describe_range, is_optional, yaml_key
from nnrun.recipe.search import override_text, search_problems


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 needs a dot: `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass(frozen=True)
class Source:
    """Where recipe text came from, for messages: a file path or a shipped recipe name."""

    label: str
    path: Path | None = None


# ---------------------------------------------------------------------------------------------
# finding and parsing


def shipped_recipes() -> dict[str, Any]:
    """Names of the recipes that ship with nnrun, mapped to their importlib resource."""
    try:
        root = resources.files("nnrun.recipes")
    except ModuleNotFoundError:  # pragma: no cover - broken install
        return {}
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".yaml")}


def locate(name_or_path: str | Path) -> tuple[str, Source]:
    """Read recipe text from a file, or from a shipped recipe named without a path."""
    path = Path(name_or_path)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), Source(str(path), path)
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError([Problem((), f"cannot read the recipe file: {exc}")], source=str(path)) from exc
    shipped = shipped_recipes()
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if str(name_or_path) == stem and stem in shipped:
        return shipped[stem].read_text(encoding="utf-8"), Source(f"{stem} (shipped)", None)
    hint = did_you_mean(stem, shipped) or f" (shipped recipes: {', '.join(sorted(shipped))})"
    raise RecipeError([Problem((), f"no recipe file `{name_or_path}` and no shipped recipe of that name{hint}; "
                                   "run `nnrun recipes` to list them")], source=str(name_or_path))


def _construct(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> Any:
    """Node -> Python value, recording the line of every mapping key by its dotted path."""
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(_Loader(" ").construct_object(key_node))
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, path + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(n, path + (i,), lines) for i, n in enumerate(node.value)]
    return _Loader(" ").construct_object(node, deep=True)


def parse_text(text: str, source: Source) -> tuple[dict, dict[tuple, int]]:
    """YAML text -> (mapping, {key path: line}); syntax errors name the line."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError([Problem((), f"{where}not valid YAML ({problem})")], source=source.label) from exc
    lines: dict[tuple, int] = {}
    if node is None:
        return {}, lines
    data = _construct(node, (), lines)
    if not isinstance(data, dict):
        raise RecipeError([Problem((), "the recipe must be a mapping of sections (data:, model:, ...)")],
                          source=source.label)
    return data, lines


def parse_overrides(overrides: Sequence[str]) -> list[tuple[tuple[str, ...], Any, str]]:
    """`a.b=value` strings -> (key path, YAML-typed value, original text)."""
    parsed, problems = [], []
    for raw in overrides:
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            problems.append(Problem((), f"override `{raw}`: expected key=value, e.g. optimizer.lr=3e-4"))
            continue
        try:
            typed = yaml.load(value, Loader=_Loader) if value.strip() else None
        except yaml.YAMLError:
            typed = value
        parsed.append((tuple(key.strip().split(".")), typed, raw))
    if problems:
        raise RecipeError(problems, source="command line")
    return parsed


# ---------------------------------------------------------------------------------------------
# validation


class _Problems:
    """Collects problems with their location so they can all be reported at once."""

    def __init__(self, source: Source, lines: dict[tuple, int], origins: dict[tuple, str]):
        self.source, self.lines, self.origins, self.items = source, lines, origins, []

    def where(self, path: tuple) -> str:
        if path in self.origins:
            return f"override `{self.origins[path]}`"
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return f"line {self.lines[path[:n]]}"
        return "default"

    def add(self, path: tuple, message: str) -> None:
        self.items.append(Problem(tuple(path), message, self.where(tuple(path))))


def _describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if is_optional(tp):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe_type(a) for a in inner) + " or null"
    if origin is list:
        return f"a list of {_describe_type(typing.get_args(tp)[0])}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            dict: "a mapping"}.get(tp, str(tp))


def _check_type(value: Any, tp: Any) -> Any:
    """Return the value coerced to tp (int -> float), or raise TypeError."""
    origin = typing.get_origin(tp)
    if is_optional(tp):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _check_type(value, inner[0])
    if origin is list:
        if not isinstance(value, list):
            raise TypeError
        return [_check_type(v, typing.get_args(tp)[0]) for v in value]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (bool, str, dict) and isinstance(value, tp):
        return value
    raise TypeError


def _check_value(value: Any, meta: dict) -> str | None:
    """Problem text when the value is outside what the field allows."""
    choices = meta.get("choices")
    if choices and value not in choices:
        return f"got `{value}`; allowed: {', '.join(map(str, choices))}{did_you_mean(str(value), choices)}"
    lo, hi = meta.get("min"), meta.get("max")
    numbers = value if isinstance(value, list) else [value]
    for v in numbers:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if (lo is not None and (v < lo or (meta.get("min_exclusive") and v == lo))) or (
                hi is not None and v > hi):
            return f"got {value}; expected a number {describe_range(meta)}"
    item_min = meta.get("item_min")
    if isinstance(value, list) and item_min is not None and any(v < item_min for v in value):
        return f"got {value}; every item must be >= {item_min}"
    return None


def _build_nested(cls: type, shape: str, value: Any, path: tuple, problems: _Problems) -> Any:
    if shape == "optional" and value is None:
        return None
    if shape == "list":
        if not isinstance(value, list):
            problems.add(path, f"expected a list of mappings, got `{value}`")
            return []
        return [_build_section(cls, v, path + (i,), problems) for i, v in enumerate(value)]
    return _build_section(cls, value, path, problems)


def _build_section(cls: type, data: Any, path: tuple, problems: _Problems) -> Any:
    """Mapping -> dataclass instance of cls; problems are collected, defaults fill the gaps."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add(path, f"expected a mapping of keys, got `{data}`")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {yaml_key(f): f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in fields:
            dotted = ".".join(map(str, path + (key,)))
            valid = [".".join(map(str, path + (k,))) for k in fields]
            problems.add(path + (key,), f"unknown key{did_you_mean(dotted, valid) or did_you_mean(str(key), fields)}"
                         f"; valid keys here: {', '.join(fields)}")
            continue
        f = fields[key]
        tp = hints[f.name]
        nested, shape = dataclass_of(tp)
        if nested is not None:
            values[f.name] = _build_nested(nested, shape, value, path + (key,), problems)
            continue
        try:
            value = _check_type(value, tp)
        except TypeError:
            problems.add(path + (key,), f"got `{value}`; expected {_describe_type(tp)}")
            continue
        bad = _check_value(value, f.metadata) if value is not None else None
        if bad:
            problems.add(path + (key,), bad)
            continue
        values[f.name] = value
    if problems.items:
        try:
            return cls(**values)
        except TypeError:  # a required field is missing; its problem is already collected
            return None
    return cls(**values)


def _apply_override(data: dict, path: tuple, value: Any) -> None:
    node = data
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def validate(data: dict, *, source: Source, lines: dict[tuple, int] | None = None,
             overrides: Sequence[str] = ()) -> Recipe:
    """Mapping (+ overrides) -> Recipe, or RecipeError listing every problem found."""
    data = copy.deepcopy(data)
    origins = {}
    for path, value, raw in parse_overrides(overrides):
        _apply_override(data, path, value)
        origins[path] = raw
    if "name" not in data and source.path is not None:
        data["name"] = source.path.stem
    elif "name" not in data:
        data["name"] = source.label.split(" ")[0]
    problems = _Problems(source, lines or {}, origins)
    recipe = _build_section(Recipe, data, (), problems)
    if not problems.items:
        for path, message, _ in cross_field_problems(recipe):
            problems.add(path, message)
    if not problems.items and recipe.search:
        check = functools.partial(_override_problem, to_dict(recipe))
        for path, message, _ in search_problems(recipe.search, recipe, check_override=check):
            problems.add(path, message)
    if problems.items:
        raise RecipeError(problems.items, source=source.label)
    return _absolute_data_path(recipe, source, from_override=("data", "path") in origins)


def _override_problem(base: dict, key: str, value: Any) -> str | None:
    """Why `key=value` would not validate as an override of the recipe `base`, or None (the
    search section's check of every range end and choice)."""
    try:
        validate({**base, "search": {}}, source=Source("search space"), overrides=[override_text(key, value)])
    except RecipeError as exc:
        return "; ".join(p.message for p in exc.problems)
    return None


def _absolute_data_path(recipe: Recipe, source: Source, *, from_override: bool) -> Recipe:
    """Make `data.path` absolute: relative to the recipe file's folder when written in the file,
    to the current folder when given on the command line or in a shipped recipe."""
    path = recipe.data.path
    if path is None or Path(path).expanduser().is_absolute():
        return recipe if path is None else dataclasses.replace(
            recipe, data=dataclasses.replace(recipe.data, path=str(Path(path).expanduser())))
    base = source.path.parent if source.path is not None and not from_override else Path.cwd()
    resolved = str((base / Path(path).expanduser()).resolve())
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, path=resolved))


def load(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, parse and validate a recipe file or shipped recipe, applying dotted overrides."""
    text, source = locate(name_or_path)
    data, lines = parse_text(text, source)
    return validate(data, source=source, lines=lines, overrides=overrides)


def to_dict(obj: Any) -> Any:
    """The fully resolved recipe as plain data (all defaults filled), in recipe spelling."""
    if dataclasses.is_dataclass(obj):
        return {yaml_key(f): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(data: dict, *, label: str = "checkpoint") -> Recipe:
    """Rebuild a Recipe from `to_dict` output (e.g. the copy stored in a checkpoint)."""
    return validate(data, source=Source(label))


def dump(recipe: Recipe) -> str:
    """YAML text of the fully resolved recipe."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, default_flow_style=None)
