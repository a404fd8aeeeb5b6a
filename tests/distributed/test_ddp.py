"""Training on several processes under torchrun (CPU, gloo): the same math as one process, ranks in
lockstep, one gradient all-reduce per optimizer step, exact sharded evaluation, files written once,
errors printed once (issue 13). Each test launches real processes, so they are marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nnrun import checkpoint

pytestmark = pytest.mark.slow

RECIPE = """\
seed: 3
data: {source: digits, batch_size: 64, val_fraction: 0.2}
model: {arch: mlp, hidden: [32], dropout: 0.0}
optimizer: {name: adam, lr: 3e-3}
train: {epochs: 3, threads: 1}
log: {every_n_steps: 5, progress: none, tensorboard: false}
"""
NNRUN = [sys.executable, "-c", "from nnrun.cli import main; main()"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "ddp.yaml"
    path.write_text(RECIPE)
    return path


def train(args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*NNRUN, "train", *map(str, args)], cwd=cwd, capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def final(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def same_math(one: Path, many: Path) -> None:
    a, b = final(one), final(many)
    assert a["step"] == b["step"] and len(a["history"]) == len(b["history"])
    assert max_diff(a["model"], b["model"]) <= 1e-5
    for ha, hb in zip(a["history"], b["history"]):
        assert abs(ha["val_loss"] - hb["val_loss"]) <= 1e-5 and abs(ha["train_loss"] - hb["train_loss"]) <= 1e-5


def test_two_processes_train_like_one_and_write_each_file_once(recipe, tmp_path):
    assert train([recipe, "--run-dir", tmp_path / "one"], tmp_path).returncode == 0
    res = train([recipe, "log.tensorboard=true", "--run-dir", tmp_path / "two", "--nproc", "2"], tmp_path)
    assert res.returncode == 0, res.stderr
    same_math(tmp_path / "one", tmp_path / "two")
    two = tmp_path / "two"
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 3  # one line per evaluation
    assert len(list((two / "tb").glob("events.out.tfevents.*"))) == 1  # one TensorBoard run
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(two / "checkpoints" / "epoch"))  # printed once, by rank 0
    assert res.stderr.count("run summary") == 1
    assert final(two)["world_size"] == 2 and len(final(two)["rng"]) == 2
    assert checkpoint.load(two)["model"].keys() == final(tmp_path / "one")["model"].keys()  # no `module.` prefix


def batch_leaving_one(recipe: Path) -> int:
    """A global batch size whose last batch holds one training example (two of three processes then
    get an empty chunk)."""
    from nnrun import recipe as recipe_io
    from nnrun.build import build
    from nnrun.runtime import resolve_device

    n = build(recipe_io.load(recipe), device=resolve_device("cpu")).data.train.num_examples
    return next(b for b in range(24, n) if n % b == 1)


def test_unfreezing_re_wraps_the_model_so_the_new_parameters_sync(recipe, tmp_path):
    """Frozen body for epoch 0, unfrozen from epoch 1: DDP built at the start would leave the body's
    gradients unsynced (the ranks would drift apart and away from one process)."""
    freeze = ["model.freeze=[body.*]", "model.unfreeze=[{epoch: 1, match: 'body.*'}]"]
    assert train([recipe, *freeze, "--run-dir", tmp_path / "one"], tmp_path).returncode == 0
    res = train([recipe, *freeze, "--run-dir", tmp_path / "two", "--nproc", "2"], tmp_path)
    assert res.returncode == 0, res.stderr
    same_math(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("world", [2, 3])
def test_uneven_and_empty_chunks_meet_the_same_bound(recipe, tmp_path, world):
    override = "data.batch_size=63" if world == 2 else f"data.batch_size={batch_leaving_one(recipe)}"
    assert train([recipe, override, "--run-dir", tmp_path / "one"], tmp_path).returncode == 0
    res = train([recipe, override, "--run-dir", tmp_path / "many", "--nproc", str(world)], tmp_path)
    assert res.returncode == 0, res.stderr
    same_math(tmp_path / "one", tmp_path / "many")


WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from nnrun import distributed, recipe as recipe_io
    from nnrun.training.callbacks import Callback
    from nnrun.workflows import train as train_wf

    recipe_path, run_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    reduces = []
    wrap = distributed.wrap

    def counting_wrap(model, device):  # count the gradient all-reduces DDP issues
        ddp = wrap(model, device)
        def hook(state, bucket):
            reduces.append(1)
            return allreduce_hook(state, bucket)
        ddp.register_comm_hook(None, hook)
        return ddp

    distributed.wrap = counting_wrap

    class Lockstep(Callback):
        def __init__(self):
            self.same = []
        def on_eval_end(self, trainer, record):  # every rank runs it: a collective is fine here
            digest = distributed.fingerprint(trainer.model.state_dict(), trainer.optimizer.state_dict())
            self.same.append(len(set(distributed.gather_objects(digest))) == 1)

    lock = Lockstep()
    recipe = recipe_io.load(recipe_path, sys.argv[4:])
    result = train_wf.run(recipe, run_dir=run_dir, callbacks=[lock], handle_signals=False)
    rank = int(__import__("os").environ["RANK"])
    (out / f"rank{rank}.json").write_text(json.dumps({"same": lock.same, "reduces": len(reduces),
                                                      "steps": result.steps}))
""")


