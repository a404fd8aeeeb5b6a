"""The error family every user mistake ends in.

An :class:`NnrunError` carries what a person needs to fix the problem: where (file and line,
or the recipe key), what is wrong, and a hint. The CLI prints it as one clear message and
exits with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


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


class RecipeError(NnrunError):
    """One or more problems in a recipe; ``problems`` lists each as its own line."""

    def __init__(self, problems: list[str], *, source: str | None = None):
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in recipe {source}" if source else "recipe problem(s)"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class DataError(NnrunError):
    """Missing, corrupt or inconsistent data."""


class CheckpointError(NnrunError):
    """A checkpoint that is missing, corrupt, unsafe or from an incompatible run."""


class OutputError(NnrunError):
    """A folder or file nnrun must write that it cannot."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid name closest to a misspelt one, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean `x`?)' or an empty string."""
    best = closest(name, choices)
    return f" (did you mean `{best}`?)" if best else ""
