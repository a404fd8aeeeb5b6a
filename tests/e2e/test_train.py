"""End to end through the real CLI on the built-in digits data: run folder, checkpoints,
TensorBoard, exact resume (including a mid-epoch interrupt), predict, and clean errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from nnrun import checkpoint
from nnrun import recipe as recipe_io
from nnrun.training.callbacks import Callback
from nnrun.workflows import train as train_wf


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_writes_a_complete_run_folder(cli, tiny_recipe, tmp_path):
    run = tmp_path / "run"
    res = cli("train", tiny_recipe, "--run-dir", run)
    assert res.exit_code == 0, res.output
    assert (run / "recipe.yaml").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"epoch", "step", "train_loss", "val_loss", "val_acc"} <= lines[0].keys()
    assert lines[-1]["val_acc"] > 0.5  # a real model learnt real digits (chance: 0.1)
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("epoch*.pt"))
    assert len(ckpts) == 2 and all("-val_acc=0." in n for n in ckpts)
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["monitor"] == "val_acc" and len(index["top_k"]) == 2
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    payload = checkpoint.load(run / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "rng", "normalization", "recipe", "metrics", "version", "step", "epoch"):
        assert key in payload
    assert payload["optimizer"]["state"]  # Adam moments are saved
    assert payload["recipe"]["seed"] == 3


def test_tensorboard_has_the_promised_scalars(cli, tiny_recipe, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert cli("train", tiny_recipe, "--run-dir", run).exit_code == 0
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/acc", "lr/default", "grad_norm", "throughput/samples_per_s"} <= tags


def test_same_recipe_and_seed_give_the_same_numbers(tiny_recipe, tmp_path):
    r = recipe_io.load(tiny_recipe)
    a = train_wf.run(r, run_dir=tmp_path / "a", handle_signals=False)
    b = train_wf.run(r, run_dir=tmp_path / "b", handle_signals=False)
    assert a.history == b.history
    assert_same_weights(checkpoint.load(a.last_checkpoint)["model"], checkpoint.load(b.last_checkpoint)["model"])


class StopAt(Callback):
    """Simulates Ctrl-C at a given step: the same path the signal handler takes."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.state.step == self.step:
            trainer.request_stop(train_wf.INTERRUPTED)


def test_mid_epoch_interrupt_resumes_bit_identically(tiny_recipe, tmp_path):
    r = recipe_io.load(tiny_recipe)
    full = train_wf.run(r, run_dir=tmp_path / "full", handle_signals=False)
    steps_per_epoch = full.steps // 2
    cut = steps_per_epoch + 7  # inside the second epoch
    part = train_wf.run(r, run_dir=tmp_path / "part", callbacks=[StopAt(cut)], handle_signals=False)
    assert part.stop_reason == train_wf.INTERRUPTED and part.steps == cut
    saved = checkpoint.load(tmp_path / "part")
    assert saved["batch"] == 7 and saved["epoch"] == 1
    resumed = train_wf.run(r, resume=tmp_path / "part", handle_signals=False)
    assert resumed.run_dir == tmp_path / "part" and resumed.steps == full.steps
    assert_same_weights(checkpoint.load(full.last_checkpoint)["model"],
                        checkpoint.load(resumed.last_checkpoint)["model"])
    assert resumed.history == full.history  # every epoch's record, the interrupted one included, as if never cut
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_resume_a_finished_run_with_more_epochs(cli, tiny_recipe, tmp_path):
    run = tmp_path / "run"
    assert cli("train", tiny_recipe, "--run-dir", run, "train.epochs=1").exit_code == 0
    res = cli("train", "--resume", run, "train.epochs=2")
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    full = train_wf.run(recipe_io.load(tiny_recipe), run_dir=tmp_path / "full", handle_signals=False)
    assert_same_weights(checkpoint.load(full.last_checkpoint)["model"], checkpoint.load(run)["model"])


