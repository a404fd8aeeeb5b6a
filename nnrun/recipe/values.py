"""One recipe value against its schema field: type, finiteness, range, list length, choices.

NaN compares false with everything, so a range check alone lets it through (`nan < 0` and
`nan > 1` are both false); every float is therefore checked for being finite first (only a field
that says so, `clip.norm_type`, takes `.inf`). YAML 1.1 reads `off`, `no`, `on`, `yes` as
booleans: a field whose documented words include them gets the word back, and any other field
that receives a boolean, a number or a date where it wants text says how to quote it.
"""

from __future__ import annotations

import datetime
import math
import typing
from typing import Any

from nnrun.errors import did_you_mean
from nnrun.recipe.fields import describe_items, describe_range, is_optional

_WORDS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}


class ValueProblem(Exception):
    """Why a value does not fit its field (the message of one :class:`~nnrun.errors.Problem`)."""


def shown(value: Any, width: int = 60) -> str:
    """A value as text for a message, in YAML's spelling for true/false/null, clipped (a fuzzed or
    pasted value can be megabytes long)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    try:
        text = str(value)
    except ValueError:  # an integer with more digits than Python will print
        return "a number too large to print"
    if not text.isprintable():  # a NUL, a newline, a lone surrogate: show them escaped
        text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:width])
    return text if len(text) <= width else text[:width - 3] + "..."


def describe_type(tp: Any) -> str:
    """`an integer`, `a number`, `a list of integers`, `a string or null`, ..."""
    origin = typing.get_origin(tp)
    if is_optional(tp):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(describe_type(a) for a in inner) + " or null"
    if origin is list:
        item = typing.get_args(tp)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(
            item, describe_type(item))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            dict: "a mapping"}.get(tp, str(tp))


def _yaml_hint(value: Any) -> str:
    """What YAML made of an unquoted word the field wanted as text."""
    if isinstance(value, bool):
        return " (YAML reads yes/no/on/off/true/false as booleans: quote the word, e.g. 'off')"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return " (YAML reads it as a date: quote it to make it text)"
    if isinstance(value, (int, float)):
        return " (YAML reads it as a number: quote it to make it text)"
    return ""


def _wants_text(tp: Any) -> bool:
    return tp is str or (is_optional(tp) and str in typing.get_args(tp))


def coerce(value: Any, tp: Any) -> Any:
    """The value as type tp (an int where a float is wanted becomes one), or TypeError."""
    if is_optional(tp):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return coerce(value, inner[0])
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise TypeError
        return [coerce(v, typing.get_args(tp)[0]) for v in value]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)  # OverflowError for an integer beyond any float: the caller reports it
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (bool, str, dict) and isinstance(value, tp):
        return value
    raise TypeError


def check_field(value: Any, tp: Any, meta: dict) -> Any:
    """The value a field gets from what the recipe says, or ValueProblem with the message."""
    choices = meta.get("choices")
    if isinstance(value, bool) and choices and _wants_text(tp):
        value = next((w for w in _WORDS[value] if w in choices), value)
    try:
        value = coerce(value, tp)
    except OverflowError:
        raise ValueProblem(f"got {shown(value)}; expected a finite number {describe_range(meta)}".rstrip()) from None
    except TypeError:
        hint = _yaml_hint(value) if _wants_text(tp) else ""
        if choices:
            maybe = " (did you mean `none`?)" if value is False and "none" in choices else ""
            raise ValueProblem(f"got `{shown(value)}`{hint}; allowed: {', '.join(map(str, choices))}{maybe}") from None
        raise ValueProblem(f"got `{shown(value)}`; expected {describe_type(tp)}{hint}") from None
    if value is None:
        return None
    problem = _choice_problem(value, choices) or _text_problem(value) or _number_problem(value, meta)
    if problem:
        raise ValueProblem(problem)
    return value


def _choice_problem(value: Any, choices: tuple | None) -> str | None:
    if not choices or value in choices:
        return None
    hint = _yaml_hint(value) if not isinstance(value, str) else did_you_mean(value, choices)
    return f"got `{shown(value)}`; allowed: {', '.join(map(str, choices))}{hint}"


def _text_problem(value: Any) -> str | None:
    """A NUL or an undecodable byte in text: no path, name or column may hold one."""
    for text in value if isinstance(value, list) else [value]:
        if not isinstance(text, str):
            continue
        if "\x00" in text:
            return f"`{shown(text)}` holds a NUL character; remove it"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"`{shown(text)}` holds bytes that are not UTF-8 text; retype it"
    return None


def _number_problem(value: Any, meta: dict) -> str | None:
    """Non-finite numbers, numbers out of range, too many items."""
    is_list = isinstance(value, list)
    max_items = meta.get("max_items")
    if is_list and max_items is not None and len(value) > max_items:
        return f"got {len(value)} items; {describe_items(meta)}"
    numbers = [v for v in (value if is_list else [value]) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    kind = "an integer" if all(isinstance(v, int) for v in numbers) else "a finite number"
    lo, hi = meta.get("min"), meta.get("max")
    item = (meta.get("item_min"), meta.get("item_max")) if is_list else (None, None)
    for v in numbers:
        if v == math.inf and meta.get("allow_inf"):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            if is_list:
                return f"got {shown(value)}; every item must be a finite number"
            return f"got {shown(value)}; expected a finite number {describe_range(meta)}".rstrip()
        if (lo is not None and (v < lo or (meta.get("min_exclusive") and v == lo))) or (hi is not None and v > hi):
            return f"got {shown(value)}; expected {kind} {describe_range(meta)}"
        if (item[0] is not None and v < item[0]) or (item[1] is not None and v > item[1]):
            return f"got {shown(value)}; {describe_items(meta)}"
    return None
