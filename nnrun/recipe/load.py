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
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from nnrun.errors import Problem, RecipeError, did_you_mean
from nnrun.recipe import yamltext
from nnrun.recipe.checks import cross_field_problems
from nnrun.recipe.fields import dataclass_of, yaml_key
from nnrun.recipe.schema import Recipe
from nnrun.recipe.search import override_text, search_problems
from nnrun.recipe.values import ValueProblem, check_field, shown


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


def read_text(path: Path) -> str:
    """A recipe file's text: UTF-8 (UTF-16 with its byte-order mark too), at most 1 MiB."""
    def refuse(message: str, where: str | None = None) -> RecipeError:
        return RecipeError([Problem((), message, where)], source=str(path))

    try:
        size = path.stat().st_size
        if size > yamltext.MAX_BYTES:
            raise refuse(f"the file has {size:,} bytes; a recipe is YAML text of at most {yamltext.MAX_BYTES:,} "
                         "bytes: is it the right file?")
        raw = path.read_bytes()
    except OSError as exc:
        raise refuse(f"cannot read the recipe file: {exc.strerror or exc}") from exc
    encoding = "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise refuse(f"not {encoding.upper()} text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the "
                     "file as UTF-8", f"line {line}") from exc


def locate(name_or_path: str | Path) -> tuple[str, Source]:
    """Read recipe text from a file, or from a shipped recipe named without a path."""
    path = Path(name_or_path)
    if path.is_file():
        return read_text(path), Source(str(path), path)
    shipped = shipped_recipes()
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if str(name_or_path) == stem and stem in shipped:
        return shipped[stem].read_text(encoding="utf-8"), Source(f"{stem} (shipped)", None)
    hint = did_you_mean(stem, shipped) or f" (shipped recipes: {', '.join(sorted(shipped))})"
    raise RecipeError([Problem((), f"no recipe file `{name_or_path}` and no shipped recipe of that name{hint}; "
                                   "run `nnrun recipes` to list them")], source=str(name_or_path))


def parse_text(text: str, source: Source) -> tuple[dict, dict[tuple, int]]:
    """YAML text -> (mapping, {key path: line}); what YAML or a recipe cannot hold names its line
    (see :mod:`nnrun.recipe.yamltext`: tags, alias bombs, recursive anchors, deep nesting, duplicate keys)."""
    try:
        data, lines, duplicates = yamltext.parse_document(text)
    except yamltext.YamlProblem as exc:
        where = f"line {exc.line}" if exc.line else None
        raise RecipeError([Problem((), exc.message, where)], source=source.label) from exc
    if duplicates:
        raise RecipeError(duplicates, source=source.label)
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise RecipeError([Problem((), "the recipe must be a mapping of sections (data:, model:, ...)")],
                          source=source.label)
    return data, lines


def parse_overrides(overrides: Sequence[str]) -> list[tuple[tuple[str, ...], Any, str]]:
    """`a.b=value` strings -> (key path, YAML-typed value, original text)."""
    parsed, problems = [], []
    for raw in overrides:
        key, sep, value = raw.partition("=")
        shown_raw = shown(raw, 100)
        if not sep or not key.strip():
            problems.append(Problem((), f"override `{shown_raw}`: expected key=value, e.g. optimizer.lr=3e-4"))
            continue
        path = tuple(key.strip().split("."))
        if not all(path):
            problems.append(Problem((), f"override `{shown_raw}`: the key has an empty part (two dots in a row, or "
                                        "a dot at an end); write it as section.key, e.g. data.source=csv"))
            continue
        try:
            typed = yamltext.parse_value(value) if value.strip() else None
        except yamltext.YamlProblem as exc:
            problems.append(Problem(path, exc.message, f"override `{shown_raw}`"))
            continue
        parsed.append((path, typed, raw))
    if problems:
        raise RecipeError(problems, source="command line")
    return parsed


# ---------------------------------------------------------------------------------------------
# validation


class _Problems:
    """Collects problems with their location so they can all be reported at once."""

    def __init__(self, source: Source, lines: dict[tuple, int], origins: dict[tuple, str], data: dict | None = None):
        self.source, self.lines, self.origins, self.items, self.data = source, lines, origins, [], data or {}

    def given(self, path: tuple) -> bool:
        """Whether the recipe's data holds the key (a recipe built from a dict has no lines to name)."""
        node = self.data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def where(self, path: tuple) -> str | None:
        """The override that set the key (or a section above it, or a key below it that it created),
        else the line of the key or of its nearest section in the file, else `default` when the key was
        not given at all (None: given in a dict, which has no lines)."""
        below = [raw for p, raw in self.origins.items() if path and p[:len(path)] == path and path not in self.lines]
        if below:
            return f"override `{below[0]}`"
        for n in range(len(path), 0, -1):
            if path[:n] in self.origins:
                return f"override `{self.origins[path[:n]]}`"
            if path[:n] in self.lines:
                return f"line {self.lines[path[:n]]}"
        return None if self.given(path) else "default"

    def add(self, path: tuple, message: str) -> None:
        self.items.append(Problem(tuple(path), message, self.where(tuple(path))))


def _build_nested(cls: type, shape: str, value: Any, path: tuple, problems: _Problems) -> Any:
    if shape == "optional" and value is None:
        return None
    if shape == "list":
        if not isinstance(value, list):
            problems.add(path, f"expected a list of mappings, got `{shown(value)}`")
            return []
        return [_build_section(cls, v, path + (i,), problems) for i, v in enumerate(value)]
    return _build_section(cls, value, path, problems)


def _build_section(cls: type, data: Any, path: tuple, problems: _Problems) -> Any:
    """Mapping -> dataclass instance of cls; problems are collected, defaults fill the gaps."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add(path, f"expected a mapping of keys, got `{shown(data)}`")
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
            values[f.name] = check_field(value, tp, f.metadata)
        except ValueProblem as exc:
            problems.add(path + (key,), str(exc))
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
        origins[path] = shown(raw, 100)  # as messages show it
    if "name" not in data and source.path is not None:
        data["name"] = source.path.stem
    elif "name" not in data:
        data["name"] = source.label.split(" ")[0]
    problems = _Problems(source, lines or {}, origins, data)
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
    if isinstance(value, float) and not math.isfinite(value):
        return f"got {value}; expected a finite number"
    try:
        text = override_text(key, value)
    except (TypeError, ValueError):  # a date, bytes, ...: nothing a trial could pass on the command line
        return f"`{shown(value)}` cannot be passed to a trial; use numbers, text, true/false or lists of them"
    try:
        validate({**base, "search": {}}, source=Source("search space"), overrides=[text])
    except RecipeError as exc:
        return "; ".join(p.message for p in exc.problems)
    return None


def _absolute_data_path(recipe: Recipe, source: Source, *, from_override: bool) -> Recipe:
    """Make `data.path` absolute: relative to the recipe file's folder when written in the file,
    to the current folder when given on the command line or in a shipped recipe."""
    if recipe.data.path is None:
        return recipe
    path = Path(recipe.data.path)
    try:
        path = path.expanduser()
    except RuntimeError:  # `~someone` with no such user: keep the path as written
        pass
    if not path.is_absolute():
        base = source.path.parent if source.path is not None and not from_override else Path.cwd()
        try:
            path = (base / path).resolve()
        except (OSError, RuntimeError):  # a symlink loop: the data loader names the path
            path = (base / path).absolute()
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, path=str(path)))


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
    return yamltext.dump(to_dict(recipe))
