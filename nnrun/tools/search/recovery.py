"""Trials that lost their worker: finding them, failing them once, retrying each exactly once.

A trial is *lost* when the process running it died (killed, machine lost) or was stopped by a
signal (*interrupted*). Its folder is renamed `trial-NNNN-lost/` or `trial-NNNN-interrupted/`,
the trial is failed with a `lost` note, and one retry with the same parameters is queued.

Several processes may find the same lost trial at once (`--workers 2` starting on `--resume`,
two searches sharing a study). Reading "not retried yet" and then queueing a retry is a race, so
the retry is *claimed* first, atomically, through the storage itself: the claim is an empty
study named `<study>/retry-of-<number>`, and creating a study whose name exists fails in every
Optuna storage (a unique index in a database, the replay order of a journal file). Only the
process that created the claim queues the retry. Claim studies are never deleted: deleting one
would let a process holding an older snapshot claim the same trial again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

MAX_RETRY = 2  # retries of one configuration, counted along its chain of retries
LOST, INTERRUPTED = "lost", "interrupted"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning (heartbeats, retries, journal storage)."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def worker_id(pid: int | None = None) -> str:
    """`host:pid` of a process running trials (recorded in every trial it runs)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def retried_numbers(trials) -> set[int]:
    """Numbers of trials that a later trial retries (Optuna's `retry_history` system attribute)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


# ---------------------------------------------------------------------------------------------
# folders


def trial_folder(stage_dir: Path, number: int, stored: str | None) -> Path | None:
    """Where trial `number`'s folder is on disk now.

    The stored `run_dir` may be stale: another process renamed the folder (`-running` ->
    `-lost`), or the whole search folder was copied or moved. So look in this search's own stage
    folder first (the stored name, then any `trial-NNNN-*`), then at the stored path (a trial
    run by a process with another `--out`).
    """
    prefix = f"trial-{number:04d}"
    if stored and (stage_dir / Path(stored).name).is_dir():
        return stage_dir / Path(stored).name
    with contextlib.suppress(OSError):
        found = sorted(p for p in stage_dir.glob(prefix + "*")
                       if (p.name == prefix or p.name.startswith(prefix + "-")) and p.is_dir())
        if found:
            return found[0]
    if stored and Path(stored).is_dir():
        return Path(stored)
    return None


def rename_free(src: Path, name: str) -> Path:
    """`src` renamed to `name` in its folder (`name-1`, ... when taken); `src` if it cannot be."""
    dst, n = src.with_name(name), 1
    while dst.exists():
        dst, n = src.with_name(f"{name}-{n}"), n + 1
    try:
        src.rename(dst)
    except OSError:
        return src
    return dst


def record_lost(storage, trial, *, note: str, kind: str, stage_dir: Path) -> None:
    """Rename a RUNNING trial's folder `trial-NNNN-<kind>/` and record it and `note` in the
    trial (an Optuna Trial or FrozenTrial); the caller fails the trial."""
    folder = trial_folder(stage_dir, trial.number, trial.user_attrs.get("run_dir"))
    # `-running`, or already named for a result when the process died between renaming the folder
    # and telling Optuna: either way the trial did not finish, and its folder says so now.
    if folder is not None and not folder.name.endswith(("-lost", "-interrupted")):
        folder = rename_free(folder, f"trial-{trial.number:04d}-{kind}")
    if folder is not None:
        storage.set_trial_user_attr(trial._trial_id, "run_dir", str(folder))
    storage.set_trial_user_attr(trial._trial_id, "lost", note)


def fail_lost(study, trial, *, note: str, kind: str, stage_dir: Path) -> bool:
    """:func:`record_lost`, then fail the trial (in that order: a finished trial takes no more
    attributes). False if another process finished it first."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        record_lost(study._storage, trial, note=note, kind=kind, stage_dir=stage_dir)
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# retries


def claim(storage, name: str) -> bool:
    """Create the study `name` as a claim: True for exactly one caller, in any storage."""
    from optuna.exceptions import DuplicatedStudyError
    from optuna.study import StudyDirection

    try:
        storage.create_new_study([StudyDirection.MINIMIZE], name)
    except DuplicatedStudyError:
        return False
    return True


def queue_retry(study, trial) -> bool:
    """Queue one retry of a lost trial (same parameters, clean notes) if this process claims it.
    False when another process claimed it, or the chain of retries is at MAX_RETRY."""
    import optuna

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY or not claim(study._storage, f"{study.study_name}/retry-of-{trial.number}"):
        return False
    system_attrs = {**trial.system_attrs, "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                    "retry_history": history}
    with quiet():
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={"retry_of": trial.number}, system_attrs=system_attrs))
    return True


class RetryStale:
    """Optuna's heartbeat callback (a database storage failed a trial whose worker stopped
    beating): queue its retry through the same claim as every other lost trial."""

    def __call__(self, study, trial) -> None:
        queue_retry(study, trial)


def queue_retries(study) -> list[int]:
    """Queue a retry of every lost trial not retried yet; returns the numbers this process queued."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    lost = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("lost")
            and not t.user_attrs.get("surplus") and t.number not in retried]
    return [t.number for t in lost if queue_retry(study, t)]


# ---------------------------------------------------------------------------------------------
# finding lost trials


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


def recover_lost_trials(study, stage_dir: Path) -> list[int]:
    """Fail the RUNNING trials of dead workers on this host (and, with heartbeats, stale ones
    anywhere), then queue one retry of every lost trial. Returns the numbers failed here."""
    import optuna
    from optuna.trial import TrialState

    with quiet():
        optuna.storages.fail_stale_trials(study)  # heartbeat storages only; retried by RetryStale
    failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
              if lost_on_this_host(t)
              and fail_lost(study, t, note=f"worker {t.user_attrs['worker']} died", kind=LOST, stage_dir=stage_dir)]
    queue_retries(study)
    return failed


def interrupt_trials(study, workers: Iterable[str], stage_dir: Path) -> list[int]:
    """Fail the RUNNING trials of the given (stopped) workers as interrupted; their retries are
    queued on `--resume`. Returns their numbers."""
    from optuna.trial import TrialState

    ids = set(workers)
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") in ids
            and fail_lost(study, t, note=INTERRUPTED, kind=INTERRUPTED, stage_dir=stage_dir)]
