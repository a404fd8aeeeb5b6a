"""Drawing a trial's values from Optuna for the parameters of a recipe's `search` section.

Optuna's categorical values must be scalars, so a choice whose values are lists or mappings
travels as JSON text and is decoded back into the recipe value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nnrun.recipe.search import Param

SCALARS = (str, int, float, bool, type(None))


def encode_choice(value: Any, choices: tuple) -> Any:
    """A choice value as Optuna stores it (JSON text unless every choice is a scalar)."""
    return value if all(isinstance(c, SCALARS) for c in choices) else json.dumps(value)


def decode_choice(value: Any, choices: tuple) -> Any:
    """The recipe value of a stored choice (the inverse of :func:`encode_choice`)."""
    return value if all(isinstance(c, SCALARS) for c in choices) else json.loads(value)


def suggest(trial, params: Sequence[Param]) -> dict[str, Any]:
    """Draw every parameter from an Optuna trial -> {dotted key: recipe value}."""
    out = {}
    for p in params:
        if p.kind == "choice":
            encoded = [encode_choice(c, p.choices) for c in p.choices]
            out[p.key] = decode_choice(trial.suggest_categorical(p.key, encoded), p.choices)
        elif p.integer:
            out[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log)
        else:
            out[p.key] = trial.suggest_float(p.key, float(p.low), float(p.high), log=p.log)
    return out
