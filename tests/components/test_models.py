"""Built-in models, normalization placement and model_problems (tiny CPU shapes)."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnrun.components.models import OUTPUT_LAYER, build_model
from nnrun.components.norm import make_norm
from nnrun.errors import NnrunError, RecipeError
from nnrun.recipe.rules import check_norm_fits, model_problems
from nnrun.recipe.schema import ModelConfig


def line(problem):
    """A Problem in the `key.path: message` form these assertions were written in."""
    return f"{'.'.join(map(str, problem.path))}: {problem.message}"

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shape(arch, shape):
    cfg = ModelConfig(arch=arch, norm="batch", depth=8, width=4, channels=[4, 8], head_hidden=16,
                      hidden=[16])
    model = build_model(cfg, input_shape=shape, num_outputs=7)
    assert model(torch.randn(3, *shape)).shape == (3, 7)


def test_two_dim_image_shape_means_one_channel():
    model = build_model(ModelConfig(arch="cnn", channels=[4]), input_shape=(8, 8), num_outputs=3)
    assert model(torch.randn(2, 8, 8)).shape == (2, 3)


def test_mlp_order_linear_norm_act_dropout_and_no_bias_before_norm():
    cfg = ModelConfig(arch="mlp", hidden=[16, 8], norm="batch", dropout=0.25)
    model = build_model(cfg, input_shape=(1, 8, 8), num_outputs=10)
    types = [type(m) for _, m in _leaves(model)]
    block = [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert types == [nn.Flatten] + block + block + [nn.Linear]
    hidden = [m for m in model.body if isinstance(m, nn.Linear)]
    assert [h.bias for h in hidden] == [None, None]  # BatchNorm's beta replaces the bias
    assert model.body[1].in_features == 64
    assert model.head.bias is not None


def test_mlp_without_norm_keeps_biases():
    model = build_model(ModelConfig(arch="mlp", hidden=[16], norm="none"), input_shape=(5,), num_outputs=2)
    assert [type(m) for _, m in _leaves(model)] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert model.body[1].bias is not None


def test_cnn_order_conv_norm_act_pool():
    cfg = ModelConfig(arch="cnn", channels=[4, 8], norm="group", groups=2, head_hidden=12, activation="tanh")
    model = build_model(cfg, input_shape=(1, 28, 28), num_outputs=10)
    types = [type(m) for _, m in _leaves(model)]
    stage = [nn.Conv2d, nn.GroupNorm, nn.Tanh, nn.MaxPool2d]
    assert types == stage + stage + [nn.Flatten, nn.Linear, nn.GroupNorm, nn.Tanh, nn.Linear]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert model.body[9].in_features == 8 * 7 * 7  # 28 -> 14 -> 7 after two 2x2 pools


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet"])
def test_head_is_last_module_and_last_called(arch):
    cfg = ModelConfig(arch=arch, depth=8, width=4, channels=[4], hidden=[8], norm="batch")
    model = build_model(cfg, input_shape=(1, 8, 8), num_outputs=5)
    name, last = list(model.named_modules())[-1]
    assert name == OUTPUT_LAYER and isinstance(last, nn.Linear)
    calls = []
    for n, m in _leaves(model):
        m.register_forward_hook(lambda mod, i, o, n=n: calls.append(n))
    out = model(torch.randn(4, 1, 8, 8))
    assert calls[-1] == OUTPUT_LAYER
    assert (out < 0).any()  # raw logits: no sigmoid/softmax/ReLU after the head


def _resnet_params(depth: int, width: int, c_in: int, k: int, normed: bool) -> int:
    """Closed-form parameter count of the CIFAR ResNet (BN: 2 per channel, else a conv bias: 1)."""
    per_channel = 2 if normed else 1
    total = 9 * c_in * width + per_channel * width
    c, n = width, (depth - 2) // 6
    for stage in range(3):
        co = width * 2 ** stage
        for i in range(n):
            ci = c if i == 0 else co
            total += 9 * ci * co + 9 * co * co + 2 * per_channel * co
            if ci != co:
                total += ci * co + per_channel * co
        c = co
    return total + 4 * width * k + k


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_resnet20_parameter_count(norm):
    model = build_model(ModelConfig(arch="resnet", depth=20, width=16, norm=norm),
                        input_shape=(3, 32, 32), num_outputs=10)
    count = sum(p.numel() for p in model.parameters())
    assert count == _resnet_params(20, 16, 3, 10, norm == "batch")
    assert 0.26e6 < count < 0.28e6  # the paper's ResNet-20: 0.27M
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 9 + 2  # stem, 9 blocks of 2, two projections
    assert all((c.bias is None) == (norm == "batch") for c in convs)


def test_resnet_depth_must_be_6n_plus_2():
    problems = model_problems(ModelConfig(arch="resnet", depth=21))
    assert len(problems) == 1 and line(problems[0]).startswith("model.depth: 21 is not 6n+2")
    assert "20" in line(problems[0]) and "26" in line(problems[0])
    with pytest.raises(RecipeError):
        build_model(ModelConfig(arch="resnet", depth=21), input_shape=(3, 32, 32), num_outputs=10)


def test_groupnorm_divisibility_problem_names_the_width():
    cfg = ModelConfig(arch="mlp", hidden=[16, 12], norm="group", groups=8)
    problems = model_problems(cfg)
    assert len(problems) == 1
    assert line(problems[0]).startswith("model.groups: 8 does not divide width 12 of hidden layer 2")
    assert f"e.g. {math.gcd(16, 12)}" in line(problems[0])
    with pytest.raises(RecipeError, match="width 12"):
        build_model(cfg, input_shape=(4,), num_outputs=2)
    assert check_norm_fits("group", 4, [16, 12], spatial=False) == []


def test_instance_norm_refused_on_vectors():
    problems = model_problems(ModelConfig(arch="mlp", norm="instance"))
    assert problems and line(problems[0]).startswith("model.norm: instance")
    with pytest.raises(NnrunError):
        make_norm("instance", 8, spatial=False, groups=1)


def test_pooling_below_one_pixel_and_flat_input_problems():
    cfg = ModelConfig(arch="cnn", channels=[4, 4, 4, 4])
    problems = model_problems(cfg, input_shape=(1, 8, 8))  # 8 -> 4 -> 2 -> 1 -> 0
    assert len(problems) == 1 and line(problems[0]).startswith("model.channels:") and "at most 3" in line(problems[0])
    assert model_problems(ModelConfig(arch="cnn", channels=[4, 4, 4]), input_shape=(1, 8, 8)) == []
    assert model_problems(ModelConfig(arch="cnn", channels=[4, 4, 4, 4], pool="none"),
                          input_shape=(1, 8, 8)) == []
    flat = model_problems(ModelConfig(arch="cnn"), input_shape=(64,))
    assert flat and line(flat[0]).startswith("model.arch: cnn needs image input")


@pytest.mark.parametrize("norm", ["batch", "group", "layer", "instance", "none"])
@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet"])
def test_every_norm_runs_forward_and_backward(arch, norm):
    cfg = ModelConfig(arch=arch, norm=norm, groups=2, hidden=[8, 6], channels=[4, 6], head_hidden=8,
                      depth=8, width=4)
    if arch == "mlp" and norm == "instance":
        assert model_problems(cfg)  # refused, tested above
        return
    model = build_model(cfg, input_shape=(1, 8, 8), num_outputs=3)
    kinds = {type(m) for m in model.modules() if isinstance(m, NORM_TYPES)}
    assert bool(kinds) == (norm != "none")
    model(torch.randn(4, 1, 8, 8)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_layer_norm_on_maps_equals_layernorm_over_chw():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 5)
    norm = make_norm("layer", 6, spatial=True, groups=3)
    torch.testing.assert_close(norm(x), F.layer_norm(x, x.shape[1:]), atol=1e-5, rtol=1e-5)
    inst = make_norm("instance", 6, spatial=True, groups=3)
    assert isinstance(inst, nn.InstanceNorm2d) and inst.affine
    assert make_norm("none", 6, spatial=True, groups=3) is None


def test_batchnorm_train_and_eval_differ_groupnorm_does_not():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8) * 3 + 2  # far from the initial running stats (mean 0, var 1)
    outs = {}
    for norm in ("batch", "group"):
        model = build_model(ModelConfig(arch="cnn", norm=norm, groups=2, channels=[4], head_hidden=0),
                            input_shape=(1, 8, 8), num_outputs=3)
        with torch.no_grad():
            train_out = model.train()(x)
            eval_out = model.eval()(x)
        outs[norm] = (train_out - eval_out).abs().max().item()
    assert outs["batch"] > 1e-3
    assert outs["group"] < 1e-6


def test_python_factory(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        import math
        from torch import nn
        def make(input_shape, num_outputs, hidden=4):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden),
                                 nn.ReLU(), nn.Linear(hidden, num_outputs))
        def not_a_model(**kwargs):
            return kwargs
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = ModelConfig(arch="python", factory="my_nets:make", kwargs={"hidden": 5})
    model = build_model(cfg, input_shape=(2, 3), num_outputs=4)
    assert model[1].out_features == 5 and model(torch.randn(2, 2, 3)).shape == (2, 4)
    linear = build_model(ModelConfig(arch="python", factory="torch.nn:Linear",
                                     kwargs={"in_features": 3, "out_features": 2}),
                         input_shape=(3,), num_outputs=2)
    assert isinstance(linear, nn.Linear)  # Linear takes no input_shape/num_outputs: none passed
    with pytest.raises(NnrunError, match="not an nn.Module"):
        build_model(ModelConfig(arch="python", factory="my_nets:not_a_model"), input_shape=(3,), num_outputs=2)
    with pytest.raises(NnrunError, match="cannot call model factory"):
        build_model(ModelConfig(arch="python", factory="my_nets:make", kwargs={"depth": 3}),
                    input_shape=(3,), num_outputs=2)


def test_python_factory_import_errors_name_the_factory(tmp_path, monkeypatch):
    (tmp_path / "my_nets2.py").write_text("def make_model():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NnrunError) as err:
        build_model(ModelConfig(arch="python", factory="no_such_module_xyz:make"), input_shape=(3,),
                    num_outputs=2)
    assert "no_such_module_xyz:make" in str(err.value) and err.value.hint
    with pytest.raises(NnrunError, match="did you mean `make_model`"):
        build_model(ModelConfig(arch="python", factory="my_nets2:make_modle"), input_shape=(3,),
                    num_outputs=2)
    assert model_problems(ModelConfig(arch="python", factory="my_nets2.make_model"))[0].path == ("model", "factory")
    assert model_problems(ModelConfig(arch="python"))[0].path == ("model", "factory")
    assert model_problems(ModelConfig(arch="mlp", factory="a:b"))[0].path == ("model", "factory")
