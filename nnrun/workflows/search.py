"""`nnrun search` as a function: recipe with a `search` section -> a folder of trial runs.

The search folder (`runs/<name>/search-<timestamp>/` by default) holds `recipe.yaml` (the base
recipe with its search section), `search.json` (study name, storage and trial budget, for
`--resume` and for workers joining from other machines), `study.db` (the default SQLite storage),
`tb/` (TensorBoard hparams of every trial) and one run folder per trial (`stage-N/` subfolders for
staged searches), each a complete `nnrun train` run folder. Optuna samples, prunes and keeps the
books.

Signals: SIGINT and SIGTERM stop the search. Trials stop at their next step, are failed as
interrupted (folder `trial-NNNN-interrupted/`) and retried by `--resume`; spawned workers ignore
SIGINT (a terminal sends Ctrl-C to the whole process group) and are stopped by this process, and
stop by themselves if it dies. The search then raises :class:`SearchInterrupted`.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from multiprocessing import resource_tracker
from multiprocessing.connection import wait
from pathlib import Path

from nnrun import progress
from nnrun import recipe as recipe_io
from nnrun.errors import CheckpointError, DataError, NnrunError, OutputError, RecipeError
from nnrun.recipe.schema import Recipe
from nnrun.recipe.search import SearchSpec
from nnrun.signals import Stopped
from nnrun.tools.search import recovery
from nnrun.tools.search import study as studies
from nnrun.tools.search.folder import prepare, read_meta, resolve_storage, stored_recipe, with_budget
from nnrun.tools.search.results import Event, Monitor, SearchResult, TrialRow, collect, format_value
from nnrun.tools.search.stopping import StopFlag, TrialInterrupted, stop_on_signals, stop_when_parent_dies
from nnrun.tools.search.worker import WorkerPlan, run_worker
from nnrun.workflows._folders import fresh_dir

__all__ = ["SearchInterrupted", "SearchResult", "TrialRow", "collect", "default_out", "format_value",
           "latest_search", "read_meta", "run", "stored_recipe", "with_budget"]

POLL_S = 1.0  # how often progress lines are read from the storage while workers run
STOP_GRACE_S = 20.0  # how long stopped workers get to end their step and record their trial


class SearchInterrupted(Stopped):
    """A signal stopped the search (exit code 128 + signal); `interrupted` lists the trials
    failed as interrupted that `--resume` retries."""

    def __init__(self, signum: int, out: Path, interrupted: list[int]):
        super().__init__(signum)
        self.out, self.interrupted = out, interrupted


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


def _check_same_space(storage, plan: WorkerPlan) -> bool:
    """Record the search space in the first stage's study; refuse to join a study that searched
    another space. Returns whether this call created the study (exactly one of several processes
    starting it together does)."""
    study, created = studies.create_or_load(storage, plan.study_name(0), mode=plan.spec.mode)
    space = [p.to_dict() for p in plan.spec.params]
    stored = study.user_attrs.get("search")
    if stored is None:  # the metric first: a process that sees the space sees the metric too
        study.set_user_attr("metric", plan.spec.metric)
        study.set_user_attr("search", json.loads(json.dumps(space)))
    elif stored != json.loads(json.dumps(space)) or study.user_attrs.get("metric") != plan.spec.metric:
        raise RecipeError([f"study `{plan.study}` in {plan.storage} searched another space or metric: "
                           "use the same recipe and search section, or another --study"])
    return created


# ---------------------------------------------------------------------------------------------
# the use case


def run(recipe: Recipe, spec: SearchSpec, *, out: Path | None = None, storage: str | None = None,
        study: str | None = None, workers: int = 1, resume: bool = False, device: str | None = None,
        on_event: Event | None = None, trials: int | None = None) -> SearchResult:
    """Run (or continue, or join) a search and collect its results.

    Args:
        recipe: the validated base recipe (its `search` section is stored with the results).
        spec: the parsed search section (:func:`nnrun.recipe.search.parse`).
        out: the search folder; default a new `runs/<name>/search-<timestamp>/`, or with `resume`
            the newest one.
        storage: Optuna storage (default `study.db` in `out`; `journal:PATH`; a database URL).
        study: the study name (default: from `search.json` when resuming, else `<name>-<folder>`).
        workers: local worker processes (1: run in this process).
        resume: continue the search in `out` (its study, storage, stages and trial budget).
        device: overrides `train.device` in every trial.
        on_event: called with one line per finished trial, stage narrowing and warning.
        trials: `--trials`: the budget of a search without stages; on `resume` None keeps the
            stored budget, a larger number adds trials and a smaller one is refused.

    Raises:
        SearchInterrupted: SIGINT/SIGTERM (or KeyboardInterrupt) stopped the search.
    """
    if workers < 1:
        raise NnrunError(f"--workers {workers}: needs at least 1")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # nnrun reports trials itself
    emit = on_event or (lambda line: None)
    plan, origin = _plan(recipe, spec, out=out, storage=storage, study=study, workers=workers, resume=resume,
                         device=device, trials=trials)
    storage_obj = studies.open_storage(plan.storage, origin=origin)
    created = _check_same_space(storage_obj, plan)
    monitor = Monitor(storage_obj, plan, emit)
    start = time.perf_counter()
    # Seeds: recipe seed + worker index for a new study (reproducible); a process joining or
    # resuming a study draws a fresh offset, or it would repeat the proposals already made.
    offset = 0 if created else random.SystemRandom().randrange(1, 2**31)
    ids: list[str] = []  # `host:pid` of every process that runs trials for this call
    try:
        with _progress(plan, monitor):
            if workers == 1:
                failures = _run_here(plan, offset, monitor, ids)
            else:
                failures = _run_processes(plan, workers, monitor, offset, ids=ids)
            monitor.poll()
    except (KeyboardInterrupt, Stopped) as exc:
        raise _interrupted(exc, storage_obj, plan, ids) from None
    except NnrunError:
        _interrupt_running(storage_obj, plan, ids)
        raise
    return collect(storage_obj, plan, seconds=time.perf_counter() - start, failures=failures)


@contextlib.contextmanager
def _progress(plan: WorkerPlan, monitor: Monitor) -> Iterator[None]:
    """The search as one :mod:`nnrun.progress` task: trials done (by every process of the study) out
    of the budget of every stage; a resumed or joined search starts at the trials already done."""
    total = sum(stage.trials for stage in plan.spec.stages)
    monitor.done = min(monitor.count_done(), total)
    stages = f" in {len(plan.spec.stages)} stages" if len(plan.spec.stages) > 1 else ""
    with progress.task(f"search: {total} trials{stages}", total, done=monitor.done) as bar:
        monitor.bar = bar
        try:
            yield
        finally:
            monitor.bar = None


def _plan(recipe: Recipe, spec: SearchSpec, *, out: Path | None, storage: str | None, study: str | None,
          workers: int, resume: bool, device: str | None, trials: int | None) -> tuple[WorkerPlan, str]:
    """The search folder, prepared, and the plan every worker follows (with where its storage URL
    came from, for messages)."""
    if resume and out is None:
        out = latest_search(recipe.name, recipe.log.run_dir)
    out = Path(out) if out is not None else default_out(recipe)
    meta = read_meta(out) if resume else {}
    if not resume and study is None and (out / "search.json").is_file():
        raise NnrunError(f"{out} already holds a search", hint="add --resume to continue it, or choose another --out")
    spec = with_budget(spec, meta, trials, out)
    study = study or meta.get("study") or f"{recipe.name}-{out.name}"
    url, origin = resolve_storage(storage, meta, out, resume=resume)
    meta = {"created": datetime.now().isoformat(timespec="seconds"), **meta, "study": study,
            "storage": studies.stored_form(url, out), "trials": [s.trials for s in spec.stages],
            "recipe": recipe.name, "metric": spec.metric}
    prepare(out, recipe, meta, write_meta=resume or not (out / "search.json").is_file())
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    return WorkerPlan(recipe=recipe_io.to_dict(recipe), spec=spec, out=str(out), storage=url, study=study,
                      seed=recipe.seed, threads=threads, device=device), origin


def _run_here(plan: WorkerPlan, offset: int, monitor: Monitor, ids: list[str]) -> list[str]:
    """One worker in this process: the first signal stops the running trial at its next step,
    a second one aborts at once."""
    ids.append(recovery.worker_id())
    stop = StopFlag()
    with stop_on_signals(stop, escalate=True):
        run_worker(plan, offset, after_trial=monitor.poll, stop=stop)
    return []


# ---------------------------------------------------------------------------------------------
# stopping


class _Noted(list):
    """The signals noted while handlers that only note them are installed, and a file descriptor
    that becomes readable with each one (so a wait on it wakes up at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.fd, self._write = os.pipe()
        os.set_blocking(self._write, False)

    def __call__(self, signum, frame) -> None:
        self.append(signum)
        with contextlib.suppress(OSError):
            os.write(self._write, b"\0")

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._write)


