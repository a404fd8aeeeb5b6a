"""Weight-init schemes against their closed forms (design/algorithms.md section 4), and `init.from`."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnrun import checkpoint
from nnrun import recipe as recipe_io
from nnrun.build import build
from nnrun.components.init import init_weights
from nnrun.components.models import build_model
from nnrun.errors import NnrunError
from nnrun.recipe.rules import init_problems
from nnrun.recipe.schema import InitConfig, ModelConfig


def line(problem):
    """A Problem in the `key.path: message` form these assertions were written in."""
    return f"{'.'.join(map(str, problem.path))}: {problem.message}"


def test_xavier_uniform_bound():
    torch.manual_seed(0)
    layer = nn.Linear(400, 300)
    init_weights(layer, InitConfig(weights="xavier_uniform"), activation="tanh")
    bound = nn.init.calculate_gain("tanh") * math.sqrt(6 / (400 + 300))
    assert nn.init.calculate_gain("tanh") == pytest.approx(5 / 3)
    top = layer.weight.abs().max().item()
    assert top <= bound and top > 0.995 * bound  # 120k uniform draws reach the edge
    explicit = nn.Linear(400, 300)
    init_weights(explicit, InitConfig(weights="xavier_uniform", gain=0.5), activation="tanh")
    assert 0.995 * 0.5 * math.sqrt(6 / 700) < explicit.weight.abs().max().item() <= 0.5 * math.sqrt(6 / 700)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_kaiming_normal_std(mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3)
    init_weights(conv, InitConfig(weights="kaiming_normal", mode=mode), activation="relu")
    fan = (64 if mode == "fan_in" else 128) * 3 * 3
    expected = math.sqrt(2) / math.sqrt(fan)
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.03)


def test_gelu_gets_the_relu_gain_and_leaky_relu_its_slope():
    torch.manual_seed(0)
    layer = nn.Linear(1000, 400)
    report = init_weights(layer, InitConfig(weights="kaiming_normal"), activation="gelu")
    assert report["nonlinearity"] == "relu"
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.03)
    init_weights(layer, InitConfig(weights="kaiming_normal"), activation="leaky_relu")
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2) / 1000), rel=0.03)


def test_orthogonal_rows_are_orthonormal_times_gain():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    init_weights(layer, InitConfig(weights="orthogonal", gain=1.0), activation="relu")
    w = layer.weight
    torch.testing.assert_close(w @ w.T, torch.eye(32), atol=1e-5, rtol=0)
    init_weights(layer, InitConfig(weights="orthogonal"), activation="relu")  # gain sqrt(2)
    torch.testing.assert_close(layer.weight @ layer.weight.T, 2 * torch.eye(32), atol=1e-5, rtol=0)


def test_normal_std():
    torch.manual_seed(0)
    layer = nn.Linear(500, 500)
    init_weights(layer, InitConfig(weights="normal", std=0.05), activation="relu")
    assert layer.weight.std().item() == pytest.approx(0.05, rel=0.02)


def test_zeros_refused_with_the_symmetry_explanation():
    problems = init_problems(InitConfig(weights="zeros"))
    assert len(problems) == 1 and line(problems[0]).startswith("init.weights:")
    text = line(problems[0])
    assert "same gradient" in text and "symmetry" in text and "kaiming_normal" in text
    with pytest.raises(NnrunError, match="symmetry"):
        init_weights(nn.Linear(2, 2), InitConfig(weights="zeros"), activation="relu")
    assert init_problems(InitConfig()) == []


def test_zero_weights_really_give_zero_and_identical_gradients():
    """What the refusal prevents: with zero weights, a ReLU net's first layer learns nothing."""
    model = build_model(ModelConfig(hidden=[8, 8]), input_shape=(5,), num_outputs=3)
    for p in model.parameters():
        nn.init.zeros_(p)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    first, second = model.body[1], model.body[3]
    assert torch.count_nonzero(first.weight.grad) == 0
    assert torch.equal(second.weight.grad, second.weight.grad[:1].expand_as(second.weight.grad))


