"""The recipe keys whose values differ between runs, found by flattening each resolved recipe.

Every run folder holds its fully resolved recipe, so two runs of the same recipe differ exactly in
what was overridden (`optimizer.lr=1e-3`) or searched. Left out are the keys that change how a run
is logged or executed but never what it computes: the whole `log` section (progress, TensorBoard,
`log.run_dir`), the `search` section (a trial's recipe drops it), `train.threads`,
`data.num_workers`, `data.cache` and `data.cache_max_mb`. `name` is kept: runs of one recipe share
it, and when it differs the runs come from different recipes, which is worth seeing.
"""

from __future__ import annotations

import json
from typing import Any

IGNORED = ("log", "search", "train.threads", "data.num_workers", "data.cache", "data.cache_max_mb")
MISSING = "-"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """`{"optimizer": {"lr": 1e-3}}` -> `{"optimizer.lr": 1e-3}`; lists and empty mappings are values."""
    if not isinstance(data, dict) or (not data and prefix):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED)


def _canonical(value: Any) -> str:
    """Equal values compare equal: 2 and 2.0, 1e-3 and 0.001, key order in mappings."""
    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return str(v)

    return json.dumps(norm(value), sort_keys=True)


def differing_keys(recipes: list[dict]) -> list[str]:
    """The dotted keys (in recipe order) whose values are not the same in every recipe; a key one
    recipe lacks (an older nnrun) counts as differing."""
    flats = [flatten(r) for r in recipes]
    keys = dict.fromkeys(k for f in flats for k in f if not ignored(k))
    return [k for k in keys if len({_canonical(f[k]) if k in f else "\0missing" for f in flats}) > 1]


def values(recipe: dict, keys: list[str]) -> dict[str, str]:
    """The shown value of each key in one recipe (`-` where it lacks the key)."""
    flat = flatten(recipe)
    return {k: format_value(flat[k]) if k in flat else MISSING for k in keys}


def format_value(value: Any) -> str:
    """A value as a person reads it: `0.001`, `[64, 32]`, `null`, `true`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)
