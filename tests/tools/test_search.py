"""`nnrun search`: sampling, stage narrowing, the edge warning, search-space validation, workers
sharing SQLite and journal storages, a killed worker's trial, pruning, the CLI end to end and
the search folder as input of `nnrun ensemble`."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from nnrun import recipe as recipe_io
from nnrun.recipe.search import Param, parse
from nnrun.tools.search import study as studies
from nnrun.tools.search.edges import edge_warnings
from nnrun.tools.search.sampling import suggest
from nnrun.tools.search.stages import MIN_PAD, PAD, narrow, narrow_param, top_trials
from nnrun.workflows import search as search_wf

BASE = """\
seed: 5
data: {{source: digits, limit: {limit}, val_fraction: 0.25, batch_size: 32}}
model: {{hidden: [32]}}
optimizer: {{lr: 0.01}}
train: {{epochs: {epochs}, save_top_k: 1}}
log: {{progress: none, tensorboard: false}}
search:
{search}
"""


def write(tmp_path: Path, search: str, *, epochs: int = 1, limit: int = 300, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(BASE.format(limit=limit, epochs=epochs, search=textwrap.indent(textwrap.dedent(search), "  ")))
    return path


def trial_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("trial-*") if p.is_dir())


# ---------------------------------------------------------------------------------------------
# sampling, narrowing, edges (no training)


def test_log_uniform_covers_its_decades_evenly():
    p = Param("optimizer.lr", "log_uniform", 1e-4, 1e-1)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [suggest(study.ask(), [p])["optimizer.lr"] for _ in range(3000)]
    assert all(1e-4 <= v <= 1e-1 for v in values)
    decades = Counter(math.floor(math.log10(v)) for v in values)
    assert set(decades) == {-4, -3, -2}
    for count in decades.values():  # 1000 expected each; a linear draw would put ~900 in [1e-2, 1e-1]
        assert 900 < count < 1100, decades


def test_choices_of_lists_round_trip_through_optuna():
    p = Param("model.hidden", "choice", choices=([64], [128, 64]))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {tuple(suggest(study.ask(), [p])["model.hidden"]) for _ in range(20)}
    assert seen == {(64,), (128, 64)}


def test_stage_narrowing_around_the_best_trials():
    lr = Param("optimizer.lr", "log_uniform", 1e-4, 1e-1)
    drop = Param("model.dropout", "uniform", 0.0, 0.5)
    bs = Param("data.batch_size", "int_log", 16, 256)
    hidden = Param("model.hidden", "choice", choices=([64], [128]))
    trials = [(0.95, {"optimizer.lr": 1e-3, "model.dropout": 0.1, "data.batch_size": 32}),
              (0.97, {"optimizer.lr": 4e-3, "model.dropout": 0.2, "data.batch_size": 64}),
              (0.50, {"optimizer.lr": 9e-2, "model.dropout": 0.5, "data.batch_size": 256}),
              (0.60, {"optimizer.lr": 1e-4, "model.dropout": 0.0, "data.batch_size": 16})]
    assert [t[0] for t in top_trials(trials, 0.5, "max")] == [0.97, 0.95]
    assert [t[0] for t in top_trials(trials, 0.25, "min")] == [0.50, 0.60]  # at least two kept
    new, lines = narrow([lr, drop, bs, hidden], trials, keep_top=0.5, mode="max", original=[lr, drop, bs, hidden])
    # log space: span ln(4e-3/1e-3), padded by max(10% of it, 2.5% of the original ln(1000))
    pad = max(PAD * math.log(4), MIN_PAD * math.log(1000))
    assert new[0].low == pytest.approx(1e-3 * math.exp(-pad)) and new[0].high == pytest.approx(4e-3 * math.exp(pad))
    assert new[0].kind == "log_uniform"
    pad = max(PAD * 0.1, MIN_PAD * 0.5)
    assert (new[1].low, new[1].high) == (pytest.approx(0.1 - pad), pytest.approx(0.2 + pad))
    pad = max(PAD * math.log(2), MIN_PAD * math.log(16))
    assert (new[2].low, new[2].high) == (math.floor(32 * math.exp(-pad)), math.ceil(64 * math.exp(pad))) == (29, 69)
    assert isinstance(new[2].low, int)  # integers rounded outward
    assert new[3] == hidden  # choices are kept whole
    assert "optimizer.lr: [0.0001, 0.1] -> [0.0008414, 0.004754] (log scale), around the best 2 of 4" in lines[0]
    # clipped to the original range: best trials at the edge cannot leave it
    edge = narrow_param(lr, [1e-4, 2e-4], lr)
    assert edge.low == pytest.approx(1e-4) and edge.high < 3e-4
    # a single kept point still leaves the next stage room
    one = narrow_param(drop, [0.25], drop)
    assert one.high - one.low == pytest.approx(2 * MIN_PAD * 0.5)


def test_edge_warning_uses_each_range_on_its_own_scale():
    lr = Param("optimizer.lr", "log_uniform", 1e-4, 1e-1)
    drop = Param("model.dropout", "uniform", 0.0, 0.5)
    hidden = Param("model.hidden", "choice", choices=([64], [128]))
    # 2e-3 is in the lowest 2% of [1e-4, 1e-1] linearly but at 43% on the log scale: no warning
    assert edge_warnings({"optimizer.lr": 2e-3, "model.dropout": 0.25, "model.hidden": [64]}, [lr, drop, hidden]) == []
    # 1.5e-4 is at 6% on the log scale; 0.48 at 96% of the dropout range
    out = edge_warnings({"optimizer.lr": 1.5e-4, "model.dropout": 0.48}, [lr, drop])
    assert len(out) == 2
    assert "optimizer.lr" in out[0] and "low 10%" in out[0] and "log scale" in out[0] and "below 0.0001" in out[0]
    assert "model.dropout" in out[1] and "high 10%" in out[1] and "above 0.5" in out[1]


# ---------------------------------------------------------------------------------------------
# validation


def test_search_space_problems_fail_check_with_lines_and_did_you_mean(cli, tmp_path):
    path = write(tmp_path, """\
        space:
          optimizer.lrr: {log_uniform: [1e-4, 1e-1]}
          optimizer.weight_decay: {log_uniform: [0, 1e-2]}
          model.dropout: {uniform: [0, 1.5]}
          data.batch_size: {uniform: [16, 256]}
          model.hidden: {choise: [[64], [32]]}
        stages: [{trials: 4, epochs: 1, keep_top: 0.5}, {trials: 2, keep_topp: 0.5}]
        """)
    res = cli("check", path)
    assert res.exit_code == 2
    err = res.stderr
    assert ("`search.space.optimizer.lrr` (line 9): `optimizer.lrr` is not a recipe key "
            "(did you mean `optimizer.lr`?)") in err
    assert "`search.space.optimizer.weight_decay.log_uniform` (line 10)" in err and "needs low > 0" in err
    assert "`search.space.model.dropout` (line 11): uniform value 1.5 is not a valid `model.dropout`" in err
    assert "between 0.0 and 0.95" in err
    assert "integer key: use `int` or `int_log`" in err
    assert "(did you mean `choice`?)" in err
    assert "`search.stages.0.keep_top` (line 14)" in err and "(did you mean `keep_top`?)" in err
    good = write(tmp_path, "space: {optimizer.lr: {log_uniform: [1e-4, 1e-1]}}", name="good.yaml")
    assert cli("check", good).exit_code == 0


def test_space_file_replaces_the_recipe_section_with_its_own_lines(cli, tmp_path):
    path = write(tmp_path, "space: {optimizer.lr: {log_uniform: [1e-4, 1e-1]}}")
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  model.dropout: {uniform: [0, 0.5]}\n  optimizer.momentun: {uniform: [0, 1]}\n")
    res = cli("search", path, "--space", space, "--out", tmp_path / "out")
    assert res.exit_code == 2
    assert "space.yaml" in res.stderr and "(line 3)" in res.stderr and "did you mean `optimizer.momentum`" in res.stderr


# ---------------------------------------------------------------------------------------------
# workers and storages


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_workers_share_one_store_without_duplicates_or_losses(tmp_path, storage):
    path = write(tmp_path, """\
        space:
          optimizer.lr: {log_uniform: [1e-3, 3e-2]}
          model.dropout: {uniform: [0, 0.3]}
        trials: 6
        """, limit=200)
    recipe = recipe_io.load(path)
    out = tmp_path / "out"
    url = None if storage == "sqlite" else f"journal:{tmp_path / 'shared' / 'study.log'}"
    result = search_wf.run(recipe, parse(recipe.search, recipe), out=out, storage=url, workers=2)
    assert not result.worker_failures
    assert (out / "study.db").is_file() if storage == "sqlite" else (tmp_path / "shared" / "study.log").is_file()
    assert sorted(r.number for r in result.trials) == list(range(6))
    assert all(r.state == "complete" for r in result.trials)
    folders = trial_dirs(out)
    assert len(folders) == 6 and {Path(r.run_dir) for r in result.trials} == set(folders)
    assert len({r.params["optimizer.lr"] for r in result.trials}) == 6  # workers seeded differently
    study = optuna.load_study(study_name=result.study, storage=studies.open_storage(result.storage))
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both processes ran trials


def test_killed_worker_trial_is_marked_failed_and_resume_finishes(cli, tmp_path):
    path = write(tmp_path, """\
        space: {optimizer.lr: {log_uniform: [1e-3, 3e-2]}}
        trials: 3
        """, epochs=3, limit=400)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from nnrun.cli import main; main()", "search", str(path), "--out", str(out)]
    flag = tmp_path / "flag"  # the first trial parks at its 15th step (in epoch 2, after one report)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NNRUN_CRASH_AT": "step#15", "NNRUN_CRASH_FLAG": str(flag)})
    try:
        deadline = time.monotonic() + 120
        while not flag.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # polling for the flag file, not timing anything
        assert flag.exists(), "the first trial never reached its 15th step"
        victim = _running_trial(out)
        assert victim is not None, "the worker had no RUNNING trial"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    storage = studies.open_storage(f"sqlite:///{out / 'study.db'}")
    name = storage.get_all_studies()[0].study_name
    assert optuna.load_study(study_name=name, storage=storage).trials[victim].state.name == "RUNNING"
    res = cli("search", path, "--out", out, "--resume")
    assert res.exit_code == 0, res.stderr
    trials = optuna.load_study(study_name=name, storage=storage).trials
    lost = trials[victim]
    assert lost.state.name == "FAIL" and "died" in lost.user_attrs["lost"]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == lost.params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    assert not any(t.state.name == "RUNNING" for t in trials)
    assert len([p for p in trial_dirs(out) if "-val_acc=" in p.name]) == 3
    assert (out / f"trial-{victim:04d}-lost").is_dir()  # the killed run's folder, renamed


def test_a_trial_killed_after_naming_its_folder_is_lost_not_complete(tmp_path, cli):
    """Killed between renaming its folder for its result and telling the study: the trial did not
    finish, so resume fails it, renames that folder `-lost` and retries it once."""
    path = write(tmp_path, """\
        space: {optimizer.lr: {log_uniform: [1e-3, 3e-2]}}
        trials: 2
        """, epochs=1, limit=200)
    out, flag = tmp_path / "out", tmp_path / "flag"
    cmd = [sys.executable, "-c", "from nnrun.cli import main; main()", "search", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NNRUN_CRASH_AT": "trial:after-rename", "NNRUN_CRASH_FLAG": str(flag)})
    try:
        deadline = time.monotonic() + 120
        while not flag.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # polling for the flag file, not timing anything
        assert flag.exists(), "the first trial never finished training"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert [p.name for p in trial_dirs(out)][0].startswith("trial-0000-val_acc=")  # named, not yet told
    res = cli("search", path, "--out", out, "--resume")
    assert res.exit_code == 0, res.stderr
    names = [p.name for p in trial_dirs(out)]
    assert "trial-0000-lost" in names and sum("-val_acc=" in n for n in names) == 2


def _running_trial(out: Path) -> int | None:
    """The number of a RUNNING trial that is training, read from the storage (None yet)."""
    time.sleep(0.05)  # a polling interval, not a timing assumption: the loop waits for the state
    db = out / "study.db"
    if not db.is_file():
        return None
    try:
        storage = _running_trial.storage = getattr(_running_trial, "storage", None) or optuna.storages.RDBStorage(
            f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 30}}, skip_compatibility_check=True)
        for s in storage.get_all_studies():
            for t in storage.get_all_trials(s._study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if "worker" in t.user_attrs and t.intermediate_values:  # training under way
                    return t.number
    except Exception:  # the worker is still creating the tables
        _running_trial.storage = None
    return None


# ---------------------------------------------------------------------------------------------
# pruning and the CLI


def test_median_pruner_cuts_a_hopeless_trial(tmp_path):
    path = write(tmp_path, """\
        space:
          optimizer.lr: {choice: [0.02, 0.01, 0.005, 1.0e-9]}
        trials: 8
        pruner: {name: median, startup_trials: 2}
        """, epochs=3, limit=300)
    recipe = recipe_io.load(path)
    result = search_wf.run(recipe, parse(recipe.search, recipe), out=tmp_path / "out")
    by_number = sorted(result.trials, key=lambda r: r.number)
    completed_before = 0
    hopeless_after_startup = []
    for r in by_number:
        if r.params["optimizer.lr"] == 1e-9 and completed_before >= 2:
            hopeless_after_startup.append(r)
        completed_before += r.state == "complete"
    assert hopeless_after_startup, [(r.number, r.params) for r in by_number]  # the seed draws one
    for r in hopeless_after_startup:
        assert r.state == "pruned" and r.epochs < 3
        assert Path(r.run_dir).name.startswith(f"trial-{r.number:04d}-pruned-val_acc=")
    assert all(r.state in ("complete", "pruned") for r in by_number)
    assert result.best.params["optimizer.lr"] != 1e-9 and result.best.value > 0.5


def test_cli_search_end_to_end(cli, tmp_path):
    path = write(tmp_path, """\
        metric: val_loss
        space:
          optimizer.lr: {log_uniform: [1e-3, 3e-2]}
          model.hidden: {choice: [[16], [32, 16]]}
        stages: [{trials: 3, epochs: 1}, {trials: 2, epochs: 2, keep_top: 0.5}]
        """, limit=300)
    out = tmp_path / "out"
    res = cli("search", path, "--out", out)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() == str(out)
    err = res.stderr
    assert "trials by val_loss (lower is better)" in err
    assert "stage 2: narrowed optimizer.lr: [0.001, 0.03] -> [" in err and "(log scale)" in err
    for stage, n in ((1, 3), (2, 2)):
        folders = trial_dirs(out / f"stage-{stage}")
        assert [f.name[:10] for f in folders] == [f"trial-{i:04d}" for i in range(n)]
        for f in folders:
            assert re.fullmatch(r"trial-\d{4}-val_loss=\d+\.\d{4}", f.name), f.name
            assert (f / "recipe.yaml").is_file() and (f / "checkpoints" / "last.pt").is_file()
            assert (f / "checkpoints" / "index.json").is_file()
    # the table lists the last stage first, best (lowest val_loss) first
    stage2 = sorted(float(f.name.split("=")[1]) for f in trial_dirs(out / "stage-2"))
    rows = [line for line in err.splitlines() if re.search(r"trial-000\d-val_loss", line)]
    first = re.search(r"val_loss=(\d+\.\d{4})", rows[0]).group(1)
    assert float(first) == stage2[0]
    assert "best: trial" in err and f"val_loss={stage2[0]:.4f}" in err
    assert list((out / "tb").rglob("events.out.tfevents.*"))  # hparams for TensorBoard
    resolved = recipe_io.load(trial_dirs(out / "stage-2")[0] / "recipe.yaml")
    assert resolved.train.epochs == 2 and resolved.train.monitor == "val_loss" and resolved.search == {}
    # the search folder feeds `nnrun ensemble`: the best 2 trials by their stored val_loss
    ens = cli("ensemble", out, "--top-k", 2)
    assert ens.exit_code == 0, ens.stderr
    assert "mean ensemble of 2" in ens.stderr and "val_loss=" in ens.stdout
    again = cli("search", path, "--out", out)  # an existing search is never silently reused
    assert again.exit_code == 2 and "--resume" in again.stderr
