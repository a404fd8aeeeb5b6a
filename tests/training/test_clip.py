"""Clip policies against hand-computed gradients, accumulation equivalence, fp16 loss scaling,
and the non-finite guard in each mode on a run built to diverge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nnrun import checkpoint
from nnrun import recipe as recipe_io
from nnrun.recipe.schema import ClipConfig
from nnrun.training.clip import Clipper
from nnrun.training.guard import NonFiniteGuard


def params_with_grads(*pairs):
    """[(name, weight, grad)] -> named parameters with the given gradients."""
    out = []
    for name, w, g in pairs:
        p = nn.Parameter(torch.tensor(w, dtype=torch.float32))
        p.grad = torch.tensor(g, dtype=torch.float32)
        out.append((name, p))
    return out


def test_global_norm_scales_all_gradients_together():
    named = params_with_grads(("a", [0.0, 0.0], [3.0, 0.0]), ("b", [0.0], [4.0]))
    res = Clipper(ClipConfig(policy="global_norm", max_norm=1.0), named)()
    assert float(res.before) == pytest.approx(5.0) and float(res.after) == pytest.approx(1.0, abs=1e-5)
    assert named[0][1].grad.tolist() == pytest.approx([0.6, 0.0], abs=1e-6)
    assert named[1][1].grad.tolist() == pytest.approx([0.8], abs=1e-6)
    assert bool(res.clipped)


def test_global_norm_leaves_small_gradients_alone():
    named = params_with_grads(("a", [0.0, 0.0], [0.3, 0.4]))
    res = Clipper(ClipConfig(policy="global_norm", max_norm=1.0), named)()
    assert named[0][1].grad.tolist() == pytest.approx([0.3, 0.4]) and not bool(res.clipped)


def test_per_param_norm_clips_each_tensor_to_its_own_bound():
    named = params_with_grads(("w", [0.0, 0.0], [3.0, 4.0]), ("b", [0.0], [0.5]), ("h", [0.0], [10.0]))
    Clipper(ClipConfig(policy="per_param_norm", max_norm=1.0), named, thresholds={"h": 2.0})()
    assert named[0][1].grad.tolist() == pytest.approx([0.6, 0.8], abs=1e-6)   # 5 -> 1
    assert named[1][1].grad.tolist() == pytest.approx([0.5])                  # under the bound
    assert named[2][1].grad.tolist() == pytest.approx([2.0], abs=1e-5)        # its group's bound


def test_value_clamps_elementwise():
    named = params_with_grads(("w", [0.0, 0.0, 0.0], [-3.0, 0.2, 5.0]))
    Clipper(ClipConfig(policy="value", value=1.0), named)()
    assert named[0][1].grad.tolist() == pytest.approx([-1.0, 0.2, 1.0])


def test_agc_is_unit_wise_and_skips_the_head():
    # row 0: ||W|| = 5, bound 0.1*5 = 0.5 < ||G|| = 1 -> scaled to 0.5; row 1: ||W|| = 0 -> eps 1e-3 floor
    named = params_with_grads(("body.w", [[3.0, 4.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]),
                              ("head.weight", [[1.0, 0.0]], [[50.0, 0.0]]))
    res = Clipper(ClipConfig(policy="agc", clipping=0.1, eps=1e-3), named)()
    assert torch.allclose(named[0][1].grad, torch.tensor([[0.5, 0.0], [0.0, 1e-4]]), atol=1e-7)
    assert named[1][1].grad.tolist() == [[50.0, 0.0]]
    direct = torch.cat([p.grad.flatten() for _, p in named]).norm()
    assert float(res.after) == pytest.approx(float(direct), rel=1e-5) and bool(res.clipped)


def test_autoclip_uses_the_percentile_of_the_history_including_now():
    named = params_with_grads(("w", [0.0], [0.0]))
    clipper = Clipper(ClipConfig(policy="autoclip", percentile=25.0, window=8), named)
    history = []
    for value in [4.0, 1.0, 3.0, 10.0, 2.0, 6.0]:
        named[0][1].grad = torch.tensor([value])
        history.append(value)
        res = clipper()
        expected = min(1.0, float(np.percentile(history, 25)) / (value + 1e-6)) * value
        assert float(res.after) == pytest.approx(expected, rel=1e-5)


def test_autoclip_history_is_a_bounded_ring_that_round_trips():
    named = params_with_grads(("w", [0.0], [0.0]))
    clipper = Clipper(ClipConfig(policy="autoclip", percentile=50.0, window=3), named)
    for value in [1.0, 2.0, 3.0, 100.0, 100.0]:
        named[0][1].grad = torch.tensor([value])
        clipper()
    again = Clipper(ClipConfig(policy="autoclip", percentile=50.0, window=3), named)
    again.load_state_dict(clipper.state_dict())
    assert sorted(again.history.tolist()) == [3.0, 100.0, 100.0] and int(again.count) == 5


def test_a_nonfinite_norm_never_scales_gradients_to_nan():
    named = params_with_grads(("w", [0.0, 0.0], [float("inf"), 1.0]))
    Clipper(ClipConfig(policy="global_norm", max_norm=1.0), named)()
    assert named[0][1].grad.tolist()[1] == 1.0  # untouched; the guard skips this step instead


# ---------------------------------------------------------------------------------------------
# accumulation, precision

SMALL = "data.limit=640"  # the first 640 digits: 512 train, 128 val


def weights(result):
    return checkpoint.load(result.last_checkpoint)["model"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_accumulation_equals_the_large_batch(train_tiny, optimizer):
    common = ["train.epochs=1", "model.dropout=0.0", f"optimizer.name={optimizer}", "optimizer.lr=0.05"]
    small = train_tiny([SMALL, *common, "data.batch_size=16", "clip.accumulate=4"], "small")
    big = train_tiny([SMALL, *common, "data.batch_size=64"], "big")
    assert small.steps == big.steps  # schedules count optimizer steps
    a, b = weights(small), weights(big)
    # SGD is linear in the gradient: equal to float rounding. Adam divides by sqrt(v), which
    # amplifies the rounding of a differently ordered sum a little.
    tol = {"sgd": dict(atol=2e-6), "adam": dict(rtol=1e-4, atol=1e-5)}[optimizer]
    for key in a:
        assert torch.allclose(a[key], b[key], **tol), key


def test_partial_accumulation_at_the_end_of_an_epoch_is_weighted(train_tiny):
    # 512 training examples in batches of 48: 11 micro-batches, the last of 32; accumulate 3 ->
    # 4 steps, the last over 2 micro-batches (80 examples). Same as batch 144 with a last of 80.
    common = ["train.epochs=1", "model.dropout=0.0", "optimizer.name=sgd", "optimizer.lr=0.1"]
    small = train_tiny([SMALL, *common, "data.batch_size=48", "clip.accumulate=3"], "small")
    big = train_tiny([SMALL, *common, "data.batch_size=144"], "big")
    assert small.steps == big.steps == 4
    a, b = weights(small), weights(big)
    assert all(torch.allclose(a[k], b[k], atol=2e-6) for k in a)


def test_clipping_happens_once_per_step_on_the_accumulated_gradient(train_tiny):
    common = ["train.epochs=1", "model.dropout=0.0", "optimizer.name=sgd", "clip.policy=global_norm",
              "clip.max_norm=0.05"]
    small = train_tiny([SMALL, *common, "data.batch_size=16", "clip.accumulate=4"], "small")
    big = train_tiny([SMALL, *common, "data.batch_size=64"], "big")
    a, b = weights(small), weights(big)
    assert all(torch.allclose(a[k], b[k], atol=2e-6) for k in a)


def test_batchnorm_with_accumulation_is_warned_about(tiny_recipe):
    from nnrun.build import build

    c = build(recipe_io.load(tiny_recipe, ["model.norm=batch", "clip.accumulate=2"]), device=torch.device("cpu"))
    assert any("BatchNorm sees micro-batches of 64" in n for n in c.notes)


def test_fp16_overflowing_steps_are_skipped_and_the_scaler_adapts():
    from nnrun.training.stepper import make_stepper

    r = recipe_io.validate({"train": {"precision": "fp16"}}, source=recipe_io.Source("t"))
    model = nn.Sequential(nn.Linear(4, 3))
    nn.init.zeros_(model[0].weight), nn.init.zeros_(model[0].bias)  # uniform softmax: large, known gradients
    opt = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
    stepper = make_stepper(r, model, nn.CrossEntropyLoss(), opt, torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.full((8, 4), 10.0)  # finite logits, but gradients x 2**16 overflow fp16
    out = stepper.step([(x, torch.zeros(8, dtype=torch.long))], 0)
    assert bool(out.overflow) and not bool(out.nonfinite)  # the scaler skipped it; not a guard event
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert stepper.scaler.get_scale() == 2.0 ** 15  # backed off from 2**16
    opt.zero_grad()
    out = stepper.step([(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))], 1)
    assert not bool(out.overflow) and not torch.equal(before[0], model[0].weight)
    assert stepper.state_dict()["scaler"]["scale"] == 2.0 ** 15


def test_bf16_trains(train_tiny):
    res = train_tiny([SMALL, "train.precision=bf16", "train.epochs=1"])
    assert res.stop_reason == "finished" and math.isfinite(res.history[-1]["val_loss"])


CLIP_LOGGING = [SMALL, "log.tensorboard=true", "clip.policy=global_norm", "clip.max_norm=0.1",
                "clip.layer_norms_every=5", "train.epochs=1"]  # 8 steps


def tensorboard_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return acc


def test_per_step_clip_logging_reaches_tensorboard(train_tiny):
    res = train_tiny([*CLIP_LOGGING, "log.every_n_steps=4"])  # two whole log windows; see the xfail below
    acc = tensorboard_scalars(res.run_dir)
    steps = [e.step for e in acc.Scalars("grad_norm")]
    assert steps == list(range(1, res.steps + 1))  # every step, not only every 4th
    after = [e.value for e in acc.Scalars("grad_norm/clipped")]
    assert len(after) == res.steps and max(after) <= 0.1 + 1e-4
    assert {"clip/fraction", "grad_norm/layer/head.weight"} <= set(acc.Tags()["scalars"])


def test_steps_after_the_last_log_window_reach_tensorboard(train_tiny):
    res = train_tiny(CLIP_LOGGING)  # log.every_n_steps 5: steps 6-8 end the epoch outside a whole window
    steps = [e.step for e in tensorboard_scalars(res.run_dir).Scalars("grad_norm")]
    assert steps == list(range(1, res.steps + 1))  # each step once, those after the last window too


# ---------------------------------------------------------------------------------------------
# the non-finite guard

DIVERGE = ["optimizer.name=sgd", "optimizer.lr=1e30", "optimizer.momentum=0", "train.epochs=2",
           "log.every_n_steps=2"]  # the first update overflows the weights


def test_stop_names_the_step_and_module_and_keeps_the_last_finite_checkpoint(train_tiny):
    res = train_tiny([SMALL, *DIVERGE])
    # The first update (step 0, counted from 0 in this message) leaves huge but finite weights; the next
    # forward pass overflows in the output layer, which the replay names.
    assert res.stop_reason.startswith("non-finite loss or gradient at step 1 (epoch 0): ")
    assert "forward: the output of head (Linear) became non-finite first" in res.stop_reason
    folder = res.run_dir / "checkpoints"
    assert res.diagnostic_checkpoint and res.diagnostic_checkpoint.is_file()
    for path in folder.glob("*.pt"):
        if not path.name.startswith("nonfinite"):
            assert checkpoint.weights_finite(checkpoint.load(path)), path.name


def test_skip_drops_updates_and_stops_after_k_in_a_row(train_tiny):
    res = train_tiny([SMALL, *DIVERGE, "train.on_nonfinite=skip", "train.max_skips=3"])
    assert "consecutive updates skipped" in res.stop_reason
    assert any("skipped" in e for e in res.events + [res.stop_reason])


def test_rollback_reloads_and_cuts_the_rate_until_it_trains(train_tiny):
    res = train_tiny([SMALL, *DIVERGE, "train.on_nonfinite=rollback", "train.rollback_factor=1e-32",
                      "train.max_rollbacks=3"])
    events = res.events
    assert any("rolled back" in e for e in events), events
    assert res.stop_reason == "finished" and math.isfinite(res.history[-1]["val_loss"])
    payload = checkpoint.load(res.last_checkpoint)
    assert payload["lr_scale"] <= 1e-32 and checkpoint.weights_finite(payload)


def test_rollback_gives_up_after_max_rollbacks(train_tiny):
    res = train_tiny([SMALL, *DIVERGE, "train.on_nonfinite=rollback", "train.rollback_factor=0.9",
                      "train.max_rollbacks=2"])
    assert "gave up after 2 rollback(s)" in res.stop_reason


def test_saver_never_rotates_in_nonfinite_weights(tmp_path):
    saver = checkpoint.CheckpointSaver(tmp_path, monitor="val_acc", mode="max", top_k=2)
    good = {"format": checkpoint.FORMAT, "step": 1, "model": {"w": torch.ones(2)}}
    bad = {"format": checkpoint.FORMAT, "step": 2, "model": {"w": torch.tensor([1.0, float("nan")])}}
    saver.save_ranked(good, epoch=1, step=1, value=0.5)
    saver.save_last(good)
    assert saver.save_ranked(bad, epoch=2, step=2, value=0.9) is None
    assert saver.save_last(bad).name == "nonfinite-step2.pt"
    assert checkpoint.weights_finite(torch.load(tmp_path / "last.pt", weights_only=True))


def test_guard_warns_on_a_gradient_norm_spike():
    guard = NonFiniteGuard("stop", torch.device("cpu"), explosion_factor=10.0)
    assert guard.poll([(st, 0.0, 1.0 + 0.01 * st) for st in range(20)]).explosion is None
    report = guard.poll([(20, 0.0, 50.0)])
    assert report.explosion and "50" in report.explosion and "step 20" in report.explosion
    assert report.bad_steps == 0


def test_guard_counts_on_the_host_and_latches_in_stop_mode():
    guard = NonFiniteGuard("stop", torch.device("cpu"))
    flags = [guard.skip(guard.flag(torch.tensor(v), None), st) for st, v in enumerate([1.0, float("nan"), 2.0])]
    assert flags == [False, True, True]  # after the first bad step nothing is applied
    report = guard.poll([])
    assert (report.bad_steps, report.first_bad_step, report.max_consecutive) == (1, 1, 1)
    skip = NonFiniteGuard("skip", torch.device("cpu"))
    flags = [skip.skip(skip.flag(torch.tensor(v), torch.tensor(n)), st)
             for st, (v, n) in enumerate([(1.0, 1.0), (1.0, float("inf")), (1.0, 1.0)])]
    assert flags == [False, True, False]  # a non-finite gradient with a finite loss counts too
