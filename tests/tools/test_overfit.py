"""`nnrun overfit-one-batch`: each check catches a deliberately broken case built for it, and a
healthy recipe (the shipped quickstart) passes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nnrun import recipe as recipe_io
from nnrun.workflows import overfit

DIGITS_PYTHON_MODEL = """\
seed: 1
data:
  source: digits
  batch_size: 16
model:
  arch: python
  factory: "{module}:{factory}"
init:
  weights: default
optimizer:
  name: adam
  lr: 1e-2
log:
  progress: none
"""

FACTORIES = '''
import torch
from torch import nn


def mlp(n_in, num_outputs, *tail):
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 32), nn.ReLU(), nn.Linear(32, num_outputs), *tail)


def relu_head(input_shape, num_outputs):
    return mlp(64, num_outputs, nn.ReLU())


def softmax_head(input_shape, num_outputs):
    return mlp(64, num_outputs, nn.Softmax(dim=1))


def constant(input_shape, num_outputs):
    model = mlp(64, num_outputs)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.05)
    return model


class Detached(nn.Module):
    def __init__(self, num_outputs):
        super().__init__()
        self.hidden = nn.Linear(64, 64)
        self.out = nn.Linear(64, num_outputs)

    def forward(self, x):
        h = torch.relu(self.hidden(x.flatten(1))).detach()  # the bug: cuts `hidden` from the loss
        return self.out(h)


def detached(input_shape, num_outputs):
    return Detached(num_outputs)


def with_dropout(input_shape, num_outputs):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, num_outputs))
'''


def statuses(result) -> dict[str, str]:
    return {r.check: r.status for r in result.rows}


@pytest.fixture
def factories(tmp_path, monkeypatch, request):
    """A module of broken model factories on sys.path (a unique name per test)."""
    name = f"overfit_models_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def python_model_recipe(tmp_path, module, factory, *overrides):
    path = tmp_path / f"{factory}.yaml"
    path.write_text(DIGITS_PYTHON_MODEL.format(module=module, factory=factory))
    return recipe_io.load(path, [*overrides, f"log.run_dir={tmp_path / 'runs'}"])


# -- healthy ------------------------------------------------------------------------------------

def test_quickstart_passes_with_report_json_and_tensorboard(cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, report = tmp_path / "out", tmp_path / "report.json"
    res = cli("overfit-one-batch", "quickstart", "--steps", 300, "--out", out, "--json", report)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("PASS: memorized 32 example(s) at step")
    assert "overfit one batch" in res.stderr and "▁" in res.stderr  # table and loss curve on stderr
    data = json.loads(report.read_text())
    assert data["verdict"] == "PASS" and data["memorized_at"] <= 300
    checks = {c["check"]: c for c in data["checks"]}
    for name in ("overfit one batch", "settings", "labels", "input statistics", "output layer", "initial loss",
                 "symmetric init", "activation scale", "dead ReLUs", "saturation", "gradient norms",
                 "update/weight ratio", "params without gradient", "params missing from optimizer",
                 "first non-finite activation", "first non-finite gradient", "BatchNorm batch size", "loss trend"):
        assert name in checks, name
        assert {"status", "evidence", "advice"} <= checks[name].keys()
    assert not [c for c in data["checks"] if c["status"] in ("FAIL", "WARN")]
    assert json.loads((out / "report.json").read_text())["verdict"] == "PASS"
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == data["steps"]


def test_same_fixed_batch_and_regularizers_turned_off(tiny_recipe):
    s = overfit.setup(recipe_io.load(tiny_recipe, ["optimizer.weight_decay=1e-3"]), batch_size=8)
    assert s.changes == ["model.dropout 0.1 -> 0", "optimizer.weight_decay 0.001 -> 0"]
    assert not [m for m in s.components.model.modules() if isinstance(m, torch.nn.Dropout)]
    x, y = s.batch
    result = overfit.run_setup(s, steps=300, write=False)
    assert result.verdict == "PASS", result.summary
    off = "turned off: model.dropout 0.1 -> 0; optimizer.weight_decay 0.001 -> 0"
    assert off in result.row("settings").evidence
    assert s.batch[0] is x  # training and evaluation used this one batch
    assert result.final["correct"] == 8


def test_dropout_inside_a_python_model_is_turned_off(tmp_path, factories):
    s = overfit.setup(python_model_recipe(tmp_path, factories, "with_dropout"))
    assert s.changes == ["p -> 0 on 1 Dropout module(s) of the model"]
    assert s.components.model[3].p == 0.0


# -- broken cases --------------------------------------------------------------------------------

@pytest.mark.parametrize("factory", ["relu_head", "softmax_head"])
def test_activation_on_the_output_layer_fails(tmp_path, factories, factory):
    r = python_model_recipe(tmp_path, factories, factory)
    result = overfit.run(r, steps=5, write=False)
    row = result.row("output layer")
    assert row.status == "FAIL" and ("ReLU" in row.evidence or "Softmax" in row.evidence)
    assert "logits" in row.advice and result.exit_code == 1


def test_constant_init_is_symmetric_and_stays_so(tmp_path, factories):
    r = python_model_recipe(tmp_path, factories, "constant")
    result = overfit.run(r, steps=20, write=False)
    row = result.row("symmetric init")
    assert row.status == "FAIL" and "`1` (constant)" in row.evidence and "still identical after" in row.evidence
    assert result.verdict == "FAIL"


def test_raw_inputs_in_the_thousands_are_flagged(tmp_path, write_recipe):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32) * 1000
    np.savez(tmp_path / "raw.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    path = write_recipe("""\
        data: {source: npz, path: raw.npz, normalize: none, batch_size: 16}
        model: {hidden: [16]}
        log: {progress: none}
        """)
    result = overfit.run(recipe_io.load(path), steps=5, write=False)
    row = result.row("input statistics")
    assert row.status == "WARN" and "huge dynamic range" in row.evidence and "data.normalize: none" in row.evidence
    assert "data.normalize=standardize" in row.advice


def test_learning_rate_so_high_the_loss_turns_nan(cli, tmp_path):
    res = cli("overfit-one-batch", "quickstart", "optimizer.name=sgd", "optimizer.lr=1e6", "model.norm=none",
              "--steps", 50, "--out", tmp_path / "o", "--json", tmp_path / "r.json")
    assert res.exit_code == 1
    data = json.loads((tmp_path / "r.json").read_text())
    checks = {c["check"]: c for c in data["checks"]}
    act = checks["first non-finite activation"]
    assert act["status"] == "FAIL" and act["evidence"].startswith("step 3: `head` (Linear)")
    assert checks["first non-finite gradient"]["status"] == "FAIL"
    trend = checks["loss trend"]
    assert trend["status"] == "FAIL" and "optimizer.lr=100000 (x0.1)" in trend["advice"]
    assert "lr-find" in trend["advice"]
    assert data["loss_curve"][-1] is None  # NaN -> null: strict JSON


def test_gradient_norm_overflow_is_caught_before_the_weights_turn_nan():
    r = recipe_io.load("quickstart", ["optimizer.name=sgd", "optimizer.lr=100", "model.norm=none"])
    result = overfit.run(r, steps=50, write=False)
    row = result.row("first non-finite gradient")
    assert row.status == "FAIL" and "overflows" in row.evidence and result.row("loss trend").status == "FAIL"


def test_detached_layer_never_gets_a_gradient(tmp_path, factories):
    result = overfit.run(python_model_recipe(tmp_path, factories, "detached"), steps=10, write=False)
    row = result.row("params without gradient")
    assert row.status == "FAIL" and "`hidden.weight`" in row.evidence and "`out.weight`" not in row.evidence
    assert result.verdict == "FAIL"


def test_parameter_left_out_of_the_optimizer(tiny_recipe):
    s = overfit.setup(recipe_io.load(tiny_recipe), batch_size=8)
    model = s.components.model
    kept = [p for n, p in model.named_parameters() if n != "head.bias"]
    s.components.optimizer = torch.optim.Adam(kept, lr=3e-3)
    result = overfit.run_setup(s, steps=10, write=False)
    row = result.row("params missing from optimizer")
    assert row.status == "FAIL" and "`head.bias`" in row.evidence and result.exit_code == 1


def test_batchnorm_with_one_example_is_reported_not_crashed(cli, tmp_path):
    res = cli("overfit-one-batch", "quickstart", "--examples", 1, "--out", tmp_path / "o",
              "--json", tmp_path / "r.json")
    assert res.exit_code == 1, res.output
    data = json.loads((tmp_path / "r.json").read_text())
    bn = next(c for c in data["checks"] if c["check"] == "BatchNorm batch size")
    assert bn["status"] == "FAIL" and "batch of 1" in bn["evidence"] and "model.norm=group" in bn["advice"]
    assert data["verdict"] == "FAIL" and data["steps"] == 0


def test_small_batchnorm_batch_warns(tiny_recipe):
    result = overfit.run(recipe_io.load(tiny_recipe, ["model.norm=batch"]), batch_size=4, steps=3, write=False)
    assert result.row("BatchNorm batch size").status == "WARN"


def test_one_example_memorized_without_batchnorm(tiny_recipe):
    result = overfit.run(recipe_io.load(tiny_recipe), batch_size=1, steps=200, write=False)
    assert result.verdict == "PASS" and result.batch_size == 1
    assert result.row("labels").status == "INFO" and result.row("dead ReLUs").status == "INFO"


def test_labels_out_of_range_and_wrong_dtype(tiny_recipe):
    s = overfit.setup(recipe_io.load(tiny_recipe), batch_size=8)
    x, y = s.batch
    s.batch = (x, y.clone().index_fill_(0, torch.tensor([2]), 10))
    result = overfit.run_setup(s, steps=10, write=False)
    row = result.row("labels")
    assert row.status == "FAIL" and "outside 0..9" in row.evidence
    assert result.steps == 0 and result.verdict == "FAIL"  # not trained: cross-entropy would raise
    s.batch = (x, y.float())
    assert overfit.run_setup(s, steps=1, write=False).row("labels").status == "FAIL"


def test_the_data_layer_refuses_out_of_range_labels_in_files(tmp_path, write_recipe):
    from nnrun.errors import DataError

    np.savez(tmp_path / "d.npz", x=np.zeros((10, 3), np.float32), y=np.arange(10) % 2,
             x_test=np.zeros((2, 3), np.float32), y_test=np.array([0, 5]))
    path = write_recipe("data: {source: npz, path: d.npz}\n")
    with pytest.raises(DataError, match="outside 0..1"):
        from nnrun.data import load_data
        load_data(recipe_io.load(path).data, seed=0, base_dir=tmp_path, with_test=True)


def test_single_class_batch_warns():
    from nnrun.tools.diagnostics.rows import labels_row

    assert labels_row(torch.full((8,), 3), task="classification", num_classes=10, num_outputs=10).status == "WARN"


def test_regression_memorizes_and_reports_target_scale(tmp_path, write_recipe):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=(x @ np.arange(1, 5) + 3).astype(np.float32))
    path = write_recipe("""\
        data: {source: npz, path: reg.npz, batch_size: 16}
        model: {hidden: [32]}
        optimizer: {lr: 1e-2}
        train: {loss: mse}
        log: {progress: none}
        """)
    result = overfit.run(recipe_io.load(path), steps=400, write=False)
    assert result.verdict == "PASS", result.summary
    assert "the loss of predicting 0" in result.row("initial loss").evidence
    assert result.final["mse"] <= result.threshold


# -- CLI details ----------------------------------------------------------------------------------

def test_usage_errors_exit_2(cli, tmp_path):
    assert cli("overfit-one-batch", "quickstart", "--batch-size", 4, "--examples", 2).exit_code == 2
    assert cli("overfit-one-batch", "quickstart", "optimizer.lrr=1").exit_code == 2
    assert cli("overfit-one-batch").exit_code == 2


def test_sparkline_is_log_scaled_and_marks_nan():
    from nnrun.cli.overfit import sparkline

    line = sparkline([10.0, 1.0, 0.1, 0.01, math.nan])
    assert line[0] == "█" and line[-2] == "▁" and line[-1] == "x" and len(line) == 5
    assert len(sparkline([1.0] * 500, width=60)) <= 60
