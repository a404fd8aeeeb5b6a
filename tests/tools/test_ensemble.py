"""`nnrun ensemble`: discovery, ranking, prediction averaging, compatibility checks, weight
averaging with BatchNorm recomputation, greedy soups, EMA weights and export, on real tiny runs
trained once per module on the built-in digits data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nnrun import checkpoint
from nnrun import recipe as recipe_io
from nnrun.tools.ensemble import members as ens
from nnrun.tools.ensemble.soups import SoupContext, average_state_dicts, evaluate_soup
from nnrun.workflows import ensemble as ens_wf
from nnrun.workflows import predict as predict_wf
from nnrun.workflows import train as train_wf

BASE = """\
seed: {seed}
data:
  source: {source}
  val_fraction: 0.2
  {extra}
model:
  arch: mlp
  hidden: [32]
  norm: {norm}
optimizer:
  lr: 3e-3
train:
  epochs: {epochs}
  save_top_k: {top_k}
  threads: 1
  {train_extra}
log:
  progress: none
  tensorboard: false
"""


def train_base_recipe(root: Path, name: str, *, seed=0, norm="none", epochs=2, top_k=2, source="digits",
                      extra="", train_extra="") -> Path:
    """BASE filled in, written to `root/<name>.yaml` and trained into `root/<name>`. A plain function, not
    train_tiny: the module-scoped `runs` fixture cannot use function-scoped fixtures."""
    recipe = root / f"{name}.yaml"
    recipe.write_text(BASE.format(seed=seed, norm=norm, epochs=epochs, top_k=top_k, source=source, extra=extra,
                                  train_extra=train_extra))
    train_wf.run(recipe_io.load(recipe), run_dir=root / name, handle_signals=False)
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A study of 3 seeds, a BatchNorm run with 3 checkpoints, and two incompatible runs."""
    root = tmp_path_factory.mktemp("ens")
    study = root / "study"
    study.mkdir()
    seeds = [train_base_recipe(study, f"seed{s}", seed=s) for s in range(3)]
    bn = train_base_recipe(root, "bn", norm="batch", epochs=3, top_k=3)
    rng = np.random.default_rng(0)
    np.savez(root / "tab.npz", x=rng.normal(size=(200, 16)).astype("float32"), y=rng.integers(0, 10, 200))
    npz = train_base_recipe(root, "npz", source="npz", extra=f"path: {root / 'tab.npz'}", epochs=2, top_k=2)
    reg = train_base_recipe(root, "reg", extra="task: regression", train_extra="loss: mse", epochs=1, top_k=1)
    return {"root": root, "study": study, "seeds": seeds, "bn": bn, "npz": npz, "reg": reg}


def best_path(run: Path) -> Path:
    return ens.discover([run])[0].path


# ---------------------------------------------------------------------------------------------
# discovery and ranking


def test_discovery_from_files_run_folder_and_study(runs):
    study, seed0 = runs["study"], runs["seeds"][0]
    found = ens.discover([study])
    assert len(found) == 3 and {c.path.parent.parent.name for c in found} == {"seed0", "seed1", "seed2"}
    index = checkpoint_index(seed0)
    assert [c.path.name for c in ens.discover([seed0])] == [index["top_k"][0]["file"]]  # best only
    every = ens.discover([seed0], all_checkpoints=True)
    assert sorted(c.path.name for c in every) == sorted(e["file"] for e in index["top_k"])
    assert all(c.path.name != "last.pt" for c in every)
    files = [seed0 / "checkpoints" / "last.pt", seed0 / "checkpoints" / index["top_k"][1]["file"]]
    assert [c.path for c in ens.discover(files)] == files  # explicit files always count
    # A strategy member (a .pt under checkpoints/members/) makes a run contribute its members.
    copy = runs["root"] / "snap"
    shutil.copytree(seed0, copy)
    (copy / "checkpoints" / "members").mkdir()
    shutil.copy(copy / "checkpoints" / "last.pt", copy / "checkpoints" / "members" / "snapshot-01.pt")
    assert [c.path.name for c in ens.discover([copy])] == ["snapshot-01.pt"]
    # A top-k file the index does not list (a crash between save and index update, probe D12) is not a member.
    orphan = runs["root"] / "orphan"
    shutil.copytree(seed0, orphan)
    shutil.copy(orphan / "checkpoints" / "last.pt", orphan / "checkpoints" / "epoch009-val_acc=0.5000.pt")
    assert [c.path.name for c in ens.discover([orphan])] == [index["top_k"][0]["file"]]
    (runs["root"] / "empty").mkdir(exist_ok=True)
    with pytest.raises(ens.CheckpointError, match="no checkpoint"):
        ens.discover([runs["root"] / "empty"])


