"""The search folder's own files: `recipe.yaml` (the base recipe), `search.json` (study name,
storage, trial budget) and `tb/`, and what `--resume` reads back from them.

`search.json` keeps what the command line said and the recipe does not: the study, the storage
(`study.db`, relative to the folder, for the default SQLite file; an explicit `--storage` as
given) and the trial budget of every stage, so `--resume` continues the same study with the same
budget wherever the folder is now. Both files are written atomically (temporary file, rename): a
signal or a full disk never leaves half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

from nnrun import recipe as recipe_io
from nnrun.errors import NnrunError, writing
from nnrun.recipe.schema import Recipe
from nnrun.recipe.search import SearchSpec
from nnrun.tools.search import study as studies

META = "search.json"


def read_meta(out: Path) -> dict:
    """`search.json` of the search in `out`."""
    try:
        return json.loads((out / META).read_text())
    except (OSError, ValueError) as exc:
        raise NnrunError(f"{out} holds no readable {META}, so there is no search to resume",
                         hint="give the folder of an earlier `nnrun search` with --out") from exc


def stored_recipe(out: Path, overrides=()) -> Recipe:
    """The base recipe a search folder was started with (for `--resume` without RECIPE)."""
    path = out / "recipe.yaml"
    if not path.is_file():
        raise NnrunError(f"{out} has no recipe.yaml", hint="give RECIPE explicitly")
    return recipe_io.load(path, overrides)


def with_budget(spec: SearchSpec, meta: dict, trials: int | None, out: Path) -> SearchSpec:
    """The spec with the trial budget a resumed search keeps: the stored one, or a larger
    `--trials` (which adds trials). A smaller budget is refused: trials already run or queued
    cannot be taken back.

    Args:
        spec: the parsed search section (its stage budgets come from the recipe or `--trials`).
        meta: `search.json` of the resumed search ({} for a new one).
        trials: `--trials` as given (None: not given).
        out: the search folder (named in messages).
    """
    if trials is not None and len(spec.stages) == 1:
        spec = dataclasses.replace(spec, stages=(dataclasses.replace(spec.stages[0], trials=trials),))
    stored = meta.get("trials")
    if not stored:  # a new search, or one started by an nnrun that did not record its budget
        return spec
    if len(stored) != len(spec.stages):
        raise NnrunError(f"the search in {out} has {len(stored)} stage(s) ({out / META}) but this recipe gives "
                         f"{len(spec.stages)}", hint="resume with the search's own recipe: omit RECIPE")
    if trials is None and len(spec.stages) == 1:
        spec = dataclasses.replace(spec, stages=(dataclasses.replace(spec.stages[0], trials=stored[0]),))
    for k, (stage, before) in enumerate(zip(spec.stages, stored)):
        if stage.trials < before:
            what = f"--trials {stage.trials}" if len(stored) == 1 else f"stage {k + 1}'s {stage.trials} trials"
            raise NnrunError(f"{what} is less than the budget of {before} trials the search in {out} was started "
                             f"with ({out / META}): a budget can grow but not shrink",
                             hint=f"resume without --trials to finish its {before} trials, or give a larger number "
                                  "to add trials")
    return spec


def resolve_storage(storage: str | None, meta: dict, out: Path, *, resume: bool) -> tuple[str, str]:
    """(storage URL, where it came from): `--storage` as given; else the one `search.json`
    records, resolved for the folder as it is now; else `study.db` in the folder. Resuming from an
    SQLite file that is not there is refused (SQLite would quietly start an empty study)."""
    if storage:
        url, origin = studies.storage_url(storage, out), "--storage"
    elif meta.get("storage"):
        url, origin = studies.stored_url(meta["storage"], out), str(out / META)
    else:
        url, origin = studies.storage_url(None, out), f"the default storage of {out}"
    path = studies.sqlite_path(url)
    if resume and path is not None and not path.is_file():
        raise NnrunError(f"cannot resume the search in {out}: its study storage {url} (from {origin}) does not exist",
                         hint=f"if the study lives elsewhere (a folder moved or copied without its "
                              f"{studies.DEFAULT_FILE}), point at it with --storage PATH/{studies.DEFAULT_FILE} "
                              "or --storage URL")
    return url, origin


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def prepare(out: Path, recipe: Recipe, meta: dict, *, write_meta: bool) -> None:
    """Create the search folder and its tb/, write `recipe.yaml` and (if `write_meta`) `search.json`."""
    hint = "choose a writable folder with --out"
    with writing(f"the search folder {out}", hint=hint):
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(out / "recipe.yaml", recipe_io.dump(recipe))
        if write_meta:
            _write_atomic(out / META, json.dumps(meta, indent=1) + "\n")
    with writing(f"the TensorBoard folder {out / 'tb'}", hint=hint + " (or remove the file in the way)"):
        (out / "tb").mkdir(exist_ok=True)
