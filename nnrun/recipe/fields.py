"""How a schema field is declared and read: :func:`opt` and its metadata, the upper bounds every
number gets, and the helpers the loader, the checks and the reference generator read fields with.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from dataclasses import field
from typing import Any

# Upper bounds, far above any real recipe and far below what breaks: a seed every RNG takes (numpy
# and Optuna take < 2**32, and members and search workers add offsets), buffers allocated per
# step of a window (`log.every_n_steps`, `clip.window`), a step count a float holds exactly.
MAX_SEED = 2**31 - 1
MAX_EPOCHS = 1_000_000
MAX_DURATION = 1_000_000_000  # schedule durations, in epochs or optimizer steps (`schedule.unit`)
MAX_COUNT = 1_000_000         # evaluations, steps of a window, members
MAX_INTERVAL = 1_000_000_000  # "every N steps" settings that allocate nothing
MAX_WIDTH = 65_536            # a layer's units or channels
MAX_LAYERS = 1_000
MAX_FLOAT = 1e30  # any other float: it ends up in float32 tensors (max 3.4e38), times small factors


def opt(default: Any, doc: str, *, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, min_exclusive: bool = False, item_min: float | None = None,
        item_max: float | None = None, max_items: int | None = None, allow_inf: bool = False) -> Any:
    """A recipe field: its default, the practice it encodes, and what values are allowed.

    Every float must be finite (NaN passes any comparison, so ranges alone cannot refuse it), and
    every number has an upper bound no real recipe reaches: the run cannot then overflow a seed,
    allocate a buffer the size of a typo, or count steps past what a float can hold.

    Args:
        default: the value used when the recipe leaves the key out (lists are copied per use).
        doc: one line for the README and `nnrun check`.
        choices: the allowed values of a string field.
        min, max: the allowed numeric range (inclusive unless ``min_exclusive``).
        item_min, item_max: bounds for every item of a list field.
        max_items: the longest list a list field takes.
        allow_inf: `.inf` is a meaningful value (`clip.norm_type`); NaN never is.
    """
    meta = {"doc": doc, "choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive,
            "item_min": item_min, "item_max": item_max, "max_items": max_items, "allow_inf": allow_inf}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# reading the schema (the loader, the reference generator and the search section use these)


def yaml_key(f: dataclasses.Field) -> str:
    """The recipe spelling of a field (`init.from` is stored as `from_`, a Python keyword)."""
    return f.metadata.get("key", f.name)


def is_optional(tp: Any) -> bool:
    """Whether a field's type is a union (`X | None`, written either way)."""
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def dataclass_of(tp: Any) -> tuple[type | None, str]:
    """(dataclass, shape) where shape is 'one', 'optional' or 'list'; (None, '') for plain types."""
    if dataclasses.is_dataclass(tp):
        return tp, "one"
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if is_optional(tp) and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0], "optional"
    if typing.get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]):
        return args[0], "list"
    return None, ""


def leaves(cls: type, prefix: tuple = ()) -> Iterator[tuple[tuple, Any, dataclasses.Field]]:
    """(key path, type, field) of every plain key under a section, nested sections walked; `[]`
    in a path marks a list of sections (`optimizer.groups[]`)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        nested, shape = dataclass_of(hints[f.name])
        path = prefix + (yaml_key(f),)
        if nested is None:
            yield path, hints[f.name], f
        else:
            yield from leaves(nested, path + (("[]",) if shape == "list" else ()))


def describe_range(meta: dict) -> str:
    """A field's numeric range in words: `between 0 and 1`, `> 0 and <= 1`, `> 0`, `>= 1`, `<= 10`, or ''."""
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None and meta.get("min_exclusive"):
        return f"> {lo} and <= {hi}"
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    if lo is not None:
        return f"{'>' if meta.get('min_exclusive') else '>='} {lo}"
    return f"<= {hi}" if hi is not None else ""


def describe_items(meta: dict) -> str:
    """A list field's item bounds and length in words: `every item between 1 and 65536; at most 1000 items`."""
    lo, hi, most = meta.get("item_min"), meta.get("item_max"), meta.get("max_items")
    parts = []
    if lo is not None and hi is not None:
        parts.append(f"every item between {lo} and {hi}")
    elif lo is not None:
        parts.append(f"every item >= {lo}")
    if most is not None:
        parts.append(f"at most {most} items")
    return "; ".join(parts)
