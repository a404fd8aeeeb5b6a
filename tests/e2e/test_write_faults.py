"""Write failures are user errors (probe D3, D18): a full disk, a read-only folder or a path blocked
by a file or folder ends in one message naming the path, the cause and the last complete
checkpoint, exit 2, from every writer; nothing complete is lost."""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnrun import checkpoint

CMD = [sys.executable, "-c", "from nnrun.cli import main; main()"]


def run(args, *, limit: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, optionally with a file-size limit (a disk that fills up)."""
    def preexec():
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([*CMD, *map(str, args)], capture_output=True, text=True, cwd=cwd, preexec_fn=preexec,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def one_clean_error(res) -> str:
    """A subprocess result or an in-process click result: exit 2, one `error:` line, no traceback."""
    code = res.returncode if isinstance(res, subprocess.CompletedProcess) else res.exit_code
    assert code == 2, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    return res.stderr


def test_a_disk_that_fills_up_mid_run_names_the_last_complete_checkpoint(tiny_recipe, tmp_path):
    first = run(["train", tiny_recipe, "train.epochs=1", "--run-dir", tmp_path / "probe"])
    assert first.returncode == 0, first.stderr
    size = (tmp_path / "probe" / "checkpoints" / "last.pt").stat().st_size
    # Later checkpoints are larger (the history grows by one record per evaluation): this limit lets
    # epoch 1's files through and stops the run at epoch 2's.
    res = run(["train", tiny_recipe, "train.epochs=3", "--run-dir", tmp_path / "full"], limit=size + 16)
    err = one_clean_error(res)
    last = tmp_path / "full" / "checkpoints" / "last.pt"
    assert "File too large" in err and f"last complete checkpoint: {last}" in err
    assert checkpoint.load(last)["epoch"] == 1  # intact and complete
    assert not list((tmp_path / "full").rglob("*.tmp"))


@pytest.fixture
def stopped_run(tiny_recipe, tmp_path, cli):
    """A finished 2-epoch run to resume from (its folder, its last.pt's weights)."""
    res = cli("train", tiny_recipe, "train.epochs=2", "log.tensorboard=true", "--run-dir", tmp_path / "r")
    assert res.exit_code == 0, res.stderr
    return tmp_path / "r", torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.mark.parametrize("block, where", [
    (lambda r: _swap_for_folder(r / "checkpoints" / "index.json"), "checkpoint index"),
    (lambda r: _swap_for_folder(r / "metrics.jsonl"), "metrics.jsonl"),
    (lambda r: _swap_for_file(r / "tb"), "TensorBoard events"),
    (lambda r: _swap_for_folder(r / "checkpoints" / "last.pt", keep_copy=True), "checkpoints"),
])
def test_a_blocked_path_on_resume_is_one_message(stopped_run, block, where, cli):
    folder, weights = stopped_run
    block(folder)
    resume_from = folder / "checkpoints" / ("last.pt.copy" if (folder / "checkpoints" / "last.pt.copy").exists()
                                            else "last.pt")
    err = one_clean_error(cli("train", "--resume", resume_from, "--run-dir", folder, "train.epochs=4",
                              "log.tensorboard=true"))
    assert where in err and "last complete checkpoint:" in err
    kept = torch.load(resume_from, weights_only=True)["model"]
    assert all(torch.equal(kept[k], weights[k]) for k in weights)  # nothing complete lost


def _swap_for_folder(path: Path, keep_copy: bool = False) -> None:
    if keep_copy:
        path.rename(path.with_name(path.name + ".copy"))
    else:
        path.unlink()
    path.mkdir()


def _swap_for_file(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    path.rmdir()
    path.write_text("in the way")


def test_a_checkpoints_path_blocked_by_a_file_names_it(tiny_recipe, tmp_path, cli):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "checkpoints").write_text("in the way")
    err = one_clean_error(cli("train", tiny_recipe, "--run-dir", tmp_path / "d"))
    assert f"{tmp_path / 'd' / 'checkpoints'}" in err and "File exists" in err


def test_a_read_only_run_folder_on_resume_is_one_message(stopped_run, tmp_path, cli):
    folder, weights = stopped_run
    if os.geteuid() == 0:  # root ignores permissions: use a read-only bind mount
        if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode:
            pytest.skip("no read-only mount available here")
        try:
            err = one_clean_error(cli("train", "--resume", folder, "train.epochs=3"))
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        err = one_clean_error(cli("train", "--resume", folder, "train.epochs=3"))
    assert "Read-only file system" in err or "Permission denied" in err
    assert all(torch.equal(torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["model"][k], weights[k])
               for k in weights)


@pytest.mark.parametrize("command", [
    ["lr-find", "{recipe}", "--steps", "5", "--out", "{blocked}/lr"],
    ["overfit-one-batch", "{recipe}", "--steps", "3", "--out", "{blocked}/of"],
    ["overfit-one-batch", "{recipe}", "--steps", "3", "--json", "{blocked}/r.json"],
    ["predict", "{run}", "--out", "{blocked}/p.csv"],
    ["ensemble", "{run}", "--all", "--mode", "weights", "--export", "{blocked}/avg.pt"],
])
def test_tools_report_a_blocked_output_path_in_one_message(stopped_run, tiny_recipe, tmp_path, command, cli):
    folder, _ = stopped_run
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    args = [a.format(recipe=tiny_recipe, blocked=blocked, run=folder) for a in command]
    err = one_clean_error(cli(*args))
    assert str(blocked) in err
    assert blocked.read_text() == "a file where a folder should be"


def test_files_get_the_mode_the_umask_gives(tiny_recipe, tmp_path, cli):
    old = os.umask(0o027)
    try:
        res = cli("train", tiny_recipe, "train.epochs=1", "--run-dir", tmp_path / "m")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.stderr
    for name in ("checkpoints/last.pt", "checkpoints/index.json", "metrics.jsonl", "recipe.yaml"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o640, name


def test_metrics_jsonl_is_strict_json(tmp_path):
    """A metric gone non-finite is written as `null` (probe D14: bare NaN tokens broke strict parsers)."""
    import json
    from types import SimpleNamespace

    from nnrun.training.callbacks import MetricsFile

    writer = MetricsFile(tmp_path / "metrics.jsonl")
    history = [{"epoch": 1, "val_loss": float("nan"), "ema_val_acc": float("inf")}]
    writer.on_fit_start(SimpleNamespace(state=SimpleNamespace(history=history)))
    writer.on_eval_end(None, {"epoch": 2, "val_loss": float("-inf"), "val_acc": 0.5})
    lines = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
             for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"epoch": 1, "val_loss": None, "ema_val_acc": None},
                     {"epoch": 2, "val_loss": None, "val_acc": 0.5}]


@pytest.mark.parametrize("command", [
    ["lr-find", "{recipe}", "--steps", "40", "--out", "{out}"],
    ["overfit-one-batch", "{recipe}", "--steps", "5", "--out", "{out}"],
    ["ensemble", "{run}", "--all", "--mode", "weights", "--export", "{out}/avg.pt"],
])
def test_tools_on_a_full_disk_end_in_one_message(stopped_run, tiny_recipe, tmp_path, command):
    """A file-size limit below what each tool writes (its CSV, report or exported checkpoint)."""
    folder, _ = stopped_run
    out = tmp_path / "out"
    args = [a.format(recipe=tiny_recipe, run=folder, out=out) for a in command]
    err = one_clean_error(run(args, limit=700))
    assert "File too large" in err and str(out) in err
    assert not list(out.rglob("*.tmp"))  # nothing half-written left behind
