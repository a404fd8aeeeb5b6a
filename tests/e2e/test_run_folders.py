"""A run folder belongs to one run (probe D1): created atomically, locked, never silently reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nnrun.training import run_folder
from nnrun.workflows._folders import fresh_dir

CMD = [sys.executable, "-c", "from nnrun.cli import main; main()"]


def test_fresh_dirs_started_in_the_same_second_are_distinct_and_created(tmp_path, monkeypatch):
    from datetime import datetime

    from nnrun.workflows import _folders

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 2, 10, 15, 0)

    monkeypatch.setattr(_folders, "datetime", Frozen)
    made = [fresh_dir(tmp_path, "quickstart") for _ in range(4)]
    assert [p.name for p in made] == ["20261202-101500", "20261202-101500-1", "20261202-101500-2",
                                      "20261202-101500-3"]
    assert all(p.is_dir() for p in made)


def test_two_trainings_started_together_get_two_folders(tiny_recipe, tmp_path):
    """The probe's `nnrun train ... &` twice: both run to the end, each in its own folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*CMD, "train", str(tiny_recipe), f"seed={s}", "train.epochs=1",
                               f"log.run_dir={tmp_path / 'runs'}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in (1, 2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = sorted((tmp_path / "runs" / "tiny").iterdir())
    assert len(folders) == 2
    seeds = sorted(int(line.split(":")[1]) for f in folders for line in (f / "recipe.yaml").read_text().splitlines()
                   if line.startswith("seed:"))
    assert seeds == [1, 2]
    for f in folders:
        lines = (f / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1 and (f / "checkpoints" / "last.pt").is_file()
        index = json.loads((f / "checkpoints" / "index.json").read_text())
        assert {e["file"] for e in index["top_k"]} == {p.name for p in (f / "checkpoints").glob("epoch*.pt")}


def test_a_run_dir_that_holds_a_run_is_refused_without_resume(tiny_recipe, tmp_path, cli):
    assert cli("train", tiny_recipe, "train.epochs=1", "--run-dir", tmp_path / "reuse").exit_code == 0
    before = (tmp_path / "reuse" / "metrics.jsonl").read_text()
    res = cli("train", tiny_recipe, "train.epochs=1", "seed=5", "--run-dir", tmp_path / "reuse")
    assert res.exit_code == 2 and "already holds a run" in res.stderr and "--resume" in res.stderr
    assert (tmp_path / "reuse" / "metrics.jsonl").read_text() == before  # nothing of the first run lost
    res = cli("train", "--resume", tmp_path / "reuse", "train.epochs=2")
    assert res.exit_code == 0, res.stderr


def test_a_folder_in_use_by_another_process_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from nnrun.training.run_folder import claim; claim(Path(sys.argv[1]), resume=False); "
                               "print('held', flush=True); time.sleep(120)", str(tmp_path / "r")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_folder.OutputError, match=f"in use by another nnrun process \\(pid {holder.pid}\\)"):
            run_folder.claim(tmp_path / "r", resume=True)
    finally:
        holder.kill()
        holder.wait()
    lock = run_folder.claim(tmp_path / "r", resume=True)  # the kernel dropped the dead holder's lock
    lock.release()


def test_a_start_that_fails_before_writing_leaves_no_empty_folder(tmp_path, cli, write_recipe):
    recipe = write_recipe(f"data: {{source: csv, path: {tmp_path / 'missing.csv'}}}\n"
                          f"log: {{run_dir: {tmp_path / 'runs'}}}\n")
    res = cli("train", recipe)
    assert res.exit_code == 2 and "missing.csv" in res.stderr
    assert list((tmp_path / "runs" / "r").iterdir()) == []  # the timestamped folder was removed again


def test_the_lock_file_is_not_a_run(tmp_path):
    lock = run_folder.claim(tmp_path / "x", resume=False)
    lock.release()
    assert not run_folder.holds_run(tmp_path / "x")
    run_folder.claim(tmp_path / "x", resume=False).release()  # reclaimable: an empty folder is not a run
