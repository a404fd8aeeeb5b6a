"""Optuna set-up shared by every worker: storage, study per stage, sampler, pruner, trial budget,
and recovery of trials whose worker died.

Optuna does the scheduling and the bookkeeping; this module only chooses its pieces:

- Storage: an SQLite file (``sqlite:///...``, embedded, one machine, a few processes; a lock
  timeout in ``connect_args``), a journal file (``journal:PATH`` or a ``.log`` path:
  ``JournalFileBackend``, append-only with a lock file, for a shared file system without a
  database server), or any SQLAlchemy URL (PostgreSQL/MySQL) for many machines. Database storages
  get Optuna heartbeats, so a trial whose worker vanished is failed and retried by
  ``RetryHeartbeatStaleTrialCallback``. Journal storage has no heartbeat in Optuna 5: every trial
  records its worker's host and pid, and a worker starting on that host fails and retries the
  trials of dead pids (``--resume``).
- Budget: ``optimize(n_trials=...)`` counts per worker, so the global cap is checked inside the
  objective before any work (a trial beyond the budget stops its worker), backed by
  ``MaxTrialsCallback``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nnrun.errors import NnrunError

HEARTBEAT_S = 20
GRACE_S = 60
MAX_RETRY = 2
SQLITE_TIMEOUT_S = 120


def storage_url(spec: str | None, out: Path) -> str:
    """Normalize `--storage`: default an SQLite file in the search folder; a bare path ending in
    `.db` is SQLite, one ending in `.log`/`.jsonl` a journal file."""
    if not spec:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    if spec.startswith("journal:"):
        return "journal:" + str(Path(spec[len("journal:"):]).expanduser().resolve())
    if "://" in spec:
        return spec
    path = Path(spec).expanduser().resolve()
    if path.suffix in (".log", ".jsonl"):
        return f"journal:{path}"
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return f"sqlite:///{path}"
    raise NnrunError(f"--storage {spec}: not a database URL, a journal file or an SQLite file",
                     hint="use sqlite:///path/study.db, journal:/shared/study.log or "
                          "postgresql+psycopg2://user:password@host/db")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def open_storage(url: str):
    """An Optuna storage for a normalized URL (see :func:`storage_url`)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with _quiet():
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    except (ImportError, ModuleNotFoundError) as exc:
        raise NnrunError(f"storage {url}: {exc}", hint="install the database driver (e.g. psycopg2-binary)") from exc
    except Exception as exc:  # SQLAlchemy errors: bad URL, server down, no permission
        raise NnrunError(f"cannot open the study storage {url}: {str(exc).splitlines()[0]}",
                         hint="check the URL, the server and the folder's permissions") from exc


def make_sampler(name: str, seed: int, trials: int):
    """Random search (default) or TPE; each worker passes its own seed (identical seeds would make
    workers propose identical configurations)."""
    import optuna

    if name == "tpe":
        # TPE's startup trials are random; on a short stage keep a third of it for the model.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, trials // 3)))
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str, *, startup: int = 5, warmup: int = 0):
    """median: stop a trial below the median of finished trials at the same epoch; halving:
    asynchronous successive halving (keep the top third at epochs 1, 3, 9, ...); none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup), reduction_factor=3)
    return optuna.pruners.NopPruner()


def stage_study_name(study: str, stage: int, n_stages: int) -> str:
    """One Optuna study per stage (each stage has its own distributions)."""
    return study if n_stages == 1 else f"{study}/stage-{stage + 1}"


def open_study(storage, name: str, *, mode: str, sampler=None, pruner=None):
    import optuna

    return optuna.create_study(storage=storage, study_name=name, load_if_exists=True, sampler=sampler,
                               pruner=pruner, direction="maximize" if mode == "max" else "minimize")


def study_exists(storage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


# ---------------------------------------------------------------------------------------------
# the budget


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def retried_numbers(trials) -> set[int]:
    """Numbers of trials that a later trial retries (Optuna's `retry_history` system attribute)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def counts_toward_budget(trial, retried: set[int]) -> bool:
    """Finished, running and queued trials count; failed ones count unless they were beyond the
    budget, or were lost with their worker (then their retry counts instead)."""
    from optuna.trial import TrialState

    if trial.state != TrialState.FAIL:
        return True
    attrs = trial.user_attrs
    return not (attrs.get("surplus") or attrs.get("lost") or trial.number in retried)


def budget_used(study, *, below: int | None = None) -> int:
    """How many trials (numbered below `below`, if given) take a place in the budget."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return sum(1 for t in trials if (below is None or t.number < below) and counts_toward_budget(t, retried))


# ---------------------------------------------------------------------------------------------
# lost workers


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def lost_on_this_host(trial) -> bool:
    """A RUNNING trial whose worker ran on this machine and is gone."""
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


def recover_lost_trials(study) -> list[int]:
    """Fail the RUNNING trials of dead workers on this host (and, with heartbeats, stale ones
    anywhere), and queue a retry of every trial lost with its worker. Returns the failed numbers."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    with _quiet():
        optuna.storages.fail_stale_trials(study)  # heartbeat storages only; retries via its callback
    storage, failed = study._storage, []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not lost_on_this_host(t):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "lost", f"worker {t.user_attrs['worker']} died")
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            failed.append(t.number)
            _rename_lost(storage, t)
        except UpdateFinishedTrialError:
            continue
    trials = study.get_trials(deepcopy=True)
    retried = retried_numbers(trials)
    with _quiet():
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        for t in trials:
            if t.state == TrialState.FAIL and t.user_attrs.get("lost") and t.number not in retried:
                retry(study, t)
    return failed


def _rename_lost(storage, trial) -> None:
    """`trial-0007-running/` of a dead worker -> `trial-0007-lost/` (kept: it may hold checkpoints)."""
    run_dir = Path(str(trial.user_attrs.get("run_dir", "")))
    if trial.user_attrs.get("run_dir") and run_dir.is_dir():
        target = run_dir.with_name(f"trial-{trial.number:04d}-lost")
        with contextlib.suppress(OSError):
            run_dir.rename(target)
            storage.set_trial_user_attr(trial._trial_id, "run_dir", str(target))


def stage_done(study, budget: int) -> bool:
    """All `budget` trials of a stage finished (none running or queued)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    busy = any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    return not busy and budget_used(study) >= budget


def finished_values(study) -> list[tuple[float, dict[str, Any]]]:
    """(value, params) of the COMPLETE trials of a study."""
    from optuna.trial import TrialState

    return [(t.value, dict(t.params)) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