@contextlib.contextmanager
def _signals_noted() -> Iterator[_Noted]:
    """SIGINT/SIGTERM are noted instead of raising, so the code inside (waiting on workers, reading
    or writing the storage) is never cut short halfway; it checks the note where it is safe."""
    noted = _Noted()
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, noted) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield noted
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        noted.close()


def _interrupt_running(storage, plan: WorkerPlan, ids: list[str]) -> None:
    """Fail the trials the stopped workers in `ids` left RUNNING (one killed before it could
    record its own) as interrupted."""
    import optuna

    with _signals_noted():
        for k in range(len(plan.spec.stages)):
            if studies.study_exists(storage, plan.study_name(k)):
                study = optuna.load_study(study_name=plan.study_name(k), storage=storage)
                recovery.interrupt_trials(study, ids, plan.stage_dir(k))


def _interrupted(exc: BaseException, storage, plan: WorkerPlan, ids: list[str]) -> SearchInterrupted:
    """After a signal: every trial still RUNNING in a stopped worker is failed as interrupted."""
    import optuna
    from optuna.trial import TrialState

    _interrupt_running(storage, plan, ids)
    numbers = []
    for k in range(len(plan.spec.stages)):
        if studies.study_exists(storage, plan.study_name(k)):
            trials = optuna.load_study(study_name=plan.study_name(k), storage=storage).get_trials(deepcopy=False)
            retried = recovery.retried_numbers(trials)
            numbers += [t.number for t in trials if t.state == TrialState.FAIL and t.number not in retried
                        and t.user_attrs.get("lost") == recovery.INTERRUPTED]
    signum = getattr(exc, "signum", None) or signal.SIGINT
    return SearchInterrupted(signum, Path(plan.out), numbers)