def checkpoint_index(run: Path) -> dict:
    import json

    return json.loads((run / "checkpoints" / "index.json").read_text())


def test_top_k_by_stored_metric(cli, runs):
    cands = ens.discover([runs["study"]])
    stored = {c.path: checkpoint_index(c.path.parent.parent)["top_k"][0]["value"] for c in cands}
    kept, by, values = ens.rank(cands, top_k=2)
    assert by == "val_acc" and len(kept) == 2
    assert values == sorted(stored.values(), reverse=True)[:2]
    assert all(c.payload is None for c in cands)  # ranked from index.json alone, no payload loaded
    kept, by, values = ens.rank(ens.discover([runs["study"]]), by="val_loss")
    assert values == sorted(values)  # a min metric ranks ascending (from the payloads' metrics)
    with pytest.raises(ens.NnrunError, match="unknown metric"):
        ens.rank(cands, by="val_accuracy")
    with pytest.raises(ens.NnrunError, match="no checkpoint stores `val_mae`"):
        ens.rank(cands, by="val_mae", top_k=2)
    res = cli("ensemble", runs["study"], "--split", "test", "--top-k", "2")
    assert res.exit_code == 0 and "ensemble of 2" in res.output


# ---------------------------------------------------------------------------------------------
# prediction averaging


def member_logits(paths, split="test"):
    return [predict_wf.run(p, split=split, device="cpu").outputs for p in paths]


def test_mean_is_the_average_of_member_probabilities(runs):
    result = ens_wf.run([runs["study"]], split="test", device="cpu")
    paths = [m.path for m in result.members]
    manual = sum(torch.softmax(x.double(), 1) for x in member_logits(paths)) / 3
    assert torch.allclose(torch.softmax(result.outputs.double(), 1), manual, atol=1e-6)
    acc = float((manual.argmax(1) == result.targets).double().mean())
    assert result.metrics["test_acc"] == pytest.approx(acc)
    for m, p in zip(result.members, paths):  # each member's metric is the one `nnrun predict` reports
        assert m.metrics["test_acc"] == pytest.approx(predict_wf.run(p, split="test").metrics["test_acc"])


def test_logits_mode_averages_logits(runs):
    result = ens_wf.run([runs["study"]], split="test", mode="logits")
    manual = sum(member_logits([m.path for m in result.members])) / 3
    assert torch.allclose(result.outputs, manual.float(), atol=1e-5)
    mean = ens_wf.run([runs["study"]], split="test", mode="mean")
    assert not torch.allclose(torch.softmax(result.outputs, 1), torch.softmax(mean.outputs, 1), atol=1e-4)


