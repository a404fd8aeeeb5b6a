"""Losses and on-device metrics against direct full-set computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnrun.components.losses import RegressionLoss, build_loss, summed_loss
from nnrun.components.metrics import Accumulator, evaluate
from nnrun.errors import NnrunError, RecipeError
from nnrun.recipe.rules import loss_problems
from nnrun.recipe.schema import TrainConfig
from nnrun.recipe.tables import default_monitor, metric_info, metric_names


def line(problem):
    """A Problem in the `key.path: message` form these assertions were written in."""
    return f"{'.'.join(map(str, problem.path))}: {problem.message}"

CPU = torch.device("cpu")


def _batches(x: torch.Tensor, y: torch.Tensor, size: int):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def test_label_smoothing_cross_entropy_matches_the_formula():
    torch.manual_seed(0)
    logits, y, eps = torch.randn(9, 5), torch.randint(0, 5, (9,)), 0.2
    loss = build_loss(TrainConfig(label_smoothing=eps), task="classification")(logits, y)
    logp = logits.log_softmax(1)
    # Szegedy et al. 2016: target = (1 - eps) * one_hot + eps / C on every class.
    manual = ((1 - eps) * -logp.gather(1, y[:, None]).squeeze(1) - eps / 5 * logp.sum(1)).mean()
    torch.testing.assert_close(loss, manual)


def test_classification_accumulator_equals_full_set_with_uneven_last_batch():
    torch.manual_seed(0)
    n, c = 103, 4  # batches of 10: the last one holds 3
    logits, y = torch.randn(n, c), torch.randint(0, c, (n,))
    loss_fn = build_loss(TrainConfig(label_smoothing=0.1), task="classification")
    acc = Accumulator("classification", CPU)
    for out, t in _batches(logits, y, 10):
        acc.update(out, t, summed_loss(loss_fn, out, t))
    result = acc.compute()
    assert set(result) == {"val_loss", "val_acc"}
    assert result["val_loss"] == pytest.approx(loss_fn(logits, y).item(), rel=1e-6)
    assert result["val_acc"] == pytest.approx((logits.argmax(1) == y).double().mean().item())
    assert set(acc.compute("train_")) == {"train_loss", "train_acc"}


def test_regression_mae_rmse_closed_form():
    torch.manual_seed(0)
    out, y = torch.randn(53, 1), torch.randn(53)
    loss_fn = build_loss(TrainConfig(loss="mse"), task="regression")
    acc = Accumulator("regression", CPU)
    for o, t in _batches(out, y, 8):
        acc.update(o, t, summed_loss(loss_fn, o, t))
    result = acc.compute()
    err = (out.squeeze(1) - y).double()
    assert result["val_mae"] == pytest.approx(err.abs().mean().item())
    assert result["val_rmse"] == pytest.approx(err.square().mean().sqrt().item())
    assert result["val_loss"] == pytest.approx(err.square().mean().item(), rel=1e-6)  # mse == rmse**2


def test_multi_output_regression_averages_every_value():
    torch.manual_seed(1)
    out, y = torch.randn(11, 3), torch.randn(11, 3)
    loss_fn = build_loss(TrainConfig(loss="l1"), task="regression")
    acc = Accumulator("regression", CPU)
    for o, t in _batches(out, y, 4):
        acc.update(o, t, summed_loss(loss_fn, o, t))
    result = acc.compute("test_")
    assert result["test_mae"] == pytest.approx((out - y).abs().mean().item(), rel=1e-6)
    assert result["test_loss"] == pytest.approx(result["test_mae"], rel=1e-6)  # l1 loss is the MAE


def test_update_does_not_sync_to_host(monkeypatch):
    acc = Accumulator("classification", CPU)

    def refuse(*args, **kwargs):
        raise AssertionError("host sync in update")

    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    loss = summed_loss(nn.CrossEntropyLoss(), logits, y)
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    acc.update(logits, y, loss)
    monkeypatch.undo()
    assert acc.compute()["val_loss"] == pytest.approx(nn.CrossEntropyLoss()(logits, y).item())


def test_empty_accumulator_is_an_error():
    with pytest.raises(NnrunError, match="no examples"):
        Accumulator("regression", CPU).compute()


def test_regression_loss_squeezes_only_a_single_output_column():
    loss_fn = RegressionLoss("mse")
    out, y = torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])
    assert loss_fn(out, y).item() == pytest.approx((1 + 4) / 2)  # not the 2x2 broadcast
    with pytest.raises(NnrunError, match="shape"):
        loss_fn(torch.zeros(2, 2), y)
    assert build_loss(TrainConfig(loss="smooth_l1"), task="regression")(out, y).item() == pytest.approx(
        nn.functional.smooth_l1_loss(out.squeeze(1), y).item())


def test_loss_problems():
    mse_cls = loss_problems(TrainConfig(loss="mse"), task="classification")
    assert len(mse_cls) == 1 and line(mse_cls[0]).startswith("train.loss: mse") and "cross_entropy" in line(mse_cls[0])
    ce_reg = loss_problems(TrainConfig(), task="regression")
    assert len(ce_reg) == 1 and line(ce_reg[0]).startswith("train.loss: cross_entropy")
    smooth = loss_problems(TrainConfig(loss="mse", label_smoothing=0.1), task=None)
    assert len(smooth) == 1 and line(smooth[0]).startswith("train.label_smoothing:")
    assert loss_problems(TrainConfig(), task="classification") == []
    with pytest.raises(RecipeError):
        build_loss(TrainConfig(loss="mse"), task="classification")
    with pytest.raises(NnrunError):
        build_loss(TrainConfig(), task="auto")


def test_metric_info_names_and_monitor():
    assert metric_info("val_acc").mode == "max"
    assert metric_info("val_loss").mode == "min" and metric_info("val_rmse").mode == "min"
    assert metric_names("classification") == ["val_loss", "val_acc", "train_loss"]
    assert metric_names("regression") == ["val_loss", "val_mae", "val_rmse", "train_loss"]
    for task in ("classification", "regression"):
        assert default_monitor(task) in metric_names(task)
    assert default_monitor("classification") == "val_acc" and default_monitor("regression") == "val_loss"
    with pytest.raises(NnrunError, match="did you mean `val_acc`") as err:
        metric_info("val_accuracy")
    assert "val_loss" in err.value.hint


class _Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.drop(self.lin(x)))


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_restores_modes_and_matches_direct_computation(training):
    torch.manual_seed(0)
    model = _Frozen().train(training)
    model.bn.eval()  # frozen on purpose: must stay in eval after evaluate
    model.bn.running_mean.fill_(0.3)
    x, y = torch.randn(37, 4), torch.randint(0, 3, (37,))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    result = evaluate(model, _batches(x, y, 16), loss_fn, task="classification", device="cpu")
    assert model.training == training and model.drop.training == training and not model.bn.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert result["val_loss"] == pytest.approx(loss_fn(out, y).item(), rel=1e-6)
    assert result["val_acc"] == pytest.approx((out.argmax(1) == y).double().mean().item())
    assert not math.isnan(result["val_loss"])
