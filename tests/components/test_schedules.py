"""Schedules (nnrun/components/schedules.py) against closed forms and PyTorch's reference schedulers;
warmup, final decay, plateau, momentum; validation of misfit schedules; resume mid-cycle; `nnrun schedule`.
Parameter groups are in test_optim.py, freezing in test_freeze.py."""

from __future__ import annotations

import math

import pytest
import torch

from nnrun import checkpoint
from nnrun import recipe as recipe_io
from nnrun.components.schedules import build_schedule
from nnrun.errors import RecipeError
from nnrun.recipe.schema import MomentumScheduleConfig, PlateauConfig, ScheduleConfig
from nnrun.training.callbacks import Callback
from nnrun.workflows import train as train_wf


def sched(steps_per_epoch=10, total=100, lr=1.0, **kw):
    plateau = kw.pop("on_plateau", None)
    momentum = kw.pop("momentum", None)
    cfg = ScheduleConfig(**kw, on_plateau=plateau)
    return build_schedule(cfg, steps_per_epoch=steps_per_epoch, total_steps=total, lr=lr, monitor_mode="min",
                          momentum=momentum)


def torch_lrs(make, steps, lr=1.0, per_step=True, momentum=0.0):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr, momentum=momentum)
    s = make(opt)
    out, moms = [], []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        s.step()
    return out, moms


def test_step_and_multistep_match_closed_form():
    s = sched(name="step", step_size=3, gamma=0.5)
    assert [s.rate(e * 10) for e in range(8)] == [0.5 ** (e // 3) for e in range(8)]
    assert s.rate(29) == 1.0 and s.rate(30) == 0.5  # changes exactly at the boundary of epoch 3
    m = sched(name="multistep", milestones=[2, 5], gamma=0.1)
    assert [round(m.rate(e * 10), 12) for e in range(7)] == [1, 1, 0.1, 0.1, 0.1, 0.01, 0.01]


def test_exponential_and_inverse_time_closed_forms():
    e = sched(name="exponential", k=0.3, lr=0.2)
    i = sched(name="inverse_time", k=0.3, lr=0.2)
    for step in (0, 7, 35, 99):
        t = step / 10
        assert e.rate(step) == pytest.approx(0.2 * math.exp(-0.3 * t))
        assert i.rate(step) == pytest.approx(0.2 / (1 + 0.3 * t))


def test_cosine_reaches_min_and_does_not_rise_again():
    s = sched(name="cosine", min_lr=0.01, total=100)
    assert s.rate(0) == 1.0
    assert s.rate(50) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s.rate(100) == pytest.approx(0.01) and s.rate(150) == pytest.approx(0.01)


def test_sgdr_per_epoch_values_and_restarts():
    s = sched(name="sgdr", cycle_len=2, cycle_mult=2, steps_per_epoch=1, total=14)
    expected = [1, 0.5, 1, 0.854, 0.5, 0.146, 1]  # algorithms.md, torch CosineAnnealingWarmRestarts
    assert [round(s.rate(t), 3) for t in range(7)] == expected


def test_sgdr_matches_torch_warm_restarts_per_batch():
    spe, epochs = 5, 14
    s = sched(name="sgdr", cycle_len=2, cycle_mult=2, min_lr=0.01, steps_per_epoch=spe, total=spe * epochs)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=2, T_mult=2, eta_min=0.01)
    for step in range(spe * epochs):
        ref.step(step / spe)
        assert s.rate(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9), step


def test_sgdr_cycle_decay_lowers_each_peak():
    s = sched(name="sgdr", cycle_len=2, cycle_decay=0.5, steps_per_epoch=1, total=6)
    assert [s.rate(t) for t in (0, 2, 4)] == [1.0, 0.5, 0.25]


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_matches_torch_cyclic_lr(mode):
    kw = {"gamma": 0.999} if mode == "exp_range" else {}
    s = sched(name="cyclic", unit="steps", step_size=7, base_lr=0.1, max_lr=1.0, mode=mode, total=60, **kw)
    ref, _ = torch_lrs(lambda o: torch.optim.lr_scheduler.CyclicLR(
        o, base_lr=0.1, max_lr=1.0, step_size_up=7, mode=mode, gamma=kw.get("gamma", 1.0),
        cycle_momentum=False), 60)
    assert [s.rate(t) for t in range(60)] == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("how", ["cos", "linear"])
def test_one_cycle_matches_torch_including_momentum(how):
    total = 50
    s = sched(name="one_cycle", max_lr=0.5, pct_start=0.3, anneal=how, total=total, lr=0.5)
    lrs, moms = torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.5, total_steps=total, pct_start=0.3, anneal_strategy=how), total, momentum=0.9)
    assert [s.rate(t) for t in range(total)] == pytest.approx(lrs, rel=1e-9)
    assert [s.momentum_at(t) for t in range(total)] == pytest.approx(moms, rel=1e-9)