def test_vote_tie_goes_to_the_highest_mean_probability():
    # two members disagree on every example: 1 vote each, so the tie rule decides
    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.2, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    avg = ens.Averager("classification", "vote")
    avg.add(a)
    avg.add(b)
    _, winners = avg.result()
    assert winners.tolist() == [0, 2]  # the more confident member wins each tie
    votes = torch.tensor([[2, 1, 0], [1, 1, 1]])
    probs = torch.tensor([[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    assert ens.majority_vote(votes, probs).tolist() == [0, 2]  # a majority beats probability


def test_vote_mode_accuracy_is_the_majority_vote(runs):
    result = ens_wf.run([runs["study"]], split="test", mode="vote")
    logits = member_logits([m.path for m in result.members])
    votes = sum(torch.nn.functional.one_hot(x.argmax(1), 10) for x in logits)
    probs = sum(torch.softmax(x.double(), 1) for x in logits) / 3
    manual = ens.majority_vote(votes, probs)
    assert torch.equal(result.predictions, manual)
    assert result.metrics["test_acc"] == pytest.approx(float((manual == result.targets).double().mean()))


def test_out_writes_predictions_and_probabilities(cli, runs, tmp_path):
    out = tmp_path / "preds.csv"
    res = cli("ensemble", runs["study"], "--split", "test", "--mode", "vote", "--out", out)
    assert res.exit_code == 0, res.output
    rows = out.read_text().splitlines()
    assert rows[0].startswith("index,target,prediction,prob_0") and len(rows) - 1 == 359
    probs = [float(v) for v in rows[1].split(",")[3:]]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert "test_acc=" in res.stdout and "gain=" in res.stdout


def test_data_option_predicts_on_another_file(runs, tmp_path):
    rng = np.random.default_rng(1)
    other = tmp_path / "other.npz"
    np.savez(other, x=rng.normal(size=(120, 16)).astype("float32"), y=rng.integers(0, 10, 120))
    result = ens_wf.run([runs["npz"]], all_checkpoints=True, data_path=str(other))
    assert result.examples == 24 and len(result.members) == 2  # 20% of 120 carved with the seed
    default = ens_wf.run([runs["npz"]], all_checkpoints=True)
    assert default.examples == 40


def test_seed_ensemble_beats_the_mean_member(runs):
    # the ensembles evidence (python -m benchmarks.evidence ensembles) measures this at scale
    result = ens_wf.run([runs["study"]], split="test")
    members = [m.metrics["test_acc"] for m in result.members]
    assert result.metric == "test_acc"
    assert result.metrics["test_acc"] >= sum(members) / len(members)
    assert result.gain_over_mean == pytest.approx(result.metrics["test_acc"] - sum(members) / len(members))
    assert result.gain == pytest.approx(result.metrics["test_acc"] - max(members))


# ---------------------------------------------------------------------------------------------
# compatibility


@pytest.mark.parametrize("other,what", [("npz", "input_shape"), ("reg", "task")])
def test_incompatible_members_exit_2_naming_both(cli, runs, other, what):
    res = cli("ensemble", best_path(runs["seeds"][0]), best_path(runs[other]), "--split", "test")
    assert res.exit_code == 2
    assert "seed0" in res.output and other in res.output and what in res.output
    assert "Traceback" not in res.output


def test_different_validation_splits_are_refused_on_val(cli, runs):
    res = cli("ensemble", runs["study"])
    assert res.exit_code == 2
    assert "seed (of the validation split) differs" in res.output and "--split test" in res.output


def test_weights_mode_needs_the_same_architecture(cli, runs):
    res = cli("ensemble", best_path(runs["seeds"][0]), best_path(runs["bn"]), "--mode", "weights")
    assert res.exit_code == 2 and "architecture differs" in res.output and "model.norm" in res.output


def test_flags_that_need_weights_mode(cli, runs, tmp_path):
    res = cli("ensemble", runs["bn"], "--all", "--mode", "mean", "--greedy")
    assert res.exit_code == 2 and "--mode weights" in res.output
    assert cli("ensemble", runs["bn"], "--all", "--export", tmp_path / "a.pt").exit_code == 2
    res = cli("ensemble", runs["seeds"][0])
    assert res.exit_code == 2 and "at least 2 members" in res.output and "--all" in res.output


# ---------------------------------------------------------------------------------------------
# weight averaging


def test_average_of_identical_checkpoints_is_the_checkpoint(runs, tmp_path):
    path = best_path(runs["bn"])
    state = checkpoint.load(path)["model"]
    avg = average_state_dicts([state, state, state])
    assert avg.keys() == state.keys()
    assert all(torch.equal(avg[k], state[k]) and avg[k].dtype == state[k].dtype for k in state)
    copy = tmp_path / "copy.pt"
    shutil.copy(path, copy)
    result = ens_wf.run([path, copy], mode="weights")
    single = predict_wf.run(path).metrics
    assert result.weights.averaged_bn["val_acc"] == pytest.approx(single["val_acc"])


def test_weight_average_is_computed_in_float64_and_keeps_integer_buffers():
    states = [{"w": torch.tensor([1e8], dtype=torch.float32), "n": torch.tensor(3)},
              {"w": torch.tensor([1.0], dtype=torch.float32), "n": torch.tensor(5)},
              {"w": torch.tensor([-1e8], dtype=torch.float32), "n": torch.tensor(7)}]
    naive = (states[0]["w"] + states[1]["w"] + states[2]["w"]) / 3  # float32 loses the 1
    assert naive.item() == 0.0
    avg = average_state_dicts(states)
    assert avg["w"].dtype == torch.float32 and avg["w"].item() == pytest.approx(1 / 3)
    assert avg["n"].dtype == torch.int64 and avg["n"].item() == 3  # integer buffer: the first member's
    a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
    assert torch.equal(average_state_dicts([a, b])["w"], torch.tensor([2.0, 4.0]))


def test_bn_recomputation_is_measured_both_ways(cli, runs, tmp_path):
    """Averaging with a checkpoint whose BN statistics are off hurts unless they are recomputed."""
    path = best_path(runs["bn"])
    payload = checkpoint.load(path)
    payload.pop("path")
    for k in payload["model"]:
        if k.endswith("running_mean"):
            payload["model"][k] = payload["model"][k] + 4.0
        elif k.endswith("running_var"):
            payload["model"][k] = payload["model"][k] * 30.0
    stale = tmp_path / "stale.pt"
    checkpoint.save_atomic(payload, stale)
    result = ens_wf.run([path, stale], mode="weights")
    w = result.weights
    assert w.recomputed_bn["val_acc"] > w.averaged_bn["val_acc"] + 0.05
    assert w.bn == "recomputed" and result.metrics["val_acc"] == pytest.approx(w.recomputed_bn["val_acc"])
    assert result.members[0].metrics["val_acc"] > result.members[1].metrics["val_acc"]  # stale stats hurt
    dtype = checkpoint.load(path)["model"]["body.2.num_batches_tracked"].dtype
    res = cli("ensemble", path, stale, "--mode", "weights", "--export", tmp_path / "x.pt")
    assert res.exit_code == 0 and "averaged val_acc=" in res.output and "kept: recomputed" in res.output
    assert checkpoint.load(tmp_path / "x.pt")["model"]["body.2.num_batches_tracked"].dtype == dtype


def test_averaged_bn_statistics_kept_when_recomputing_hurts(runs):
    """Recompute on misleading 'training' batches: the averaged statistics win and are kept."""
    members = ens.load_members(ens.discover([runs["bn"]], all_checkpoints=True)[:2], [None, None])
    first = members[0]
    cache = ens_wf.SplitCache("val", None)
    val, bundle = cache.get(first)

    class Shifted:
        def epoch(self, epoch):
            for i in range(0, 512, 64):
                yield bundle.train.x[i:i + 64] * 5.0 + 3.0, bundle.train.y[i:i + 64]

    ctx = SoupContext(model=first.build("cpu"), val=val, train_batches=Shifted(),
                      loss_fn=torch.nn.CrossEntropyLoss(), task="classification", device=torch.device("cpu"),
                      metric="val_acc", mode="max", batch_size=512)
    state = average_state_dicts([m.state_dict for m in members])
    soup = evaluate_soup(state, ctx)
    assert soup.recomputed_bn["val_acc"] < soup.averaged_bn["val_acc"]
    assert soup.bn == "averaged" and soup.metrics == soup.averaged_bn
    assert all(torch.equal(soup.state_dict[k], state[k]) for k in state)


def test_export_loads_in_nnrun_predict(cli, runs, tmp_path):
    out = tmp_path / "averaged.pt"
    result = ens_wf.run([runs["bn"]], all_checkpoints=True, mode="weights", export=out)
    assert result.export == out
    payload = checkpoint.load(out)
    assert payload["ensemble"]["mode"] == "uniform-average" and len(payload["ensemble"]["members"]) == 3
    assert payload["metrics"]["val_acc"] == pytest.approx(result.metrics["val_acc"])
    res = cli("predict", out)
    assert res.exit_code == 0, res.output
    assert f"val_acc={result.metrics['val_acc']:.4f}" in res.stdout
    assert set(checkpoint.load(best_path(runs["bn"]))) <= set(payload) | {"path"}


def test_greedy_soup_adds_only_improving_members(runs, tmp_path):
    # a junk member (all weights zero: uniform predictions) must never enter the soup
    payload = checkpoint.load(best_path(runs["bn"]))
    payload.pop("path")
    payload["model"] = {k: (v * 0 if v.is_floating_point() else v) for k, v in payload["model"].items()}
    junk = tmp_path / "junk.pt"
    checkpoint.save_atomic(payload, junk)
    result = ens_wf.run([runs["bn"], junk], all_checkpoints=True, greedy=True, mode="weights")
    steps = result.weights.steps
    assert steps[0].kept and len(steps) == 4
    current = steps[0].value
    for step in steps[1:]:
        assert step.kept == (step.value > current)  # strict improvement only
        current = step.value if step.kept else current
    assert [m.in_soup for m in result.members if m.path == junk] == [False]
    assert result.metrics["val_acc"] == pytest.approx(current)
    uniform = ens_wf.run([runs["bn"], junk], all_checkpoints=True, mode="weights")
    assert result.metrics["val_acc"] >= uniform.metrics["val_acc"]


# ---------------------------------------------------------------------------------------------
# EMA weights


def test_ema_weights_are_used_when_present(cli, runs, tmp_path):
    index = checkpoint_index(runs["seeds"][0])
    s0, other_path = (runs["seeds"][0] / "checkpoints" / e["file"] for e in index["top_k"][:2])
    payload = checkpoint.load(s0)
    payload.pop("path")
    other = checkpoint.load(other_path)["model"]  # EMA weights: those of the run's other checkpoint
    payload["ema"] = {"state_dict": {f"module.{k}": v for k, v in other.items()} | {"n_averaged": torch.tensor(9)},
                      "decay": 0.999, "updates": 10}
    with_ema = tmp_path / "with_ema.pt"
    checkpoint.save_atomic(payload, with_ema)
    members = ens.load_members([ens.Candidate(with_ema)], [None])
    assert members[0].weights == "ema" and members[0].state_dict.keys() == other.keys()
    assert all(torch.equal(members[0].state_dict[k], other[k]) for k in other)
    result = ens_wf.run([with_ema, other_path])
    a, b = result.members
    assert a.weights == "ema" and b.weights == "raw"
    assert a.metrics == b.metrics  # the EMA weights predict exactly like the checkpoint they came from
    raw = ens_wf.run([with_ema, other_path], use_ema=False)
    assert raw.members[0].weights == "raw"
    assert raw.members[0].metrics["val_acc"] == pytest.approx(predict_wf.run(s0).metrics["val_acc"])
    assert raw.members[0].metrics != raw.members[1].metrics
    res = cli("ensemble", with_ema, other_path)
    assert res.exit_code == 0 and " ema " in res.output
    assert " ema " not in cli("ensemble", with_ema, other_path, "--no-ema").output
