"""Shell completion for bash, zsh and fish through click's mechanism (`_NNRUN_COMPLETE=bash_source nnrun`).

Command names and options complete by themselves; this module completes the values click cannot
know: `RECIPE [KEY=VALUE]...` (the first word a shipped recipe name, a `.yaml` file or a folder;
later words a recipe key as `section.key=`, and after `key=` the key's choices, booleans as
true/false) and the NAME of `nnrun recipes`. It reads the schema only (no torch), so a completion
answers in the time Python takes to start.

Bash splits words at `=` (it is in COMP_WORDBREAKS), so there `optimizer.lr=3e-4` arrives as the
three words `optimizer.lr`, `=`, `3e-4` and the word being completed is the part after `=` (click
turns a lone `=` into an empty word): values are answered bare to bash and as `key=value` to zsh
and fish, and :func:`_rejoin` puts earlier words back together.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from click.shell_completion import CompletionItem

MAX_FILES = 200  # entries of one folder listed for a recipe path


def shipped_names(incomplete: str) -> list[CompletionItem]:
    """The shipped recipes whose name starts with `incomplete`, described by their first comment."""
    from nnrun.recipe import shipped_recipes

    items = []
    for name, resource in sorted(shipped_recipes().items()):
        if name.startswith(incomplete):
            first = next((line.lstrip("# ").strip() for line in resource.read_text().splitlines()
                          if line.startswith("#")), None)
            items.append(CompletionItem(name, help=first))
    return items


def complete_name(ctx, param, incomplete: str) -> list[CompletionItem]:
    """`nnrun recipes NAME`: a shipped recipe name."""
    return shipped_names(incomplete)


def recipe_files(incomplete: str) -> list[CompletionItem]:
    """`.yaml`/`.yml` files and folders that start with `incomplete` (folders end in `/`)."""
    head, sep, tail = incomplete.rpartition("/")
    folder = Path(os.path.expanduser(head + sep) if sep else ".")
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)[:MAX_FILES * 10]
    except OSError:
        return []
    items = []
    for entry in entries:
        if not entry.name.startswith(tail) or (entry.name.startswith(".") and not tail.startswith(".")):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir or entry.name.endswith((".yaml", ".yml")):
            items.append(CompletionItem(head + sep + entry.name + ("/" if is_dir else "")))
        if len(items) >= MAX_FILES:
            break
    return items


@functools.cache
def recipe_keys() -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """{dotted key: (its one-line doc, the values to offer)} for every key a `KEY=VALUE` override
    can set; a list of sections (`optimizer.groups`) is set whole."""
    import typing

    from nnrun.recipe import Recipe
    from nnrun.recipe.fields import leaves

    keys: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    for path, tp, f in leaves(Recipe):
        if "[]" in path:
            keys.setdefault(".".join(path[:path.index("[]")]), (None, ()))
            continue
        args = typing.get_args(tp)
        if tp is bool or (bool in args and len([a for a in args if a is not type(None)]) == 1):
            values: tuple[str, ...] = ("true", "false")
        else:
            values = tuple(str(c) for c in (f.metadata.get("choices") or ()))
        keys[".".join(path)] = (f.metadata.get("doc"), values)
    return keys


def _rejoin(words: list[str]) -> list[str]:
    """Undo bash's split at `=`: `a.b`, `=`, `c` -> `a.b=c`."""
    out: list[str] = []
    glue = False
    for w in words:
        if w == "=" and out:
            out[-1] += "="
            glue = True
        elif glue:
            out[-1] += w
            glue = False
        else:
            out.append(w)
    return out


def _values(key: str, typed: str, prefix: str) -> list[CompletionItem]:
    _, values = recipe_keys().get(key, (None, ()))
    return [CompletionItem(prefix + v) for v in values if v.startswith(typed)]


def complete_recipe_args(ctx, param, incomplete: str) -> list[CompletionItem]:
    """`RECIPE [KEY=VALUE]...`: recipe names and files first, then keys, then a key's values."""
    raw = [str(w) for w in (ctx.params.get(param.name) or ())]
    if raw and raw[-1] in recipe_keys():               # bash, right after `key=` (click drops the `=`)
        return _values(raw[-1], incomplete, "")
    if len(raw) > 1 and raw[-1] == "=":                # bash, `key=` then part of a value
        return _values(raw[-2], incomplete, "")
    if "=" in incomplete:                              # zsh and fish keep `key=value` one word
        key, _, typed = incomplete.partition("=")
        return _values(key, typed, key + "=")
    words = _rejoin(raw)
    items = []
    if not any("=" not in w for w in words):           # no recipe yet: it comes first
        items += shipped_names(incomplete) + recipe_files(incomplete)
        if "." not in incomplete:
            return items
    items += [CompletionItem(f"{key}=", help=doc) for key, (doc, _) in recipe_keys().items()
              if key.startswith(incomplete)]
    return items
