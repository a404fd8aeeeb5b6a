"""`nnrun lr-find`: the range test leaves nothing behind, stops on divergence and NaN, keeps group
ratios, its suggestion rules give known answers on synthetic curves, and the CLI writes what it
promises (including a recipe that trains)."""

from __future__ import annotations

import copy
import math
import random
import sys

import numpy as np
import pytest
import torch

from nnrun import recipe as recipe_io
from nnrun.build import build
from nnrun.tools.lr_find import (
    Curve,
    RangeTestSettings,
    Smoother,
    minimum,
    ramp,
    range_test,
    slide,
    steep,
    stop_reason,
    suggest,
    valley,
)
from nnrun.training.trainer import LoopSettings, Trainer
from nnrun.workflows import lr_find as lr_find_wf

NAN_MODEL = '''
import math
import torch
from torch import nn


class SqrtScaled(nn.Module):
    """Logits scaled by sqrt(scale): a large step pushes scale below 0 and the loss becomes NaN."""

    def __init__(self, input_shape, num_outputs):
        super().__init__()
        self.lin = nn.Linear(math.prod(input_shape), num_outputs)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.lin(x.flatten(1)) * torch.sqrt(self.scale)


def make(input_shape, num_outputs):
    return SqrtScaled(input_shape, num_outputs)
'''


def components(path, *overrides):
    return build(recipe_io.load(path, list(overrides)), device=torch.device("cpu"))