def test_ranks_stay_in_lockstep_with_one_all_reduce_per_accumulated_step(recipe, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    res = subprocess.run([*TORCHRUN, "--nproc-per-node=2", str(script), str(recipe), str(tmp_path / "two"),
                          str(tmp_path), "clip.accumulate=2"], cwd=tmp_path, capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["same"] == [True] * 3  # bitwise-identical parameters and optimizer state after every evaluation
        assert r["reduces"] == r["steps"]  # exactly one gradient all-reduce per optimizer step (no_sync works)
    assert train([recipe, "clip.accumulate=2", "--run-dir", tmp_path / "one"], tmp_path).returncode == 0
    same_math(tmp_path / "one", tmp_path / "two")


EVAL_WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from nnrun import checkpoint, distributed, recipe as recipe_io
    from nnrun.build import build
    from nnrun.components.metrics import evaluate

    payload = checkpoint.load(sys.argv[1])
    recipe = recipe_io.from_dict(payload["recipe"])
    world = distributed.world()
    distributed.init(world, torch.device("cpu"))
    c = build(recipe, device=torch.device("cpu"), normalizer=payload["normalization"], world=world)
    c.model.load_state_dict(payload["model"])
    metrics = evaluate(c.model, c.val_batches.epoch(0), c.loss_fn, task=c.data.task, device="cpu",
                       all_reduce_sum=distributed.all_reduce_sum)
    if world.rank == 0:
        Path(sys.argv[2]).write_text(json.dumps(metrics))
    distributed.shutdown()
""")


def test_sharded_evaluation_equals_one_process(recipe, tmp_path):
    assert train([recipe, "train.epochs=1", "--run-dir", tmp_path / "one"], tmp_path).returncode == 0
    script = tmp_path / "eval.py"
    script.write_text(EVAL_WORKER)
    res = subprocess.run([*TORCHRUN, "--nproc-per-node=3", str(script), str(tmp_path / "one"),
                          str(tmp_path / "m.json")], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    shared = json.loads((tmp_path / "m.json").read_text())
    one = final(tmp_path / "one")["history"][-1]
    for key in ("val_loss", "val_acc"):
        assert shared[key] == pytest.approx(one[key], rel=1e-12)


def test_errors_under_several_processes_print_once_and_exit_2(recipe, tmp_path):
    res = train([recipe, "train.sync_bn=on", "--nproc", "2", "--run-dir", tmp_path / "r"], tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("error:") == 1 and "SyncBatchNorm runs on CUDA only" in res.stderr
    assert "Traceback" not in res.stderr
    res = train([recipe, "optimizer.lrr=1", "--nproc", "2"], tmp_path)  # found by the parent before launching
    assert res.returncode == 2 and res.stderr.count("error:") == 1 and "did you mean `optimizer.lr`" in res.stderr
    res = subprocess.run([*TORCHRUN, "--nproc-per-node=2", "-m", "nnrun", "predict", "x"], cwd=tmp_path,
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.stderr.count("nnrun predict runs in one process") == 1


def test_an_error_on_another_rank_alone_is_printed_by_that_rank_after_the_grace(cli, monkeypatch):
    """A rank other than 0 that fails waits for torchrun's SIGTERM (rank 0 failed too and printed); when none
    comes within the grace, only it failed, and it prints its own message naming its rank."""
    from nnrun.cli import common

    waited = []
    monkeypatch.setattr(common.time, "sleep", waited.append)  # the grace passes at once: no SIGTERM came
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = cli("predict", "x")
    assert res.exit_code == 2 and waited == [common.WORKER_GRACE_S]
    assert res.stderr.count("error (rank 1):") == 1 and "nnrun predict runs in one process" in res.stderr
