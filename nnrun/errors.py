"""The error family every user mistake ends in, and the helpers that make its messages useful.

An :class:`NnrunError` carries what a person needs to fix the problem: where (file and line,
or the recipe key), what is wrong, and a hint. The CLI prints it as one clear message and
exits with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple


class NnrunError(Exception):
    """A problem the user can fix: bad recipe, missing data, bad checkpoint, unwritable folder."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  fix: {self.hint}"
        return text


class Problem(NamedTuple):
    """One thing wrong with a recipe: the key path it concerns, what is wrong, and where it was
    written (`line 5`, `override \\`a=b\\``, `default`) once the loader knows.

    Every validation rule returns these; :class:`RecipeError` holds them and formats only when
    printed, so callers read ``problem.message`` instead of taking a formatted line apart.
    """

    path: tuple
    message: str
    where: str | None = None

    def __str__(self) -> str:
        if not self.path:
            return f"{self.where}: {self.message}" if self.where else self.message
        dotted = ".".join(str(p) for p in self.path)
        return f"`{dotted}` ({self.where}): {self.message}" if self.where else f"`{dotted}`: {self.message}"


class RecipeError(NnrunError):
    """One or more problems in a recipe; ``problems`` holds each as a :class:`Problem`."""

    def __init__(self, problems: Iterable[Problem], *, source: str | None = None):
        self.problems = list(problems)
        self.source = source
        super().__init__("recipe problem(s)")

    def __str__(self) -> str:
        head = f"{len(self.problems)} problem(s) in recipe {self.source}" if self.source else "recipe problem(s)"
        return head + ":\n" + "\n".join(f"  - {p}" for p in self.problems)


class DataError(NnrunError):
    """Missing, corrupt or inconsistent data."""


class CheckpointError(NnrunError):
    """A checkpoint that is missing, corrupt, unsafe or from an incompatible run."""


class OutputError(NnrunError):
    """A folder or file nnrun must write that it cannot."""


@contextlib.contextmanager
def writing(what: str, *, hint: str) -> Iterator[None]:
    """Turn an OSError raised while writing into one :class:`OutputError`.

    Args:
        what: the thing being written, with its path (`the run folder runs/q/1`).
        hint: how to fix it (`choose a writable folder with --run-dir`).
    """
    try:
        yield
    except OSError as exc:
        where = exc.filename if exc.filename and not str(exc.filename).endswith(".tmp") else None
        detail = f" ({where})" if where is not None and str(where) not in what else ""
        raise OutputError(f"cannot write {what}: {exc.strerror or exc}{detail}", hint=hint) from exc


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid name closest to a misspelt one, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean `x`?)' or an empty string."""
    best = closest(name, choices)
    return f" (did you mean `{best}`?)" if best else ""


def import_callable(spec: str | None, *, key: str, error: type[NnrunError] = NnrunError) -> Any:
    """Resolve a recipe's ``module:function`` (or ``module:Class.attr``) to a callable.

    Args:
        spec: the text the user wrote.
        key: the recipe key it came from (``data.factory``, ``model.factory``), named in messages.
        error: the error class to raise (``DataError`` for data, ``NnrunError`` otherwise).

    Raises:
        error: a malformed spec, a module that does not import, a missing or non-callable attribute;
            each message names the spec, the closest public name when there is one, and the fix.
    """
    module_name, sep, attr_path = (spec or "").partition(":")
    if not sep or not module_name or not attr_path:
        raise error(f"{key} {spec!r} is not of the form `module:function`", where=key,
                    hint="e.g. mymodule:make (mymodule.py next to the recipe or on PYTHONPATH)")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"cannot import module `{module_name}` of {key} `{spec}`: {exc}", where=key,
                    hint="check the spelling, and that the module is installed or on PYTHONPATH "
                         "(e.g. next to the recipe)") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise error(f"module `{module_name}` has no callable `{attr_path}` ({key} `{spec}`)"
                        f"{did_you_mean(part, public)}",
                        where=key, hint="name a function defined in that module: `module:function`")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{key} `{spec}` is a {type(obj).__name__}, not a function or class", where=key,
                    hint=f"point {key} at a callable")
    return obj
