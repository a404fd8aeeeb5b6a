"""Stopping and resuming runs of several processes (issue 13): a real SIGINT mid-epoch on 2 processes
resumes bit for bit; a run resumed on another process count sees every training example exactly
once per epoch; `--resume auto` and `train.checkpoint_every` for restarts. Real processes: slow."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

NNRUN = [sys.executable, "-c", "from nnrun.cli import main; main()", "train"]
RECIPE = """\
seed: 5
data: {source: digits, batch_size: 64, val_fraction: 0.2}
model: {arch: mlp, hidden: [32], dropout: 0.2}
optimizer: {name: adam, lr: 3e-3}
train: {epochs: 40, threads: 1}
log: {every_n_steps: 2, progress: none, tensorboard: false}
"""


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def test_sigint_mid_epoch_on_two_processes_resumes_bit_for_bit(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    proc = subprocess.Popen([*NNRUN, str(recipe), "--nproc", "2", "--run-dir", str(tmp_path / "cut")],
                            cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no evaluation within 180 s"
        time.sleep(0.05)  # polling for the first evaluation, not timing anything
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)  # to torchrun's agent in this process; it forwards to the workers
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - start < 10  # agreed, saved and out well inside torchrun's 30 s before SIGKILL
    cut = weights(tmp_path / "cut")
    assert cut["epoch"] >= 1 and cut["step"] < 40 * 18 and len(cut["rng"]) == 2
    stop_epochs = cut["epoch"] + (1 if cut["batch"] else 0) + 1
    res = subprocess.run([*NNRUN, "--resume", str(tmp_path / "cut"), f"train.epochs={stop_epochs}", "--nproc", "2"],
                         cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    full = subprocess.run([*NNRUN, str(recipe), f"train.epochs={stop_epochs}", "--nproc", "2",
                           "--run-dir", str(tmp_path / "full")], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    a, b = weights(tmp_path / "cut"), weights(tmp_path / "full")
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]


INDEXED = textwrap.dedent("""
    import os
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(0)
    FEATURES = torch.randn(300, 5, generator=g)
    X = torch.cat([torch.arange(300.0).unsqueeze(1), FEATURES], 1)   # column 0: the example's id
    Y = (FEATURES[:, 0] > 0).long() + (FEATURES[:, 1] > 0).long()
    XV = torch.cat([1000 + torch.arange(60.0).unsqueeze(1), FEATURES[:60] + 0.1], 1)

    def make():
        return (X, Y), (XV, Y[:60]), None

    class Net(nn.Module):  # an MLP on the features that logs the ids of the examples it trains on
        def __init__(self, num_outputs):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(5, 16), nn.ReLU())
            self.head = nn.Linear(16, num_outputs)

        def forward(self, x):
            if self.training and len(x):
                with open(os.environ["IDX_LOG"] + "." + os.environ.get("RANK", "0"), "a") as f:
                    f.write("".join(f"{int(i)}\\n" for i in x[:, 0]))
            return self.head(self.body(x[:, 1:]))

    def net(num_outputs):
        return Net(num_outputs)
""")


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_resuming_on_another_process_count_sees_every_example_once_per_epoch(tmp_path, first, second):
    (tmp_path / "indexed.py").write_text(INDEXED)
    recipe = tmp_path / "ix.yaml"
    recipe.write_text("seed: 2\ndata: {source: python, factory: 'indexed:make', batch_size: 32, normalize: none}\n"
                      "model: {arch: python, factory: 'indexed:net'}\ninit: {weights: default}\n"
                      "train: {epochs: 1.5, threads: 1}\nlog: {every_n_steps: 2, progress: none, tensorboard: false}\n")
    log = tmp_path / "idx"
    run = tmp_path / "run"
    e = env(PYTHONPATH=str(tmp_path), IDX_LOG=str(log))
    res = subprocess.run([*NNRUN, str(recipe), "--nproc", str(first), "--run-dir", str(run)], cwd=tmp_path, env=e,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert weights(run)["batch"] > 0  # stopped in the middle of epoch 2
    res = subprocess.run([*NNRUN, "--resume", str(run), "train.epochs=3", "--nproc", str(second)], cwd=tmp_path,
                         env=e, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resumed a run of {first} process(es)" in res.stderr
    seen = collections.Counter(int(i) for p in tmp_path.glob("idx.*") for i in p.read_text().split())
    assert seen == {i: 3 for i in range(300)}  # 3 epochs, every example exactly once in each
    one = subprocess.run([*NNRUN, str(recipe), "train.epochs=3", "--run-dir", str(tmp_path / "one")], cwd=tmp_path,
                         env=env(PYTHONPATH=str(tmp_path), IDX_LOG=str(tmp_path / "other")), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    a, b = weights(run)["model"], weights(tmp_path / "one")["model"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5  # dropout 0: the same run


def test_resume_auto_and_checkpoint_every_make_restarts_continue(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("dropout: 0.2", "dropout: 0.0").replace("epochs: 40", "epochs: 2"))
    args = [*NNRUN, str(recipe), "--run-dir", str(tmp_path / "job"), "--resume", "auto", "--nproc", "2",
            "train.checkpoint_every=5", "train.eval_every=10"]
    flag = tmp_path / "flag"
    proc = subprocess.Popen(args, cwd=tmp_path, env=env(NNRUN_CRASH_AT="step#12", NNRUN_CRASH_FLAG=str(flag)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run never reached step 12"
        time.sleep(0.05)  # polling for the flag file
    proc.send_signal(signal.SIGKILL)  # a preempted job: no chance to save
    proc.wait()
    subprocess.run(["pkill", "-9", "-f", str(tmp_path / "job")], check=False)  # the orphaned workers
    assert weights(tmp_path / "job")["step"] == 10  # written by checkpoint_every, between evaluations
    res = subprocess.run(args, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    full = subprocess.run([*NNRUN, str(recipe), "--run-dir", str(tmp_path / "full"), "--nproc", "2",
                           "train.eval_every=10"], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    a, b = weights(tmp_path / "job"), weights(tmp_path / "full")
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