def test_warmup_then_cosine_clock_starts_after_warmup():
    s = sched(name="cosine", warmup=2, warmup_start=0.1, total=100)  # 20 warmup steps
    assert s.rate(0) == pytest.approx(0.1)
    assert s.rate(10) == pytest.approx(0.1 + 0.9 * 10 / 20)
    assert s.rate(20) == pytest.approx(1.0)  # the cosine starts at its peak after warmup
    assert s.rate(60) == pytest.approx(0.5)  # halfway through the 80 cosine steps
    assert s.rate(100) == pytest.approx(0.0, abs=1e-12)


def test_final_decay_goes_linearly_to_the_floor():
    s = sched(name="constant", final_decay=0.2, final_lr=0.1, total=100)
    assert s.rate(79) == 1.0 and s.rate(80) == 1.0
    assert s.rate(90) == pytest.approx(0.55)
    assert s.rate(99) == pytest.approx(1.0 + (0.1 - 1.0) * 19 / 20)


def test_plateau_matches_torch_reduce_on_plateau():
    metrics = [1.0, 0.9, 0.95, 0.92, 0.91, 0.93, 0.94, 0.89, 0.9, 0.9, 0.9, 0.9, 0.9]
    cfg = PlateauConfig(factor=0.5, patience=2, cooldown=1, min_lr=0.2)
    s = sched(name="constant", on_plateau=cfg)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=1, min_lr=0.2)
    for m in metrics:
        s.observe(m)
        ref.step(m)
        assert s.rate(0) == pytest.approx(opt.param_groups[0]["lr"])
    assert s.plateau.cuts >= 2


def test_plateau_scales_any_schedule():
    s = sched(name="cosine", on_plateau=PlateauConfig(factor=0.1, patience=0))
    before = s.rate(30)
    s.observe(1.0)
    s.observe(2.0)  # worse: patience 0 -> cut
    assert s.rate(30) == pytest.approx(before * 0.1)


def test_momentum_schedule_ramps_then_holds():
    s = sched(name="constant", momentum=MomentumScheduleConfig(start=0.5, end=0.99, epochs=2))
    assert s.momentum_at(0) == 0.5 and s.momentum_at(10) == pytest.approx(0.745)
    assert s.momentum_at(20) == pytest.approx(0.99) and s.momentum_at(90) == pytest.approx(0.99)


def test_state_round_trip_of_the_plateau():
    a = sched(name="plateau", on_plateau=PlateauConfig(patience=0, factor=0.5))
    for m in (1.0, 2.0, 3.0):
        a.observe(m)
    b = sched(name="plateau", on_plateau=PlateauConfig(patience=0, factor=0.5))
    b.load_state_dict(a.state_dict())
    assert b.rate(0) == a.rate(0) == 0.25


# ---------------------------------------------------------------------------------------------
# recipe validation


def test_sgdr_that_does_not_end_on_a_cycle_is_refused(tiny_recipe):
    with pytest.raises(RecipeError) as info:
        recipe_io.load(tiny_recipe, ["schedule.name=sgdr", "schedule.cycle_len=2", "schedule.cycle_mult=2",
                                     "train.epochs=8"])
    text = str(info.value)
    assert "2 cycle(s) complete by epoch 6" in text and "(epochs: 6 or 14)" in text


def test_one_cycle_with_momentum_schedule_is_refused(tiny_recipe):
    with pytest.raises(RecipeError, match="one_cycle already cycles momentum"):
        recipe_io.load(tiny_recipe, ["schedule.name=one_cycle", "optimizer.momentum_schedule={epochs: 1}"])


# ---------------------------------------------------------------------------------------------
# in the loop: resume mid-cycle, the schedule command

TB_ON = "log.tensorboard=true"  # these runs have always written TensorBoard too; train_tiny turns it off


def test_resume_mid_cycle_gives_the_same_curve_and_weights(tiny_recipe, tmp_path, train_tiny):
    overrides = ["train.epochs=3.5", "schedule.name=sgdr", "schedule.cycle_len=1", "schedule.cycle_mult=1",
                 "schedule.warmup=0.5", "schedule.on_plateau={patience: 0, factor: 0.5}",
                 "optimizer.momentum_schedule={start: 0.8, end: 0.95, epochs: 2}"]
    full = train_tiny([TB_ON, *overrides], name="full")

    class Stop(Callback):
        def on_step_end(self, trainer):
            if trainer.state.step == 60:
                trainer.request_stop(train_wf.INTERRUPTED)

    train_tiny([TB_ON, *overrides], name="part", callbacks=[Stop()])
    resumed = train_wf.run(recipe_io.load(tiny_recipe, overrides), resume=tmp_path / "part", handle_signals=False)
    assert [h["lr/default"] for h in resumed.history] == [h["lr/default"] for h in full.history]
    assert [h.get("lr_cut") for h in resumed.history] == [h.get("lr_cut") for h in full.history]
    a, b = checkpoint.load(full.last_checkpoint)["model"], checkpoint.load(resumed.last_checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_command_draws_without_training(cli, tiny_recipe, tmp_path):
    png = tmp_path / "s.png"
    res = cli("schedule", tiny_recipe, "schedule.name=one_cycle", "--out", png)
    assert res.exit_code == 0, res.output
    assert "lr/default" in res.stderr and "momentum / beta1" in res.stderr
    assert png.stat().st_size > 1000 and not (tmp_path / "runs").exists()
    assert res.stdout.startswith("lr start=")
