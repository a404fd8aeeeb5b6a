"""The built-in networks (mlp, cnn, CIFAR-style resnet) and user factories (python).

Every built-in model is a :class:`Network`: a ``body`` followed by the output layer ``head``, a plain
``nn.Linear`` producing raw scores (logits for classification). There is no activation after the
head: ``CrossEntropyLoss`` applies log-softmax itself, and a softmax before it is a classic bug
(design/algorithms.md section 10). Each hidden layer is ``linear/conv -> norm -> activation``
(BatchNorm paper order); the linear/conv layer has no bias when a norm follows, because the norm's
shift ``beta`` replaces it. Activations are real modules (``nn.ReLU``, not ``F.relu``) so forward
hooks (dead-unit counts, non-finite checks) can see them.
"""

from __future__ import annotations

import inspect
import math

from torch import Tensor, nn

from nnrun.components.norm import make_norm
from nnrun.errors import NnrunError, Problem, RecipeError, did_you_mean, import_callable
from nnrun.recipe.rules import cnn_maps, image_shape, model_problems
from nnrun.recipe.schema import ModelConfig

OUTPUT_LAYER = "head"
"""Attribute name of the final ``nn.Linear`` of every built-in model."""

ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU, "elu": nn.ELU, "silu": nn.SiLU,
}


