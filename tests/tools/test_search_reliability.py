"""`nnrun search` under resume, copy, move, signals, write failures and several workers:
the budget survives `--resume` (D6), the default storage travels with the folder (D7), a lost
trial is retried exactly once however its finders interleave (D8), the worker wait loop survives
any order of exits (D9), SIGINT/SIGTERM stop a search cleanly (D10), the table shows folders as
they are on disk (D18), an unwritable folder ends in one message, and two searches share a study."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from nnrun.tools.search import recovery
from nnrun.tools.search import study as studies
from nnrun.workflows import search as search_wf

RECIPE = """\
seed: 5
data: {{source: digits, limit: 120, val_fraction: 0.25, batch_size: 32}}
model: {{hidden: [16]}}
optimizer: {{lr: 0.01}}
train: {{epochs: {epochs}, save_top_k: 1}}
log: {{progress: none, tensorboard: false}}
search:
  space: {{optimizer.lr: {{log_uniform: [1.0e-3, 3.0e-2]}}}}
"""
NNRUN = [sys.executable, "-c", "from nnrun.cli import main; main()"]
LR = optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials made by hand with study.ask


@pytest.fixture
def recipe(tmp_path: Path):
    def write(epochs: int = 1) -> Path:
        path = tmp_path / f"r{epochs}.yaml"
        path.write_text(RECIPE.format(epochs=epochs))
        return path

    return write


def trials_of(url: str, name: str | None = None) -> list:
    storage = studies.open_storage(url)
    name = name or storage.get_all_studies()[0].study_name
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def sqlite_trials(out: Path) -> list:
    return trials_of(f"sqlite:///{out / 'study.db'}")


def dead_pid() -> int:  # of a process that has exited and been reaped
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def lost_trial(out: Path, number: int) -> None:
    """Leave a RUNNING trial of a dead worker on this host, with its `-running` folder, in the study."""
    storage = studies.open_storage(f"sqlite:///{out / 'study.db'}")
    study = optuna.load_study(study_name=storage.get_all_studies()[0].study_name, storage=storage)
    trial = study.ask({"optimizer.lr": LR})
    assert trial.number == number
    (folder := out / f"trial-{number:04d}-running").mkdir()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead_pid()}")
    trial.set_user_attr("run_dir", str(folder))


# ---------------------------------------------------------------------------------------------
# D6: the budget; D7: the storage travels with the folder; D18: the table


def test_resume_keeps_the_trial_budget_and_only_grows_it(cli, recipe, tmp_path):
    out = tmp_path / "s"
    assert cli("search", recipe(), "--trials", 2, "--out", out).exit_code == 0
    again = cli("search", "--out", out, "--resume")
    assert again.exit_code == 0, again.stderr
    assert "2 trials x" in again.stderr and len(sqlite_trials(out)) == 2  # not search.trials' 20
    more = cli("search", "--out", out, "--resume", "--trials", 3)
    assert more.exit_code == 0 and sum(t.state.name == "COMPLETE" for t in sqlite_trials(out)) == 3
    assert search_wf.read_meta(out)["trials"] == [3]
    fewer = cli("search", "--out", out, "--resume", "--trials", 2)
    assert fewer.exit_code == 2 and "Traceback" not in fewer.stderr
    assert "--trials 2 is less than the budget of 3 trials" in fewer.stderr and "search.json" in fewer.stderr
    assert len(sqlite_trials(out)) == 3


def test_copied_and_moved_folders_resume_into_their_own_study(cli, recipe, tmp_path):
    first = tmp_path / "first"
    assert cli("search", recipe(), "--trials", 1, "--out", first).exit_code == 0
    assert search_wf.read_meta(first)["storage"] == "study.db"
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    res = cli("search", "--out", copy, "--resume", "--trials", 2)
    assert res.exit_code == 0, res.stderr
    assert len(sqlite_trials(first)) == 1  # the original study is untouched
    trials = sqlite_trials(copy)
    assert len(trials) == 2 and Path(trials[1].user_attrs["run_dir"]).parent == copy
    assert "trial-0001-val_acc=" in res.stderr and str(copy) in res.stdout
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)
    res = cli("search", "--out", moved, "--resume", "--trials", 2)
    assert res.exit_code == 0, res.stderr
    assert sum(t.state.name == "COMPLETE" for t in sqlite_trials(moved)) == 2


def test_storages_resume_as_recorded_or_say_what_they_tried(cli, recipe, tmp_path):
    journal = tmp_path / "shared" / "study.log"
    out = tmp_path / "j"
    assert cli("search", recipe(), "--trials", 1, "--out", out, "--storage", f"journal:{journal}").exit_code == 0
    assert search_wf.read_meta(out)["storage"] == f"journal:{journal}"  # an explicit storage is kept as given
    assert cli("search", "--out", out, "--resume", "--trials", 2).exit_code == 0
    assert len(trials_of(f"journal:{journal}")) == 2 and not (out / "study.db").exists()
    gone = tmp_path / "gone"
    assert cli("search", recipe(), "--trials", 1, "--out", gone).exit_code == 0
    (gone / "study.db").unlink()
    res = cli("search", "--out", gone, "--resume", "--trials", 1)
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert f"sqlite:///{gone / 'study.db'}" in res.stderr and "does not exist" in res.stderr
    assert "--storage" in res.stderr and not (gone / "study.db").exists()


def test_a_search_json_from_before_names_the_folders_own_study(tmp_path):
    first, copy = tmp_path / "first", tmp_path / "copy"
    copy.mkdir()
    (copy / "study.db").write_bytes(b"")
    old = f"sqlite:///{(first / 'study.db').resolve()}"  # what an older nnrun recorded
    assert studies.stored_url(old, copy) == f"sqlite:///{(copy / 'study.db').resolve()}"
    assert studies.stored_url(old, first) == old and studies.stored_url("journal:/j.log", copy) == "journal:/j.log"


def test_table_shows_folders_on_disk_and_retries_without_the_lost_note(cli, recipe, tmp_path):
    out = tmp_path / "s"
    assert cli("search", recipe(), "--trials", 1, "--out", out).exit_code == 0
    lost_trial(out, 1)
    res = cli("search", "--out", out, "--resume", "--trials", 2)
    assert res.exit_code == 0, res.stderr
    assert (out / "trial-0001-lost").is_dir() and not (out / "trial-0001-running").exists()
    rows = {line.split("│")[1].strip(): line for line in res.stderr.splitlines() if line.count("│") > 4}
    assert "trial-0001-lost" in rows["1"] and "died" in rows["1"]
    assert "trial-0002-val_acc=" in rows["2"] and "retry of trial 1" in rows["2"] and "died" not in rows["2"]
    trials = sqlite_trials(out)
    assert trials[2].params == trials[1].params and trials[2].system_attrs["failed_trial"] == 1


# ---------------------------------------------------------------------------------------------
# D8: one retry per lost trial, however the processes that find it interleave


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
@pytest.mark.parametrize("repeat", range(3))
def test_interleaved_recoveries_queue_one_retry_per_lost_trial(tmp_path, monkeypatch, kind, repeat):
    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    study = optuna.create_study(storage=studies.open_storage(url), study_name="s", direction="maximize")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={"optimizer.lr": 0.01},
                                              distributions={"optimizer.lr": LR},
                                              user_attrs={"lost": "interrupted"}))
    running = study.ask({"optimizer.lr": LR})
    running.set_user_attr("worker", f"{socket.gethostname()}:{dead_pid()}")
    # Force the race: every finder takes its snapshot ("which lost trials are not retried yet?")
    # before any of them queues a retry.
    finders = 3
    barrier, snapshot = threading.Barrier(finders, timeout=30), recovery.retried_numbers

    def snapshot_then_wait(trials):
        numbers = snapshot(trials)
        barrier.wait()
        return numbers

    monkeypatch.setattr(recovery, "retried_numbers", snapshot_then_wait)
    errors = []

    def find() -> None:
        try:
            own = optuna.load_study(study_name="s", storage=studies.open_storage(url))  # one storage per process
            recovery.recover_lost_trials(own, tmp_path)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=find) for _ in range(finders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    trials = optuna.load_study(study_name="s", storage=studies.open_storage(url)).get_trials()
    retries = sorted(t.system_attrs["failed_trial"] for t in trials if t.state.name == "WAITING")
    assert retries == [0, 1], [(t.number, t.state.name, t.system_attrs) for t in trials]
    assert trials[1].state.name == "FAIL" and "died" in trials[1].user_attrs["lost"]


# ---------------------------------------------------------------------------------------------
# D9: the wait loop and any order of worker exits


def _worker_that_waits(plan, offset, *rest):
    plan.go.wait(30)
    os._exit(offset)  # worker 0 exits with 0, worker 1 with 1


class _PollThatLetsAllExit:
    """A monitor whose poll releases the workers and returns only once every one has exited."""

    def __init__(self, go):
        self.go, self.polls = go, 0

    def poll(self) -> None:
        self.polls += 1
        self.go.set()
        deadline = time.monotonic() + 30
        while multiprocessing.active_children() and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for a state, with a deadline


@pytest.mark.parametrize("repeat", range(4))
def test_worker_wait_loop_survives_workers_exiting_during_a_poll(monkeypatch, repeat):
    fork = multiprocessing.get_context("fork")
    monkeypatch.setattr(search_wf, "multiprocessing", SimpleNamespace(get_context=lambda name: fork))
    monkeypatch.setattr(search_wf, "_worker_main", _worker_that_waits)
    go = fork.Event()
    if repeat % 2:
        go.set()  # the workers exit at once, maybe before the loop's first look
    failures = search_wf._run_processes(SimpleNamespace(go=go), 2, _PollThatLetsAllExit(go), 0)
    assert len(failures) == 1 and failures[0].startswith("worker 1 ") and failures[0].endswith("exited with code 1")
    assert not multiprocessing.active_children()


# ---------------------------------------------------------------------------------------------
# D10: SIGINT to the process group (Ctrl-C), SIGTERM to the parent alone (preemption)


def _training(db: Path) -> list[int]:
    """Numbers of RUNNING trials that have reported an evaluation (read-only: never creates the file)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [n for (n,) in con.execute(
                "SELECT number FROM trials t WHERE state = 'RUNNING' AND EXISTS "
                "(SELECT 1 FROM trial_intermediate_values v WHERE v.trial_id = t.trial_id)")]
    except sqlite3.Error:  # not created yet
        return []