def assert_same_state(a, b):
    """Exact equality of nested state dicts (tensors compared bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


# ---------------------------------------------------------------------------------------------
# the range test on real components


def test_range_test_leaves_weights_optimizer_and_rng_exactly_as_they_were(tiny_recipe):
    c = components(tiny_recipe, "model.norm=batch")  # BatchNorm buffers and dropout's RNG both matter
    trainer = Trainer(c, LoopSettings(total_steps=1, log_every=1, eval_every=1, monitor="val_loss",
                                      mode="min", patience=None))
    trainer.train_step([next(iter(c.train_batches.epoch(0)))])  # Adam moments exist before the test
    c.optimizer.zero_grad(set_to_none=True)
    model_before = copy.deepcopy(c.model.state_dict())
    opt_before = copy.deepcopy(c.optimizer.state_dict())
    rng_before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    moved = []
    key = "net.0.weight" if "net.0.weight" in model_before else next(iter(model_before))
    curve = range_test(c, RangeTestSettings(steps=40, end=1.0),
                       on_step=lambda *a: moved.append(not torch.equal(c.model.state_dict()[key], model_before[key])))
    assert len(curve) == 40 and any(moved)  # it really trained in between
    assert_same_state(c.model.state_dict(), model_before)  # weights and BN running stats, num_batches_tracked
    assert_same_state(c.optimizer.state_dict(), opt_before)  # moments, step counts and lr
    assert torch.equal(torch.get_rng_state(), rng_before[0])
    assert random.getstate() == rng_before[1] and np.array_equal(np.random.get_state()[1], rng_before[2])
    assert all(p.grad is None for p in c.model.parameters())
    c.model.eval()
    next(c.model.modules()).training = True  # a mix of modes, e.g. a frozen BatchNorm kept in eval
    modes = [m.training for m in c.model.modules()]
    range_test(c, RangeTestSettings(steps=12, end=1e-2))
    assert [m.training for m in c.model.modules()] == modes  # every module's mode is put back too


def test_range_test_runs_across_epoch_boundaries(tiny_recipe):
    c = components(tiny_recipe)
    steps = 2 * len(c.train_batches) + 5
    curve = range_test(c, RangeTestSettings(steps=steps, end=1e-2))
    assert len(curve) == steps and curve.stop == "end"
    assert curve.lrs[0] == pytest.approx(1e-7) and curve.lrs[-1] == pytest.approx(1e-2)


def test_each_step_takes_the_recipes_accumulated_micro_batches(tiny_recipe, monkeypatch):
    sizes = []
    real = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, b, **kw: (sizes.append(len(b)), real(self, b, **kw))[1])
    c = components(tiny_recipe, "clip.accumulate=3")
    range_test(c, RangeTestSettings(steps=15, end=1e-2))
    assert sizes == [3] * 15


def test_group_ratios_are_kept_and_the_x_axis_is_the_base_rate(tiny_recipe):
    c = components(tiny_recipe)
    layers = [m for m in c.model.modules() if isinstance(m, torch.nn.Linear)]
    base = c.recipe.optimizer.lr
    c.optimizer = torch.optim.Adam([{"params": layers[0].parameters(), "lr": base},
                                    {"params": layers[1].parameters(), "lr": base / 10}])
    seen = []
    curve = range_test(c, RangeTestSettings(steps=30, end=1.0),
                       on_step=lambda i, lr, *_: seen.append((lr, [g["lr"] for g in c.optimizer.param_groups])))
    assert curve.group_ratios == pytest.approx([1.0, 0.1])
    for lr, (g0, g1) in seen:
        assert g0 == pytest.approx(lr, rel=1e-12) and g1 / g0 == pytest.approx(0.1, rel=1e-12)
    assert seen[-1][0] > 100 * seen[0][0]  # the rates really moved
    assert [g["lr"] for g in c.optimizer.param_groups] == [base, base / 10]  # and were put back


def test_divergence_stops_the_test_early(tiny_recipe):
    c = components(tiny_recipe, "model.norm=batch")
    curve = range_test(c, RangeTestSettings(steps=100, end=1e3))
    assert curve.stop == "diverged" and len(curve) < 90 and "exceeded 4x" in curve.message
    assert curve.smoothed[-1] > 4 * min(curve.smoothed[:-1])
    assert all(s <= 4 * min(curve.smoothed[:i + 1]) for i, s in enumerate(curve.smoothed[:-1]))
    c2 = components(tiny_recipe, "model.norm=batch")
    assert len(range_test(c2, RangeTestSettings(steps=100, end=1e3, diverge=1e300))) > len(curve)


def test_stop_rule_catches_non_finite_values_a_plain_comparison_misses():
    assert not (math.nan > 4 * 1.0)  # why `smoothed > k*best` alone never stops on NaN
    assert stop_reason(math.nan, math.nan, 1.0, 4.0) == "non-finite"
    assert stop_reason(math.inf, 2.0, 1.0, 4.0) == "non-finite"
    assert stop_reason(4.5, 4.1, 1.0, 4.0) == "diverged"
    assert stop_reason(3.0, 3.9, 1.0, 4.0) is None


def test_nan_loss_ends_cleanly_with_a_message(cli, tiny_recipe, tmp_path, monkeypatch):
    (tmp_path / "nanmodel.py").write_text(NAN_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    res = cli("lr-find", tiny_recipe, "model.arch=python", "model.factory=nanmodel:make", "model.hidden=[]",
              "model.dropout=0", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "non-finite (nan)" in res.stderr
    rows = (tmp_path / "out" / "lr_find.csv").read_text().splitlines()
    assert rows[-1].endswith("nan,nan") and len(rows) - 1 < 100
    nan_lr = float(rows[-1].split(",")[0])
    assert 0 < float(res.stdout) < nan_lr  # the suggestion comes from the finite part


def test_same_recipe_and_seed_give_the_same_curve(tiny_recipe, tmp_path):
    r = recipe_io.load(tiny_recipe, ["log.tensorboard=false"])
    settings = RangeTestSettings(steps=60)
    a = lr_find_wf.run(r, settings=settings, out_dir=tmp_path / "a").curve
    b = lr_find_wf.run(r, settings=settings, out_dir=tmp_path / "b").curve
    assert (a.lrs, a.losses, a.smoothed) == (b.lrs, b.losses, b.smoothed)
    other = lr_find_wf.run(recipe_io.load(tiny_recipe, ["seed=4", "log.tensorboard=false"]), settings=settings,
                           out_dir=tmp_path / "c").curve
    assert other.losses != a.losses


# ---------------------------------------------------------------------------------------------
# pure parts: ramp, smoothing, rules on synthetic curves with known answers


def test_ramps_hit_both_ends_and_space_as_promised():
    exp = ramp(RangeTestSettings(start=1e-6, end=1.0, steps=61))
    assert exp[0] == pytest.approx(1e-6) and exp[-1] == pytest.approx(1.0)
    assert np.allclose(exp[1:] / exp[:-1], 10 ** 0.1)  # ten steps per decade
    lin = ramp(RangeTestSettings(start=0.01, end=0.1, steps=10, mode="linear"))
    assert lin[0] == pytest.approx(0.01) and lin[-1] == pytest.approx(0.1) and np.allclose(np.diff(lin), 0.01)


def test_smoothing_is_a_bias_corrected_ema():
    s = Smoother(0.5)
    assert s.update(1.0) == pytest.approx(1.0)  # no pull towards 0 at the start
    assert s.update(3.0) == pytest.approx((0.5 * 0.5 * 1 + 0.5 * 3) / (1 - 0.25))
    c = Smoother(0.05)
    assert all(c.update(2.5) == pytest.approx(2.5) for _ in range(20))


def grid(n=100):
    x = np.linspace(-7, 1, n)
    return x, 10 ** x


def test_steep_finds_the_steepest_descent():
    x, lrs = grid()
    x0 = (x[40] + x[41]) / 2
    losses = 2 - np.tanh((x - x0) / 0.7) + np.exp(3 * (x - 0.5))
    lr, i = steep(lrs, losses)
    assert i == 40 and lr == lrs[40]


def test_minimum_is_the_lowest_point_over_ten():
    x, lrs = grid()
    lr, i = minimum(lrs, (x - x[70]) ** 2 + 1)
    assert i == 70 and lr == pytest.approx(lrs[70] / 10)


def test_valley_is_fastais_point_in_the_longest_descent():
    _, lrs = grid()
    losses = np.concatenate([np.linspace(2.0, 3.0, 20), np.linspace(2.9, 1.0, 60), np.linspace(1.1, 5.0, 20)])
    lr, i = valley(lrs, losses)
    # longest strictly decreasing run: 19 (the peak) .. 79, length 61 -> start 18, sec 20.33 -> 18 + 20 + 10
    assert i == 48 and lr == lrs[48]


def test_slide_walks_left_until_the_slopes_15_points_apart_agree():
    _, lrs = grid()
    i = np.arange(100)
    losses = 1.0 + np.where(i > 60, 0.005 * (i - 60) ** 2, 0.0)  # flat, then a parabola: slope 0.01·(i−60)
    lr, k = slide(lrs, losses)
    # slopes 15 apart differ by 0.15 on the parabola; they agree (< 0.005) once the left point is on
    # the flat part and the right one within half a step of its start: left index 45 or 46
    assert k in (45, 46) and lr == lrs[k]


def synthetic(losses, lrs=None, stop="end", steps=None, smooth=None):
    """A recorded curve; with `smooth` the smoothed values are the EMA, else the losses themselves."""
    losses = [float(v) for v in losses]
    lrs = list(lrs) if lrs is not None else list(np.geomspace(1e-7, 10, len(losses)))
    ema = Smoother(smooth or 0.05)
    smoothed = [ema.update(v) for v in losses] if smooth else losses
    return Curve(lrs, losses, smoothed, stop, "test curve", RangeTestSettings(steps=steps or len(losses),
                                                                             smooth=smooth or 0.05))


def typical(n=100):
    """Flat, a descent centred at 1e-3, a minimum at 1e-1, then divergence."""
    x, lrs = grid(n)
    return lrs, 2.3 - 1.5 * (np.tanh((x + 3) / 0.8) + 1) / 2 + 0.02 * np.exp(2.5 * (x + 1)) ** 2


def test_suggest_recommends_the_median_rule_and_reports_the_spread():
    lrs, losses = typical()
    s = suggest(synthetic(losses, lrs))
    assert s.refused is None and set(s.rules) == {"steep", "valley", "minimum", "slide"}
    voting = sorted([s.rules[k].lr for k in ("steep", "valley", "minimum")])
    assert s.lr == float(f"{voting[1]:.2g}")  # the middle one of the three
    assert s.spread_decades == pytest.approx(math.log10(voting[2] / voting[0]))
    assert 1e-4 < s.lr < 1e-2 and "median" in s.reason
    assert s.bounds["cyclic_base_lr"] == pytest.approx(s.bounds["cyclic_max_lr"] / 4, rel=0.05)
    assert s.bounds["cyclic_max_lr"] >= s.lr and not s.warnings


def test_suggest_refuses_too_few_points():
    lrs, losses = typical()
    s = suggest(synthetic(losses[:20], lrs[:20], stop="non-finite", steps=100))
    assert s.lr is None and "too few points" in s.refused and not s.rules


def test_suggest_refuses_a_flat_curve():
    s = suggest(synthetic(2.3 + 0.001 * np.sin(np.arange(100))))
    assert s.lr is None and "flat" in s.refused


def test_suggest_refuses_a_curve_that_only_rises():
    s = suggest(synthetic(np.linspace(1.0, 3.0, 100)))
    assert s.lr is None and "never falls" in s.refused


def test_suggest_warns_when_the_minimum_is_at_the_end_of_the_range():
    s = suggest(synthetic(np.linspace(3.0, 1.0, 100)))
    assert s.lr is not None and any("raise --end" in w for w in s.warnings)


def test_suggest_warns_on_a_noisy_curve():
    lrs, losses = typical()
    rng = np.random.default_rng(0)
    quiet = suggest(synthetic(losses + rng.normal(0, 0.05, len(losses)), lrs, smooth=0.05))
    assert quiet.lr is not None and not any("noisy" in w for w in quiet.warnings)
    noisy = suggest(synthetic(losses + rng.normal(0, 1.5, len(losses)), lrs, smooth=0.05))
    assert any("noisy" in w for w in noisy.warnings)


# ---------------------------------------------------------------------------------------------
# the command


def test_cli_writes_every_output_and_a_recipe_that_trains(cli, tiny_recipe, tmp_path):
    out, new = tmp_path / "out", tmp_path / "tuned.yaml"
    res = cli("lr-find", tiny_recipe, "model.norm=batch", "--out", out, "--write-recipe", new)
    assert res.exit_code == 0, res.output
    lr = float(res.stdout.strip())
    assert "lr-find summary" in res.stderr and "recommended" in res.stderr and "smoothed loss vs" in res.stderr
    lines = (out / "lr_find.csv").read_text().splitlines()
    assert lines[0] == "lr,loss,smoothed" and 10 < len(lines) <= 101
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "lr_find.json").is_file() and (out / "recipe.yaml").is_file()
    tuned = recipe_io.load(new)
    assert tuned.optimizer.lr == lr and tuned.model.norm == "batch" and tuned.seed == 3
    run = cli("train", new, "train.epochs=1", "--run-dir", tmp_path / "run")
    assert run.exit_code == 0, run.output


def test_tensorboard_holds_the_curve(tiny_recipe, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = recipe_io.load(tiny_recipe)
    res = lr_find_wf.run(r, settings=RangeTestSettings(steps=30), out_dir=tmp_path / "o")
    acc = EventAccumulator(str(res.files["tb"]))
    acc.Reload()
    assert {"lr_find/loss", "lr_find/smoothed", "lr_find/lr"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("lr_find/smoothed")) == len(res.curve)


def test_without_matplotlib_everything_else_still_works(cli, tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    res = cli("lr-find", tiny_recipe, "--out", tmp_path / "o", "--steps", "60")
    assert res.exit_code == 0, res.output
    assert "pip install 'nnrun[plot]'" in res.stderr and float(res.stdout) > 0
    assert (tmp_path / "o" / "lr_find.csv").is_file() and not (tmp_path / "o" / "lr_find.png").exists()


def test_only_the_main_process_writes_files(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    res = lr_find_wf.run(recipe_io.load(tiny_recipe), settings=RangeTestSettings(steps=30), out_dir=tmp_path / "o",
                         write_recipe_to=tmp_path / "n.yaml")
    assert not (tmp_path / "o").exists() and not (tmp_path / "n.yaml").exists() and len(res.curve) == 30


@pytest.mark.parametrize("args, message", [
    (["--start", "1", "--end", "0.1"], "must be larger than --start"),
    (["--smooth", "0"], "--smooth must be in (0, 1]"),
    (["optimizer.lrr=1"], "did you mean `optimizer.lr`"),
    (["--end", "1e-6"], "no learning rate suggested"),  # a flat curve: refuse, exit 2
])
def test_cli_user_mistakes_exit_2_with_one_message(cli, tiny_recipe, tmp_path, args, message):
    res = cli("lr-find", tiny_recipe, "--out", tmp_path / "o", "--steps", "40", *args)
    assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_no_recipe_written_without_a_suggestion(cli, tiny_recipe, tmp_path):
    res = cli("lr-find", tiny_recipe, "--out", tmp_path / "o", "--end", "1e-6", "--write-recipe", tmp_path / "n.yaml")
    assert res.exit_code == 2 and not (tmp_path / "n.yaml").exists() and "was not written" in res.stderr
