"""Recipe starters: the text of a shipped recipe, and a copy of it to edit (torchtune's `tune cp`).

Used by `nnrun recipes NAME [--copy PATH]`; no torch, no YAML (the text is copied as shipped,
comments included).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from nnrun.errors import NnrunError, OutputError, did_you_mean
from nnrun.files import write_text_atomic
from nnrun.recipe.load import shipped_recipes


def _stem(name: str) -> str:
    return name[:-5] if name.endswith(".yaml") else name


def shipped_text(name: str) -> str:
    """The text of shipped recipe `name` (`quickstart` or `quickstart.yaml`), comments and all.

    Raises:
        NnrunError: no shipped recipe of that name; the message lists them, with the closest one.
    """
    shipped = shipped_recipes()
    stem = _stem(name)
    if stem not in shipped:
        raise NnrunError(f"no shipped recipe `{name}`{did_you_mean(stem, shipped)}",
                         hint=f"name one of: {', '.join(sorted(shipped))} (`nnrun recipes` describes them)")
    return shipped[stem].read_text(encoding="utf-8")


def target_path(name: str, dest: str) -> Path:
    """Where `--copy dest` writes: into an existing folder as NAME.yaml; else `dest` itself, with
    `.yaml` added unless it ends in `.yaml` or `.yml` (so `my` and `my.v2` become `my.yaml` and
    `my.v2.yaml`)."""
    if Path(dest).is_dir():
        return Path(dest) / f"{_stem(name)}.yaml"
    if dest.endswith(("/", os.sep)):  # a folder meant, which does not exist: refused by the caller
        return Path(dest)
    dest = Path(dest)
    return dest if dest.suffix.lower() in (".yaml", ".yml") else dest.with_name(dest.name + ".yaml")


def copy_recipe(name: str, text: str, dest: str, *, force: bool) -> Path:
    """Write `text` (shipped recipe `name`) to where `dest` says (:func:`target_path`), atomically.

    Raises:
        OutputError: the file exists (without `force`), the folder does not exist, or the place is not
            writable; the message names the path and the fix.
    """
    path = target_path(name, dest)
    parent = path.parent
    if dest.endswith(("/", os.sep)) and not Path(dest).is_dir():
        raise OutputError(f"cannot copy recipe {name} to {dest}: no such folder",
                          hint=f"create it first (mkdir -p {quoted(Path(dest))}) or give a file path such as my.yaml")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"cannot copy recipe {name} to {path}: the folder {parent} {what}",
                          hint=f"create it first (mkdir -p {quoted(parent)}) or choose another path")
    if path.is_dir():
        raise OutputError(f"cannot copy recipe {name} to {path}: a folder of that name is in the way",
                          hint="choose another path")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; not overwriting it with recipe {name}",
                          hint=f"add --force to overwrite it, or choose another path: "
                               f"nnrun recipes {name} --copy OTHER.yaml")
    write_text_atomic(path, text, what=f"recipe {name} to {path}", hint="choose a writable place for --copy")
    return path


def quoted(path: Path) -> str:
    """The path as a shell word (for the commands messages suggest)."""
    return shlex.quote(str(path))