@pytest.mark.slow
def test_real_sigint_mid_run_saves_and_resumes_exactly(cli, tiny_recipe, tmp_path):
    """A real Ctrl-C wherever it lands: the resumed run ends bit-identical to an uninterrupted one."""
    overrides = ["train.epochs=30", "log.progress=plain"]
    full = train_wf.run(recipe_io.load(tiny_recipe, overrides), run_dir=tmp_path / "full", handle_signals=False)
    run = tmp_path / "run"
    cmd = [sys.executable, "-c", "from nnrun.cli import main; main()", "train", str(tiny_recipe), *overrides,
           "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    for line in proc.stderr:  # wait until training is under way (first evaluation printed)
        if line.startswith("epoch ") and metrics.exists():
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resume exactly" in err
    assert not list((run / "checkpoints").glob("*.tmp"))
    saved = checkpoint.load(run)
    where = f"interrupted at epoch {saved['epoch']} batch {saved['batch']} step {saved['step']}"
    res = cli("train", "--resume", run)
    assert res.exit_code == 0, res.output
    resumed = checkpoint.load(run)
    assert [h["val_loss"] for h in resumed["history"]] == [h["val_loss"] for h in full.history], where
    assert_same_weights(checkpoint.load(full.last_checkpoint)["model"], resumed["model"])


def test_predict_writes_probabilities_and_metrics(cli, tiny_recipe, tmp_path):
    run = tmp_path / "run"
    assert cli("train", tiny_recipe, "--run-dir", run).exit_code == 0
    out = tmp_path / "preds.csv"
    res = cli("predict", run, "--split", "test", "--out", out)
    assert res.exit_code == 0, res.output
    rows = out.read_text().splitlines()
    assert rows[0].startswith("index,target,prediction,prob_0")
    assert len(rows) - 1 == 1797 // 5  # every 5th digit is test
    probs = [float(v) for v in rows[1].split(",")[3:]]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert "test_acc=" in res.stdout


def test_check_prints_resolved_recipe(cli, tiny_recipe):
    res = cli("check", tiny_recipe, "optimizer.lr=0.01")
    assert res.exit_code == 0
    data = yaml.safe_load(res.stdout)
    assert data["optimizer"]["lr"] == 0.01 and data["data"]["eval_batch_size"] == 512


def test_recipes_lists_shipped(cli):
    res = cli("recipes")
    assert res.exit_code == 0 and "quickstart" in res.stdout


@pytest.mark.parametrize("args, needle", [
    (["train", "{recipe}", "optimizer.lrr=1"], "did you mean `optimizer.lr`"),
    (["train", "{tmp}/missing.yaml"], "no recipe file"),
    (["predict", "{tmp}/nothing.pt"], "does not exist"),
    (["train", "{recipe}", "--run-dir", "/proc/nnrun-cannot-write"], "cannot write"),
])
def test_user_mistakes_exit_2_without_traceback(cli, tiny_recipe, tmp_path, args, needle):
    args = [a.format(recipe=tiny_recipe, tmp=tmp_path) for a in args]
    res = cli(*args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and "Traceback" not in res.output


def test_corrupt_checkpoint_is_a_clean_error(cli, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    res = cli("predict", bad)
    assert res.exit_code == 2 and "corrupt" in res.stderr


def test_unsafe_pickle_is_refused_and_not_executed(cli, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    torch.save({"format": "nnrun-checkpoint", "x": Evil()}, bad)
    res = cli("predict", bad)
    assert res.exit_code == 2 and "safely" in res.stderr
    assert not marker.exists()


def test_help_does_not_import_torch():
    code = "import sys; from nnrun.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n" \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_missing_data_folder_is_a_clean_error(cli, tmp_path):
    res = cli("train", "mnist-mlp", f"data.path={tmp_path}/nowhere")
    assert res.exit_code == 2 and "nowhere" in res.stderr and "Traceback" not in res.output


def test_truncated_mnist_file_is_named(cli, tmp_path):
    import gzip

    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, magic, dims in [("train-images-idx3-ubyte", 2051, (5, 28, 28)), ("train-labels-idx1-ubyte", 2049, (5,))]:
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
        with gzip.open(folder / f"{name}.gz", "wb") as f:
            f.write(header + bytes(10))  # far fewer bytes than declared
    res = cli("train", "mnist-mlp", f"data.path={folder}")
    assert res.exit_code == 2 and "truncated" in res.stderr and "train-images-idx3-ubyte" in res.stderr


def test_histograms_when_asked(cli, tiny_recipe, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert cli("train", tiny_recipe, "--run-dir", run, "log.histograms_every=10", "train.epochs=1").exit_code == 0
    acc = EventAccumulator(str(run / "tb"), size_guidance={"histograms": 0})
    acc.Reload()
    tags = acc.Tags()["histograms"]
    assert "weights/head.weight" in tags and "grads/head.weight" in tags


def test_early_stopping_carries_its_reason(tiny_recipe, tmp_path):
    # every weight frozen: the validation loss never improves after the first evaluation (a tiny rate
    # would still improve it in the last bits, which float64 evaluation sums see); patience 1 stops
    r = recipe_io.load(tiny_recipe, ["train.epochs=30", "train.patience=1", "train.monitor=val_loss",
                                     "model.freeze=['*']"])
    res = train_wf.run(r, run_dir=tmp_path / "run", handle_signals=False)
    assert res.stop_reason.startswith("early stopping: val_loss did not improve for 1 evaluations")
    assert len(res.history) < 30


def test_regression_from_npz_end_to_end(cli, tmp_path, write_recipe):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0], dtype="float32")).astype("float32")
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    path = write_recipe("""\
        data: {source: npz, path: reg.npz, batch_size: 32}
        model: {hidden: [32]}
        optimizer: {lr: 1e-2}
        train: {epochs: 15, loss: mse}
        log: {progress: none, tensorboard: false}
        """)
    run = tmp_path / "run"
    res = cli("train", path, "--run-dir", run)
    assert res.exit_code == 0, res.output
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_mae", "val_rmse"} <= last.keys() and "val_acc" not in last
    assert last["val_rmse"] < 0.5 * float(np.std(y))  # learnt the linear map well beyond the mean
    out = tmp_path / "p.csv"
    assert cli("predict", run, "--out", out).exit_code == 0
    assert out.read_text().splitlines()[0] == "index,target_0,prediction_0"


@pytest.mark.parametrize("overrides", [
    ["model.arch=cnn", "model.channels=[8]", "model.head_hidden=16", "model.norm=group", "model.groups=4"],
    ["model.arch=resnet", "model.depth=8", "model.width=4", "model.norm=batch"],
    ["init.weights=lsuv", "model.norm=layer"],
])
def test_architectures_train_on_digits(tiny_recipe, tmp_path, overrides):
    # One epoch of all 1,294 training digits (21 steps): each architecture gets below chance (ln 10 = 2.303);
    # on 240 digits (4 steps) the ResNet was still at 2.48.
    r = recipe_io.load(tiny_recipe, ["train.epochs=1", *overrides])
    res = train_wf.run(r, run_dir=tmp_path / "run", handle_signals=False)
    assert res.steps > 0 and res.last_checkpoint.is_file()
    val_loss = res.history[-1]["val_loss"]
    assert math.isfinite(val_loss) and val_loss < 2.3, val_loss  # learnt something, did not diverge


@pytest.mark.slow
def test_quickstart_reaches_95_percent(cli, tmp_path):
    res = cli("train", "quickstart", "--run-dir", tmp_path / "run", "log.progress=none")
    assert res.exit_code == 0, res.output
    best = max(json.loads(x)["val_acc"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    assert best >= 0.95


def test_train_threads_apply_during_the_run_only(tiny_recipe, tmp_path):
    seen = []

    class Threads(Callback):
        def on_fit_start(self, trainer):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    r = recipe_io.load(tiny_recipe, ["train.threads=1", "train.epochs=1"])
    train_wf.run(r, run_dir=tmp_path / "run", callbacks=[Threads()], handle_signals=False)
    assert seen == [1] and torch.get_num_threads() == before
