"""Kill -9 at many points, including inside checkpoint writes and the top-k rotation, then resume:
the final weights equal an uninterrupted run's bit for bit, the index matches the files, and no
temporary file remains (issue 12's crash-consistency harness; probe D12).

The kill points are exact: `NNRUN_CRASH_AT=<point>#<k>` parks the process the k-th time it reaches
`nnrun.files.crash_point(<point>)` and writes a flag file; the test waits for the flag, then
SIGKILLs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nnrun import checkpoint

RECIPE = """\
seed: 3
data: {source: digits, batch_size: 64, val_fraction: 0.2, limit: 700}
model: {arch: mlp, hidden: [32], dropout: 0.1}
optimizer: {name: adam, lr: 3e-3}
train: {epochs: 4, save_top_k: 2, threads: 1}
log: {every_n_steps: 5, progress: none, tensorboard: false}
"""
# Every atomic write (recipe.yaml, the metrics rewrite, top-k files, index, last.pt) passes the
# three write:* points; each evaluation passes rotate:* (when its checkpoint ranks) and checkpoint:*.
KILL_POINTS = [
    "step#1", "step#6", "step#9", "step#17", "step#23", "step#31",
    "write:before-fsync#1", "write:before-replace#2", "write:after-replace#3",
    "write:before-fsync#4", "write:before-replace#5", "write:after-replace#6",
    "write:before-replace#8", "write:after-replace#9", "write:before-fsync#11", "write:before-replace#12",
    "rotate:after-save#1", "rotate:after-save#2", "rotate:after-save#3",
    "rotate:after-index#1", "rotate:after-index#3",
    "checkpoint:before-last#1", "checkpoint:before-last#2", "checkpoint:before-last#4",
]
CMD = [sys.executable, "-c", "from nnrun.cli import main; main()", "train"]


def run_and_kill(recipe: Path, run_dir: Path, point: str, tmp_path: Path) -> bool:
    """Start the run with a kill point; True when the point was reached and the process killed."""
    flag = tmp_path / f"flag-{point.replace(':', '_').replace('#', '_')}"
    env = {**os.environ, "NNRUN_CRASH_AT": point, "NNRUN_CRASH_FLAG": str(flag), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*CMD, str(recipe), "--run-dir", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # polling for the flag file, not timing anything
    reached = flag.exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return reached


def resume(cli, recipe: Path, run_dir: Path):
    if checkpoint.newest_checkpoint(run_dir) is None and not (run_dir / "checkpoints" / "last.pt").is_file():
        return cli("train", recipe, "--run-dir", run_dir)  # killed before its first checkpoint: start again
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return cli("train", "--resume", checkpoint.newest_checkpoint(run_dir), "--run-dir", run_dir)
    return cli("train", "--resume", run_dir)


def check_folder(run_dir: Path) -> None:
    ck = run_dir / "checkpoints"
    assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"
    index = json.loads((ck / "index.json").read_text())
    assert {e["file"] for e in index["top_k"]} == {p.name for p in ck.glob("epoch*.pt")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    recipe = root / "crash.yaml"
    recipe.write_text(RECIPE)
    subprocess.run([*CMD, str(recipe), "--run-dir", str(root / "run")], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    ck = root / "run" / "checkpoints"
    return {"model": torch.load(ck / "last.pt", weights_only=True)["model"],
            "metrics": (root / "run" / "metrics.jsonl").read_text().splitlines(),
            "top": sorted(p.name for p in ck.glob("epoch*.pt"))}


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_then_resume_is_bit_identical(point, reference, tmp_path, cli):
    recipe = tmp_path / "crash.yaml"
    recipe.write_text(RECIPE)
    run_dir = tmp_path / "run"
    assert run_and_kill(recipe, run_dir, point, tmp_path), f"the run never reached {point}"
    res = resume(cli, recipe, run_dir)
    assert res.exit_code == 0, res.stderr
    final = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert final.keys() == reference["model"].keys()
    assert all(torch.equal(final[k], reference["model"][k]) for k in final), f"weights differ after {point}"
    check_folder(run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("epoch*.pt")) == reference["top"]
    assert (run_dir / "metrics.jsonl").read_text().splitlines() == reference["metrics"]