def test_unused_settings_are_problems():
    assert line(init_problems(InitConfig(weights="kaiming_normal", gain=2.0))[0]).startswith("init.gain:")
    assert line(init_problems(InitConfig(weights="default", bias=0.1))[0]).startswith("init.bias:")
    assert line(init_problems(InitConfig(weights="xavier_uniform", mode="fan_out"))[0]).startswith("init.mode:")


def test_biases_and_norm_layers():
    model = build_model(ModelConfig(arch="cnn", norm="batch", channels=[4], head_hidden=8),
                        input_shape=(1, 8, 8), num_outputs=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.fill_(3.0)
                m.bias.fill_(-2.0)
    report = init_weights(model, InitConfig(weights="kaiming_uniform", bias=0.1), activation="relu")
    assert report["layers"] == 3 and report["norm_layers"] == 2
    biases = [m.bias for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None]
    assert biases and all(torch.all(b == 0.1) for b in biases)  # the head's bias included
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert all(torch.all(n.weight == 1) and torch.all(n.bias == 0) for n in norms)


def test_default_leaves_pytorch_init():
    torch.manual_seed(0)
    layer = nn.Linear(10, 10)
    before = layer.weight.clone()
    init_weights(layer, InitConfig(weights="default"), activation="relu")
    assert torch.equal(layer.weight, before)


def _lsuv_model(seed: int) -> tuple[nn.Module, dict, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="cnn", norm="batch", channels=[4, 8], head_hidden=16),
                        input_shape=(1, 8, 8), num_outputs=10)
    sample = torch.randn(32, 1, 8, 8) * 5 + 1
    report = init_weights(model, InitConfig(weights="lsuv", lsuv_tol=0.05), activation="relu", sample=sample)
    return model, report, sample


def test_lsuv_unit_output_std_deterministic_and_mode_restored():
    model, report, sample = _lsuv_model(0)
    assert model.training  # restored after the eval-mode passes
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    stds = []
    hooks = [m.register_forward_hook(lambda mod, i, o: stds.append(o.std().item())) for m in layers]
    model.eval()
    with torch.no_grad():
        model(sample)
    for h in hooks:
        h.remove()
    assert len(stds) == len(layers) == len(report["lsuv"])
    assert all(abs(s - 1) < 0.05 for s in stds), stds
    assert stds == pytest.approx(report["lsuv"], rel=1e-5)
    again, report2, _ = _lsuv_model(0)
    assert report2["lsuv"] == report["lsuv"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert all(torch.all(m.bias == 0) for m in layers if m.bias is not None)


def test_lsuv_needs_a_sample():
    with pytest.raises(NnrunError, match="sample"):
        init_weights(nn.Linear(2, 2), InitConfig(weights="lsuv"), activation="relu")


# ---------------------------------------------------------------------------------------------
# init.from: weights from a checkpoint (nnrun/build.py: load_pretrained)

TB_ON = "log.tensorboard=true"  # this run has always written TensorBoard too; train_tiny turns it off


def test_init_from_loads_matching_weights_and_reports_the_rest(tiny_recipe, train_tiny):
    src = train_tiny([TB_ON, "train.epochs=1"], name="src")
    weights = checkpoint.load(src.last_checkpoint)["model"]
    r = recipe_io.load(tiny_recipe, [f"init.from={src.last_checkpoint}", "model.hidden=[32]", "seed=11"])
    c = build(r, device=torch.device("cpu"))
    assert torch.equal(c.model.state_dict()["body.1.weight"], weights["body.1.weight"])
    assert any("init.from last.pt: loaded 4 tensors" in n for n in c.notes)
    other = recipe_io.load(tiny_recipe, [f"init.from={src.last_checkpoint}", "model.hidden=[16]"])
    notes = build(other, device=torch.device("cpu")).notes
    assert any("shape differs" in n and "body.1.weight" in n for n in notes)
    assert recipe_io.dump(r).count("from: ") == 1  # written back in recipe spelling
