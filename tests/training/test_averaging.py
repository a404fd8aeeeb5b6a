"""Training-side ensembles: EMA and SWA formulas, SWA BatchNorm recomputation, snapshot members
at cycle ends, checkpoint members, seed ensembles, and exact resume with an EMA."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from nnrun import checkpoint
from nnrun import recipe as recipe_io
from nnrun.errors import RecipeError
from nnrun.training.averaging import WeightAverage
from nnrun.training.callbacks import Callback
from nnrun.workflows import train as train_wf


def set_weight(model, value):
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)


def test_ema_update_formula_with_and_without_warmup():
    model = nn.Linear(2, 1)
    ema = WeightAverage(model, "ema", decay=0.9, warmup=False)
    set_weight(model, 1.0)
    ema.update(model)  # the first update copies
    set_weight(model, 3.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 0.9 * 1.0 + 0.1 * 3.0))
    warm = WeightAverage(model, "ema", decay=0.9, warmup=True)
    set_weight(model, 1.0)
    warm.update(model)
    set_weight(model, 3.0)
    warm.update(model)  # n = 1: d = min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(warm.model.weight, torch.full((1, 2), d * 1.0 + (1 - d) * 3.0))


def test_swa_is_the_arithmetic_mean_and_keeps_integer_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    swa = WeightAverage(model, "swa")
    values = [1.0, 2.0, 6.0]
    for v in values:
        set_weight(model[0], v)
        model[1].num_batches_tracked.fill_(int(v))
        swa.update(model)
    assert torch.allclose(swa.model[0].weight, torch.full((2, 2), sum(values) / 3))
    assert swa.model[1].num_batches_tracked.dtype == torch.long and int(swa.model[1].num_batches_tracked) == 6


def test_swa_batchnorm_statistics_are_recomputed_on_training_data():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    swa = WeightAverage(model, "swa")
    swa.update(model)
    x = torch.randn(64, 3) * 5 + 2
    batches = [(x[:32], None), (x[32:], None)]
    assert swa.recompute_bn(batches, torch.device("cpu"))
    with torch.no_grad():
        expected = swa.model[0](x).mean(0)
    assert torch.allclose(swa.model[1].running_mean, expected, atol=1e-5)
    assert swa.model[1].momentum == 0.1 and not swa.model.training


def test_snapshot_members_land_at_cycle_ends(train_tiny):
    res = train_tiny(["train.epochs=6", "schedule.name=sgdr", "schedule.cycle_len=2",
                      "ensemble.strategy=snapshots"])
    spe = res.steps // 6
    members = sorted((res.run_dir / "checkpoints" / "members").glob("*.pt"))
    assert [checkpoint.load(p)["step"] for p in members] == [2 * spe, 4 * spe, 6 * spe]
    assert all("val_acc" in checkpoint.load(p)["metrics"] for p in members)


def test_snapshots_need_a_cyclic_schedule(tiny_recipe):
    with pytest.raises(RecipeError, match="snapshots are taken at the end of learning-rate cycles"):
        recipe_io.load(tiny_recipe, ["ensemble.strategy=snapshots"])


def test_checkpoint_members_every_n_epochs_survive_top_k(train_tiny):
    res = train_tiny(["train.epochs=4", "ensemble.strategy=checkpoints", "ensemble.every=2",
                      "train.save_top_k=1"])
    names = sorted(p.name for p in (res.run_dir / "checkpoints" / "members").glob("*.pt"))
    assert names == ["member-epoch002.pt", "member-epoch004.pt"]


def test_ema_is_evaluated_beside_the_raw_weights_and_resumes_exactly(tiny_recipe, tmp_path, train_tiny):
    overrides = ["train.epochs=2", "ensemble.strategy=ema", "ensemble.decay=0.95"]
    full = train_tiny(overrides, "full")
    assert {"ema_val_acc", "ema_val_loss"} <= full.history[-1].keys()
    payload = checkpoint.load(full.last_checkpoint)
    assert payload["ema"]["updates"] == full.steps

    class Stop(Callback):
        def on_step_end(self, trainer):
            if trainer.state.step == 25:
                trainer.request_stop(train_wf.INTERRUPTED)

    train_tiny(overrides, "part", callbacks=[Stop()])
    resumed = train_wf.run(recipe_io.load(tiny_recipe, ["log.tensorboard=false", *overrides]),
                           resume=tmp_path / "part", handle_signals=False)
    again = checkpoint.load(resumed.last_checkpoint)
    for key, value in payload["ema"]["state_dict"].items():
        assert torch.equal(value, again["ema"]["state_dict"][key]), key


def test_swa_averages_from_its_start_with_its_own_rate(train_tiny):
    res = train_tiny(["train.epochs=4", "ensemble.strategy=swa", "ensemble.swa_start=2",
                      "ensemble.swa_lr=1e-4", "model.norm=batch"])
    assert "swa_val_acc" not in res.history[1] and "swa_val_acc" in res.history[2]
    assert [h["lr/default"] for h in res.history] == [3e-3, 3e-3, 1e-4, 1e-4]
    ema = checkpoint.load(res.last_checkpoint)["ema"]
    assert ema["kind"] == "swa" and ema["updates"] == 2 and ema["bn_fresh"]


def test_seed_ensemble_shares_the_validation_split_and_feeds_nnrun_ensemble(cli, train_tiny):
    res = train_tiny(["train.epochs=1", "ensemble.seeds=2"])
    assert [m.run_dir.name for m in res.members] == ["seed-0", "seed-1"]
    recipes = [checkpoint.load(m.last_checkpoint)["recipe"] for m in res.members]
    assert [r["seed"] for r in recipes] == [3, 4] and {r["data"]["split_seed"] for r in recipes} == {3}
    out = cli("ensemble", res.run_dir)
    assert out.exit_code == 0, out.output
    assert "val_acc=" in out.stdout
    assert json.loads((res.run_dir / "seed-1" / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