# ---------------------------------------------------------------------------------------------
# worker processes


def _worker_main(plan: WorkerPlan, seed_offset: int, conn=None) -> None:
    """A spawned worker: ignores SIGINT, stops at a step on SIGTERM (exit 128 + signal), and
    sends a user mistake (an unwritable folder, say) to its parent instead of a traceback.

    It ends with `os._exit` once its work is stored: every trial's files are closed and every
    storage write committed by then, and tearing down an interpreter holding torch takes seconds
    that a stopping search should not wait for."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_when_parent_dies()
    stop = StopFlag()
    code = 0
    try:
        with stop_on_signals(stop, escalate=False, ignore_sigint=True):
            run_worker(plan, seed_offset, stop=stop)
    except TrialInterrupted as exc:
        code = 128 + exc.signum
    except NnrunError as exc:
        if conn is not None:
            plain = type(exc) in (NnrunError, DataError, CheckpointError, OutputError)
            conn.send((type(exc).__name__, exc.message if plain else str(exc), exc.hint if plain else None,
                       exc.where if plain else None))
        code = exc.exit_code
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _received(conn) -> NnrunError | None:
    """The error a worker sent before it exited, if any."""
    try:
        if conn is None or not conn.poll():
            return None
        kind, message, hint, where = conn.recv()
    except (EOFError, OSError, ValueError):
        return None
    cls = {c.__name__: c for c in (NnrunError, DataError, CheckpointError, OutputError)}.get(kind, NnrunError)
    return cls(message, hint=hint, where=where)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Start workers with SIGINT blocked: they inherit the mask, so Ctrl-C (sent to the whole
    process group) never reaches them, not even while they import; this process receives its
    pending SIGINT once the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    resource_tracker.ensure_running()  # starting it later would unblock SIGINT for the next spawns
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _run_processes(plan: WorkerPlan, workers: int, monitor: Monitor, offset: int, *,
                   ids: list[str] | None = None) -> list[str]:
    """Spawn `workers` processes (fresh interpreters: no forked torch or SQLite state), report
    their trials while they run, and stop them all when anything ends this early."""
    ctx = multiprocessing.get_context("spawn")
    pipes = [ctx.Pipe(duplex=False) for _ in range(workers)]
    procs = [ctx.Process(target=_worker_main, args=(plan, offset + i, pipes[i][1]), name=f"nnrun-search-{i}")
             for i in range(workers)]
    try:
        with _sigint_blocked():
            for p in procs:
                p.start()
                if ids is not None:
                    ids.append(recovery.worker_id(p.pid))
        for _, sending in pipes:
            sending.close()
        return _supervise(procs, [receiving for receiving, _ in pipes], monitor)
    finally:
        _stop_workers(procs)


def _supervise(procs: list, conns: list, monitor: Monitor) -> list[str]:
    """Wait for every worker on its sentinel (any order of exits, before or during a poll, is
    fine), reporting progress in between; a worker's user mistake is raised here. A signal is
    raised as :class:`Stopped` between polls, never inside a storage read."""
    pending = {p.sentinel: i for i, p in enumerate(procs)}
    failures = []
    with _signals_noted() as noted:
        while pending:
            if noted:
                raise Stopped(noted[0])
            monitor.poll()
            for ready in wait([*pending, noted.fd], timeout=POLL_S):
                if ready == noted.fd:
                    continue
                i = pending.pop(ready)
                procs[i].join()
                error = _received(conns[i])
                if error is not None:
                    raise error
                if procs[i].exitcode:
                    failures.append(f"worker {i} (pid {procs[i].pid}) exited with code {procs[i].exitcode}")
    return failures


def _stop_workers(procs: list) -> None:
    """SIGTERM the workers still running (each stops its trial at the next step and records it),
    wait up to STOP_GRACE_S (a further signal cuts the wait short), then kill what is left."""
    started = [p for p in procs if p.pid is not None]
    alive = [p for p in started if p.exitcode is None]
    if alive:
        with _signals_noted() as noted:
            for p in alive:
                p.terminate()
            deadline = time.monotonic() + STOP_GRACE_S
            while alive and not noted and time.monotonic() < deadline:
                wait([*(p.sentinel for p in alive), noted.fd], timeout=1.0)
                alive = [p for p in alive if p.exitcode is None]
        for p in alive:
            p.kill()
    for p in started:
        p.join()