class Network(nn.Module):
    """``head(body(x))``: the shape shared by the built-in models."""

    def __init__(self, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class BasicBlock(nn.Module):
    """The ResNet basic block (He et al., CVPR 2016, Fig. 2 left): two 3x3 convs and a shortcut.

    ``act2(norm2(conv2(act1(norm1(conv1(x))))) + shortcut(x))``; the shortcut is the identity, or a
    1x1 conv + norm projection when the stride or width changes (the paper's option B).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, cfg: ModelConfig):
        super().__init__()
        self.conv1 = _conv(c_in, c_out, 3, cfg.norm, stride=stride)
        self.norm1 = _norm_or_identity(cfg, c_out)
        self.act1 = make_activation(cfg.activation)
        self.conv2 = _conv(c_out, c_out, 3, cfg.norm)
        self.norm2 = _norm_or_identity(cfg, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            projection = [_conv(c_in, c_out, 1, cfg.norm, stride=stride), _norm_or_identity(cfg, c_out)]
            self.shortcut = nn.Sequential(*[m for m in projection if not isinstance(m, nn.Identity)])
        self.act2 = make_activation(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        return self.act2(self.norm2(self.conv2(out)) + self.shortcut(x))


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of ``nnrun.recipe.schema.ACTIVATIONS``)."""
    if name not in ACTIVATION_MODULES:
        raise NnrunError(f"unknown activation `{name}`{did_you_mean(name, ACTIVATION_MODULES)}",
                         where="model.activation", hint=f"choose one of {', '.join(ACTIVATION_MODULES)}")
    return ACTIVATION_MODULES[name]()


def build_model(cfg: ModelConfig, *, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Build the network a recipe's ``model`` section describes.

    Args:
        cfg: the ``model`` section.
        input_shape: shape of one example, without the batch dimension (e.g. ``(1, 28, 28)``).
        num_outputs: classes (classification) or target values (regression).

    Returns:
        The model, on CPU, with PyTorch's default init (see :func:`nnrun.init.init_weights`).

    Raises:
        RecipeError: every problem :func:`nnrun.recipe.rules.model_problems` finds.
        NnrunError: a python factory that cannot be imported, called, or returns no ``nn.Module``.
    """
    input_shape = tuple(int(d) for d in input_shape)
    problems = model_problems(cfg, input_shape=input_shape)
    if num_outputs < 1:
        problems.append(Problem(("model",), f"the data has {num_outputs} outputs; at least 1 is needed"))
    if problems:
        raise RecipeError(problems)
    if cfg.arch == "python":
        return _python_model(cfg, input_shape, num_outputs)
    builders = {"mlp": _mlp, "cnn": _cnn, "resnet": _resnet}
    return builders[cfg.arch](cfg, input_shape, num_outputs)


def _conv(c_in: int, c_out: int, kernel: int, norm: str, *, stride: int = 1) -> nn.Conv2d:
    # No bias before a norm: the norm's shift replaces it (BatchNorm paper, section 3.2).
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=norm == "none")


def _norm_or_identity(cfg: ModelConfig, width: int) -> nn.Module:
    return make_norm(cfg.norm, width, spatial=True, groups=cfg.groups) or nn.Identity()


def _dense_layers(cfg: ModelConfig, n_in: int, n_out: int, norm: str) -> list[nn.Module]:
    """``Linear -> norm -> activation -> dropout`` for one hidden layer of vectors."""
    layers: list[nn.Module] = [nn.Linear(n_in, n_out, bias=norm == "none")]
    norm_layer = make_norm(norm, n_out, spatial=False, groups=cfg.groups)
    layers += [norm_layer] if norm_layer is not None else []
    layers.append(make_activation(cfg.activation))
    if cfg.dropout > 0:
        layers.append(nn.Dropout(cfg.dropout))
    return layers


def _mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> Network:
    """Flatten, then one dense layer per ``model.hidden`` width, then the head."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden in cfg.hidden:
        layers += _dense_layers(cfg, width, hidden, cfg.norm)
        width = hidden
    return Network(nn.Sequential(*layers), nn.Linear(width, num_outputs))


def _cnn(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> Network:
    """Conv stages (conv, norm, act, 2x2 pool), flatten, optional dense layer, head."""
    c, h, w = image_shape(input_shape)  # type: ignore[misc]
    layers: list[nn.Module] = [] if len(input_shape) == 3 else [nn.Unflatten(1, (1, h))]
    for channels in cfg.channels:
        layers += [_conv(c, channels, cfg.kernel, cfg.norm), _norm_or_identity(cfg, channels),
                   make_activation(cfg.activation)]
        if cfg.pool != "none":
            layers.append(nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2))
        c = channels
    layers = [m for m in layers if not isinstance(m, nn.Identity)] + [nn.Flatten()]
    fh, fw = cnn_maps(cfg, h, w)[-1]
    width = c * fh * fw
    if cfg.head_hidden:
        # Instance norm needs spatial positions; the dense layer of a cnn gets no norm then.
        norm = "none" if cfg.norm == "instance" else cfg.norm
        layers += _dense_layers(cfg, width, cfg.head_hidden, norm)
        width = cfg.head_hidden
    elif cfg.dropout > 0:
        layers.append(nn.Dropout(cfg.dropout))
    return Network(nn.Sequential(*layers), nn.Linear(width, num_outputs))


def _resnet(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> Network:
    """CIFAR ResNet (He et al., CVPR 2016, section 4.2): 3x3 stem, three stages of n blocks, GAP, head.

    Stage widths are ``width, 2*width, 4*width``; stages 2 and 3 halve the map with a stride-2 conv.
    ``model.dropout`` (if > 0) is applied to the pooled features, before the head.
    """
    c, h, w = image_shape(input_shape)  # type: ignore[misc]
    n = (cfg.depth - 2) // 6
    layers: list[nn.Module] = [] if len(input_shape) == 3 else [nn.Unflatten(1, (1, h))]
    layers += [_conv(c, cfg.width, 3, cfg.norm), _norm_or_identity(cfg, cfg.width),
               make_activation(cfg.activation)]
    c_in = cfg.width
    for stage in range(3):
        c_out = cfg.width * 2 ** stage
        blocks = [BasicBlock(c_in if i == 0 else c_out, c_out, 2 if stage and i == 0 else 1, cfg)
                  for i in range(n)]
        layers.append(nn.Sequential(*blocks))
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if cfg.dropout > 0:
        layers.append(nn.Dropout(cfg.dropout))
    layers = [m for m in layers if not isinstance(m, nn.Identity)]
    return Network(nn.Sequential(*layers), nn.Linear(c_in, num_outputs))


def _python_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Import ``module:factory`` and call it with ``model.kwargs`` (plus the data's facts it accepts)."""
    factory = import_callable(cfg.factory, key="model.factory")
    kwargs = dict(cfg.kwargs)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some builtins have no signature: pass only the user's kwargs
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name, value in (("input_shape", tuple(input_shape)), ("num_outputs", num_outputs)):
        if name not in kwargs and (takes_any or name in params):
            kwargs[name] = value
    if params:
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as exc:
            raise NnrunError(f"cannot call model factory `{cfg.factory}` with {sorted(kwargs)}: {exc}",
                             where="model.kwargs",
                             hint=f"match model.kwargs to the factory's signature {inspect.signature(factory)}"
                             ) from exc
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise NnrunError(f"model factory `{cfg.factory}` returned {type(model).__name__}, not an nn.Module",
                         where="model.factory", hint="return the network (an nn.Module producing logits)")
    return model