def _children(pid: int) -> int:
    """How many processes `pid` has started (its workers, Python's resource tracker)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a process that just ended
            count += int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid
    return count


def _signal_when(proc, ready, *, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for a state, with a deadline
    assert proc.poll() is None and ready(), "the search never reached the state to signal in"


@pytest.mark.parametrize("sig, target, workers, when, resume_workers", [
    ("SIGINT", "group", 2, "training", 1),
    ("SIGTERM", "parent", 2, "training", 1),
    ("SIGINT", "group", 2, "starting", 0),   # while the spawned workers import: no traceback from them either
    ("SIGTERM", "parent", 1, "training", 0),  # in this process; resuming is checked by the cases above
])
def test_signal_stops_the_search_with_one_message_and_resume_finishes(cli, recipe, tmp_path, sig, target, workers,
                                                                      when, resume_workers):
    out = tmp_path / "s"
    cmd = [*NNRUN, "search", str(recipe(epochs=400)), "--trials", "3", "--workers", str(workers), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        if when == "training":
            _signal_when(proc, lambda: _training(out / "study.db"))
        else:
            _signal_when(proc, lambda: _children(proc.pid) >= 3)
        signum = getattr(signal, sig)
        os.killpg(proc.pid, signum) if target == "group" else os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    said = [line for line in err.splitlines() if "aborted" in line or "interrupted" in line]
    assert len(said) == 1 and f"interrupted by {sig}" in said[0] and f"--out {out} --resume" in said[0], err
    assert not list(out.glob("trial-*-running")) and not (out / "study.db-journal").exists()
    trials = sqlite_trials(out)
    assert not [t for t in trials if t.state.name == "RUNNING"]
    stopped = [t for t in trials if t.state.name == "FAIL"]
    assert all(t.user_attrs["lost"] == "interrupted" and Path(t.user_attrs["run_dir"]).name ==
               f"trial-{t.number:04d}-interrupted" and Path(t.user_attrs["run_dir"]).is_dir() for t in stopped
               if "run_dir" in t.user_attrs)
    if when == "training":
        assert stopped and f"{len(stopped)} running trial(s)" in said[0]
    if not resume_workers:
        return
    res = cli("search", "--out", out, "--resume", "--workers", resume_workers, "train.epochs=1")
    assert res.exit_code == 0, res.stderr
    trials = sqlite_trials(out)
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    for t in stopped:  # each stopped trial retried exactly once, with its parameters
        retries = [r for r in trials if r.system_attrs.get("failed_trial") == t.number]
        assert len(retries) == 1 and retries[0].params == t.params


# ---------------------------------------------------------------------------------------------
# write failures


@pytest.mark.parametrize("blocked, workers", [
    ("out", 1),               # a file where the search folder's parent should be
    ("recipe.yaml", 1),       # a folder where a file goes
    ("search.json", 1),
    ("tb", 1),                # a file where tb/ goes
    ("trial", 1),             # a file where the first trial's folder goes
    ("trial", 2),             # ... found by a spawned worker
])
def test_an_unwritable_search_folder_ends_in_one_message(cli, recipe, tmp_path, blocked, workers):
    out = tmp_path / "s"
    if blocked == "out":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "s"
    elif blocked in ("recipe.yaml", "search.json"):
        (out / blocked).mkdir(parents=True)
    else:
        out.mkdir()
        (out / ("tb" if blocked == "tb" else "trial-0000-running")).write_text("in the way")
    res = cli("search", recipe(), "--trials", 3, "--workers", workers, "--out", out)
    assert res.exit_code == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot write" in errors[0] and "Traceback" not in res.stderr, res.stderr
    assert "fix:" in res.stderr
    if blocked == "trial":
        assert "trial-0000-running" in errors[0]
        trials = sqlite_trials(out)
        assert trials[0].state.name == "FAIL" and trials[0].user_attrs["lost"].startswith("not written")
        assert workers > 1 or len(trials) == 1  # no further trial started


# ---------------------------------------------------------------------------------------------
# two searches, one study


def test_two_searches_share_one_journal_study_without_duplicates_or_losses(recipe, tmp_path):
    journal, path = tmp_path / "shared" / "study.log", recipe()
    procs = [subprocess.Popen([*NNRUN, "search", str(path), "--trials", "4", "--study", "both", "--storage",
                               f"journal:{journal}", "--out", str(tmp_path / name)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    trials = [t for t in trials_of(f"journal:{journal}", "both") if not t.user_attrs.get("surplus")]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({t.params["optimizer.lr"] for t in trials}) == 4  # the two processes were seeded apart
    folders = sorted(p.name[:10] for name in ("a", "b") for p in (tmp_path / name).glob("trial-*"))
    assert folders == [f"trial-{t.number:04d}" for t in trials]  # each trial ran once, in one of the folders
    assert all(Path(t.user_attrs["run_dir"]).is_dir() for t in trials)


@pytest.mark.parametrize("kind, repeat", [(kind, i) for kind in ("journal", "sqlite") for i in range(3)])
def test_of_two_processes_starting_one_study_exactly_one_creates_it(recipe, tmp_path, monkeypatch, kind, repeat):
    """Only the creator seeds from the recipe's seed (two 'creators' would propose the same trials);
    the other joins even while the creator is still writing the study's tables and attributes."""
    from nnrun import recipe as recipe_io
    from nnrun.recipe.search import parse
    from nnrun.tools.search.worker import WorkerPlan

    r = recipe_io.load(recipe())
    url = f"journal:{tmp_path / 'study.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    plan = WorkerPlan(recipe=recipe_io.to_dict(r), spec=parse(r.search, r), out=str(tmp_path), storage=url,
                      study="both", seed=r.seed)
    barrier, exists = threading.Barrier(2, timeout=30), studies.study_exists

    def look_then_wait(storage, name):  # both look before either creates (where the code looks first)
        found = exists(storage, name)
        barrier.wait()
        return found

    monkeypatch.setattr(studies, "study_exists", look_then_wait)
    created = []
    threads = [threading.Thread(target=lambda: created.append(search_wf._check_same_space(
        studies.open_storage(url), plan))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(created) == [False, True]
