"""Optuna set-up shared by every worker: storage, study per stage, sampler, pruner, trial budget.

Optuna does the scheduling and the bookkeeping; this module only chooses its pieces:

- Storage: an SQLite file (``sqlite:///...``, embedded, one machine, a few processes; a lock
  timeout in ``connect_args``, and every transaction opened with ``BEGIN IMMEDIATE`` so that
  Optuna's read-then-write updates, such as taking a queued trial, are atomic between processes),
  a journal file (``journal:PATH`` or a ``.log`` path: ``JournalFileBackend``, append-only with a
  lock file, for a shared file system without a database server), or any SQLAlchemy URL
  (PostgreSQL/MySQL) for many machines. Database storages get Optuna heartbeats, so a trial whose
  worker vanished is failed and retried (:mod:`nnrun.tools.search.recovery`). Journal storage has
  no heartbeat in Optuna 5: every trial records its worker's host and pid, and a worker starting
  on that host fails and retries the trials of dead pids (``--resume``).
- The default storage is ``study.db`` *in the search folder*: ``search.json`` records it relative
  to the folder, so a copied folder resumes into its own copy of the study and a moved one still
  finds it. An explicit ``--storage`` is recorded as given.
- Budget: ``optimize(n_trials=...)`` counts per worker, so the global cap is checked inside the
  objective before any work (a trial beyond the budget stops its worker), backed by
  ``MaxTrialsCallback``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sqlalchemy_exc

from nnrun.errors import NnrunError, writing
from nnrun.tools.search.recovery import RetryStale, quiet, retried_numbers

HEARTBEAT_S = 20
GRACE_S = 60
SQLITE_TIMEOUT_S = 120
INIT_WAIT_S = 30  # how long opening a new database waits for another process creating its tables
DEFAULT_FILE = "study.db"  # the default storage, relative to the search folder


def storage_url(spec: str | None, out: Path) -> str:
    """Normalize `--storage`: default an SQLite file in the search folder; a bare path ending in
    `.db` is SQLite, one ending in `.log`/`.jsonl` a journal file."""
    if not spec:
        return f"sqlite:///{(out / DEFAULT_FILE).resolve()}"
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


def sqlite_path(url: str) -> Path | None:
    """The file of an `sqlite:///` URL (None for other storages and in-memory SQLite)."""
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) and url != prefix + ":memory:" else None


def stored_form(url: str, out: Path) -> str:
    """What `search.json` records for a storage URL: `study.db` (relative to the search folder)
    for the folder's own SQLite file, else the URL as given."""
    path = sqlite_path(url)
    return DEFAULT_FILE if path is not None and path == (out / DEFAULT_FILE).resolve() else url


def stored_url(value: str, out: Path) -> str:
    """The storage URL that `search.json` records, resolved for the search folder `out` as it is
    now: a relative file is in `out`. A URL written by an older nnrun that names another
    folder's `study.db` while `out` holds its own (a copied or moved folder) means the own one."""
    if "://" not in value and not value.startswith("journal:"):
        return f"sqlite:///{(out / value).resolve()}"
    path, own = sqlite_path(value), (out / DEFAULT_FILE).resolve()
    if path is not None and path.name == DEFAULT_FILE and path != own and own.is_file():
        return f"sqlite:///{own}"
    return value


def _immediate_transactions(engine) -> None:
    """SQLite: take the write lock when a transaction begins (`BEGIN IMMEDIATE`), so a read and
    the write that depends on it (Optuna's "is this trial still WAITING, then it is mine") run
    as one step; the default deferred transaction lets two processes read the same state first."""
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None  # no implicit BEGIN from the driver

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed


def _rdb_storage(url: str, engine: dict):
    """Optuna's RDBStorage; while another process is creating a new database's tables (one at a
    time), creating them here fails, so try again until that is done (INIT_WAIT_S at most)."""
    import optuna

    deadline = time.monotonic() + INIT_WAIT_S
    while True:
        try:
            with quiet():
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S, heartbeat_stale_trial_callback=RetryStale())
        except (sqlalchemy_exc.IntegrityError, sqlalchemy_exc.OperationalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # polling for the other process to finish, with a deadline


def open_storage(url: str, *, origin: str = "--storage"):
    """An Optuna storage for a normalized URL (see :func:`storage_url`).

    Args:
        url: the storage URL.
        origin: where the URL came from (named in the message when it cannot be opened).
    """

    hint = (f"check the URL, the server and the folder's permissions; if the search folder was moved or "
            f"copied, or the study lives elsewhere, point at it with --storage (e.g. --storage "
            f"FOLDER/{DEFAULT_FILE} or journal:/shared/study.log)")
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:"):])
        with writing(f"the journal storage {path} (from {origin})", hint=hint):
            path.parent.mkdir(parents=True, exist_ok=True)
            with quiet():
                return JournalStorage(JournalFileBackend(str(path)))
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        storage = _rdb_storage(url, engine)
    except (ImportError, ModuleNotFoundError) as exc:
        raise NnrunError(f"storage {url}: {exc}", hint="install the database driver (e.g. psycopg2-binary)") from exc
    except Exception as exc:  # SQLAlchemy errors: bad URL, server down, no permission
        raise NnrunError(f"cannot open the study storage {url} (from {origin}): {str(exc).splitlines()[0]}",
                         hint=hint) from exc
    if url.startswith("sqlite"):
        _immediate_transactions(storage.engine)
    return storage


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


def create_or_load(storage, name: str, *, mode: str):
    """(the study `name`, whether this call created it). Creation is atomic in every storage, so
    of several processes starting the same study at once exactly one gets True."""
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    try:
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=False,
                                    direction="maximize" if mode == "max" else "minimize")
        return study, True
    except DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage), False


def study_exists(storage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


# ---------------------------------------------------------------------------------------------
# the budget


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
