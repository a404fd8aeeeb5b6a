"""`nnrun search` as a function: recipe with a `search` section -> a folder of trial runs.

The search folder (`runs/<name>/search-<timestamp>/` by default) holds `recipe.yaml` (the base
recipe with its search section), `search.json` (study name and storage, for `--resume` and for
workers joining from other machines), `study.db` (the default SQLite storage), `tb/` (TensorBoard
hparams of every trial) and one run folder per trial (`stage-N/` subfolders for staged searches),
each a complete `nnrun train` run folder. Optuna samples, prunes and keeps the books.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nnrun import recipe as recipe_io
from nnrun.errors import NnrunError, RecipeError, writing
from nnrun.recipe.schema import Recipe
from nnrun.recipe.search import SearchSpec
from nnrun.tools.search import study as studies
from nnrun.tools.search.edges import edge_warnings
from nnrun.tools.search.sampling import decode_choice
from nnrun.tools.search.worker import WorkerPlan, run_worker
from nnrun.workflows._folders import fresh_dir

Event = Callable[[str], None]


@dataclass
class TrialRow:
    """One trial as the results table shows it."""

    stage: int
    number: int
    state: str  # complete, pruned, failed, running, waiting
    value: float | None
    params: dict[str, Any]
    run_dir: str | None
    epochs: float | None = None
    note: str = ""


@dataclass
class SearchResult:
    """What a search produced (all stages, all workers)."""

    out: Path
    study: str
    storage: str
    metric: str
    mode: str
    trials: list[TrialRow]
    best: TrialRow | None
    narrowed: list[list[str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    worker_failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def ranked(self) -> list[TrialRow]:
        """Trials sorted by stage (last first), then by the metric (best first); unfinished last."""
        sign = -1.0 if self.mode == "max" else 1.0
        return sorted(self.trials, key=lambda r: (-r.stage, r.value is None or not math.isfinite(r.value),
                                                  sign * (r.value if r.value is not None else 0.0)))


# ---------------------------------------------------------------------------------------------
# the search folder


def default_out(recipe: Recipe) -> Path:
    """`<log.run_dir>/<name>/search-<timestamp>/`, never reusing an existing folder."""
    return fresh_dir(recipe.log.run_dir, recipe.name, "search")


def latest_search(recipe_name: str, run_dir: str = "runs") -> Path:
    """The newest `runs/<name>/search-*` folder (what `--resume` without `--out` continues)."""
    found = sorted(p for p in (Path(run_dir) / recipe_name).glob("search-*") if (p / "search.json").is_file())
    if not found:
        raise NnrunError(f"no search folder under {Path(run_dir) / recipe_name} to resume",
                         hint="give the search folder with --out DIR")
    return found[-1]


def read_meta(out: Path) -> dict:
    try:
        return json.loads((out / "search.json").read_text())
    except (OSError, ValueError) as exc:
        raise NnrunError(f"{out} holds no readable search.json, so there is no search to resume",
                         hint="give the folder of an earlier `nnrun search` with --out") from exc


def stored_recipe(out: Path, overrides=()) -> Recipe:
    """The base recipe a search folder was started with (for `--resume` without RECIPE)."""
    path = out / "recipe.yaml"
    if not path.is_file():
        raise NnrunError(f"{out} has no recipe.yaml", hint="give RECIPE explicitly")
    return recipe_io.load(path, overrides)


def _prepare_out(out: Path, recipe: Recipe, meta: dict) -> None:
    with writing(f"the search folder {out}", hint="choose a writable folder with --out"):
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(recipe_io.dump(recipe))
        if not (out / "search.json").is_file():
            (out / "search.json").write_text(json.dumps(meta, indent=1) + "\n")


def _check_same_space(storage, plan: WorkerPlan) -> bool:
    """Record the search space in the first stage's study; refuse to join a study that searched
    another space. Returns whether the study already existed."""
    name = plan.study_name(0)
    existed = studies.study_exists(storage, name)
    study = studies.open_study(storage, name, mode=plan.spec.mode)
    space = [p.to_dict() for p in plan.spec.params]
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", json.loads(json.dumps(space)))
        study.set_user_attr("metric", plan.spec.metric)
    elif stored != json.loads(json.dumps(space)) or study.user_attrs.get("metric") != plan.spec.metric:
        raise RecipeError([f"study `{plan.study}` in {plan.storage} searched another space or metric: "
                           "use the same recipe and search section, or another --study"])
    return existed


# ---------------------------------------------------------------------------------------------
# the use case


def run(recipe: Recipe, spec: SearchSpec, *, out: Path | None = None, storage: str | None = None,
        study: str | None = None, workers: int = 1, resume: bool = False, device: str | None = None,
        on_event: Event | None = None) -> SearchResult:
    """Run (or continue, or join) a search and collect its results.

    Args:
        recipe: the validated base recipe (its `search` section is stored with the results).
        spec: the parsed search section (:func:`nnrun.recipe.search.parse`).
        out: the search folder; default a new `runs/<name>/search-<timestamp>/`, or with `resume`
            the newest one.
        storage: Optuna storage (default an SQLite file in `out`; `journal:PATH`; a database URL).
        study: the study name (default: from `search.json` when resuming, else `<name>-<folder>`).
        workers: local worker processes (1: run in this process).
        resume: continue the search in `out` (its study, storage and stages).
        device: overrides `train.device` in every trial.
        on_event: called with one line per finished trial, stage narrowing and warning.
    """
    if workers < 1:
        raise NnrunError(f"--workers {workers}: needs at least 1")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # nnrun reports trials itself
    emit = on_event or (lambda line: None)
    if resume and out is None:
        out = latest_search(recipe.name, recipe.log.run_dir)
    out = Path(out) if out is not None else default_out(recipe)
    meta = read_meta(out) if resume else {}
    if not resume and study is None and (out / "search.json").is_file():
        raise NnrunError(f"{out} already holds a search", hint="add --resume to continue it, or choose another --out")
    study = study or meta.get("study") or f"{recipe.name}-{out.name}"
    url = studies.storage_url(storage or meta.get("storage"), out)
    _prepare_out(out, recipe, {"study": study, "storage": url, "recipe": recipe.name, "metric": spec.metric,
                               "created": datetime.now().isoformat(timespec="seconds")})
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    plan = WorkerPlan(recipe=recipe_io.to_dict(recipe), spec=spec, out=str(out), storage=url, study=study,
                      seed=recipe.seed, threads=threads, device=device)
    storage_obj = studies.open_storage(url)
    joined = _check_same_space(storage_obj, plan)
    monitor = Monitor(storage_obj, plan, emit)
    start = time.perf_counter()
    # Seeds: recipe seed + worker index for a new study (reproducible); a process joining or
    # resuming a study draws a fresh offset, or it would repeat the proposals already made.
    offset = random.SystemRandom().randrange(1, 2**31) if joined else 0
    if workers == 1:
        run_worker(plan, offset, after_trial=monitor.poll)
        failures = []
    else:
        failures = _run_processes(plan, workers, monitor, offset)
    monitor.poll()
    return collect(storage_obj, plan, seconds=time.perf_counter() - start, failures=failures)


def _worker_main(plan: WorkerPlan, seed_offset: int) -> None:
    run_worker(plan, seed_offset)


def _run_processes(plan: WorkerPlan, workers: int, monitor: Monitor, offset: int) -> list[str]:
    """Spawn `workers` processes (fresh interpreters: no forked torch or SQLite state) and report
    their trials while they run."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(plan, offset + i), name=f"nnrun-search-{i}")
             for i in range(workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            monitor.poll()
            next(p for p in procs if p.is_alive()).join(timeout=1.0)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()  # its running trial is recovered as lost on --resume
            p.join()
    return [f"worker {i} (pid {p.pid}) exited with code {p.exitcode}" for i, p in enumerate(procs) if p.exitcode]


# ---------------------------------------------------------------------------------------------
# progress and results


class Monitor:
    """Turns what the storage holds into event lines, once each (works for any number of workers)."""

    def __init__(self, storage, plan: WorkerPlan, emit: Event):
        self.storage, self.plan, self.emit = storage, plan, emit
        self.seen: set[tuple[int, int]] = set()
        self.narrowed: set[int] = set()

    def poll(self) -> None:
        import optuna

        for k in range(len(self.plan.spec.stages)):
            name = self.plan.study_name(k)
            if not studies.study_exists(self.storage, name):
                return
            study = optuna.load_study(study_name=name, storage=self.storage)
            if k not in self.narrowed and "narrowed" in study.user_attrs:
                self.narrowed.add(k)
                self.emit(f"stage {k + 1}: narrowed " + "; ".join(study.user_attrs["narrowed"]))
            for t in study.get_trials(deepcopy=False):
                if t.state.is_finished() and (k, t.number) not in self.seen and not t.user_attrs.get("surplus"):
                    self.seen.add((k, t.number))
                    self.emit(self._line(k, t))

    def _line(self, k: int, t) -> str:
        label = f"stage {k + 1} " if len(self.plan.spec.stages) > 1 else ""
        row = _row(k, t, self.plan.spec)
        what = f"{self.plan.spec.metric}={row.value:.4f}" if row.value is not None else row.note
        params = ", ".join(f"{k}={format_value(v)}" for k, v in row.params.items())
        return f"{label}trial {t.number}: {row.state} {what} ({params})"


def format_value(v: Any) -> str:
    """A parameter value for tables and event lines."""
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _row(k: int, t, spec: SearchSpec) -> TrialRow:
    choices = {p.key: p.choices for p in spec.params if p.kind == "choice"}
    params = {key: decode_choice(v, choices[key]) if key in choices else v for key, v in t.params.items()}
    state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(t.state.name, t.state.name.lower())
    value = t.value if t.state.name == "COMPLETE" else t.user_attrs.get("value")
    note = t.user_attrs.get("error") or t.user_attrs.get("lost") or ""
    if t.state.name == "PRUNED":
        last = max(t.intermediate_values) if t.intermediate_values else None
        note = f"pruned after {last + 1} evaluation(s)" if last is not None else "pruned"
    return TrialRow(stage=k + 1, number=t.number, state=state, value=value, params=params,
                    run_dir=t.user_attrs.get("run_dir"), epochs=t.user_attrs.get("epochs"),
                    note=note.splitlines()[0] if note else "")


def collect(storage, plan: WorkerPlan, *, seconds: float = 0.0, failures: list[str] | None = None) -> SearchResult:
    """Read every stage's trials back from the storage into a :class:`SearchResult`."""
    import optuna

    spec, rows, narrowed = plan.spec, [], []
    for k in range(len(spec.stages)):
        name = plan.study_name(k)
        if not studies.study_exists(storage, name):
            break
        study = optuna.load_study(study_name=name, storage=storage)
        narrowed.append(list(study.user_attrs.get("narrowed", [])))
        rows += [_row(k, t, spec) for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    last = max((r.stage for r in rows if r.state == "complete"), default=None)
    done = [r for r in rows if r.state == "complete" and r.stage == last and r.value is not None]
    best = (max if spec.mode == "max" else min)(done, key=lambda r: r.value) if done else None
    warnings = edge_warnings(best.params, spec.params) if best else []
    return SearchResult(out=Path(plan.out), study=plan.study, storage=plan.storage, metric=spec.metric,
                        mode=spec.mode, trials=rows, best=best, narrowed=narrowed, warnings=warnings,
                        worker_failures=list(failures or []), seconds=seconds)
