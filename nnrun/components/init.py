"""Weight initialization of linear/conv layers (design/algorithms.md section 4, torch/nn/init.py).

Every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` gets the recipe's scheme -- the output layer ``head``
included, so the initial logits have the same scale as every other layer's output and the initial
loss is near ``ln C`` (CS231n, "look for correct loss at chance performance"). Biases get
``init.bias``; normalization layers start as the identity (weight 1, bias 0). ``default`` leaves
PyTorch's own init untouched (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: a third of LeCun's variance,
usually too small for deep ReLU nets). Other layer types (embeddings, RNNs) keep PyTorch's init.

Randomness comes from the global torch RNG, which the caller seeds.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nnrun.errors import NnrunError
from nnrun.recipe.rules import ZEROS_WHY
from nnrun.recipe.schema import InitConfig

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # _NormBase: batch + instance

# Activation -> the nonlinearity name torch's calculate_gain/kaiming_* accept. gelu, elu and silu
# have no entry in calculate_gain; they behave like a rectifier for positive inputs, so they get
# the closest rectifier gain, relu's sqrt(2).
GAIN_NONLINEARITY = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid",
                     "gelu": "relu", "elu": "relu", "silu": "relu", "linear": "linear"}
LEAKY_SLOPE = 0.01  # nn.LeakyReLU's default negative slope, used by the built-in models


class _StopForward(Exception):
    """Raised by the LSUV hook once the current layer's output is seen: the rest is not needed."""


def resolve_nonlinearity(cfg: InitConfig, activation: str) -> str:
    """The nonlinearity name handed to torch's gain functions (``auto``: the model's activation)."""
    name = activation if cfg.nonlinearity == "auto" else cfg.nonlinearity
    if name not in GAIN_NONLINEARITY:
        raise NnrunError(f"no init gain known for activation `{name}`", where="init.nonlinearity",
                         hint=f"set init.nonlinearity to one of {', '.join(GAIN_NONLINEARITY)}")
    return GAIN_NONLINEARITY[name]


def init_weights(model: nn.Module, cfg: InitConfig, *, activation: str,
                 sample: torch.Tensor | None = None) -> dict:
    """Initialize ``model`` in place by the recipe's ``init`` section.

    Args:
        model: the network.
        cfg: the ``init`` section.
        activation: the model's activation (``model.activation``), used when
            ``init.nonlinearity`` is ``auto``.
        sample: a fixed input batch; required by ``lsuv``.

    Returns:
        A report: ``scheme``, ``nonlinearity``, ``layers`` (conv/linear layers initialized),
        ``norm_layers`` and, for lsuv, ``lsuv`` (each layer's final output std, forward order),
        ``lsuv_layers`` (their names) and ``lsuv_skipped`` (layers whose output std was 0).

    Raises:
        NnrunError: ``zeros`` (symmetry), or ``lsuv`` without a sample batch.
    """
    if cfg.weights == "zeros":
        raise NnrunError(f"init.weights=zeros: {ZEROS_WHY}", where="init.weights",
                         hint="use kaiming_normal (ReLU family) or xavier_uniform (tanh/sigmoid)")
    if cfg.weights == "lsuv" and sample is None:
        raise NnrunError("init.weights=lsuv needs a sample batch to measure each layer's output",
                         where="init.weights", hint="pass sample= (one training batch)")
    nonlinearity = resolve_nonlinearity(cfg, activation)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    norms = [m for m in model.modules() if isinstance(m, NORM_LAYERS)]
    report: dict = {"scheme": cfg.weights, "nonlinearity": nonlinearity, "layers": len(layers),
                    "norm_layers": len(norms)}
    if cfg.weights == "default":
        return report
    with torch.no_grad():
        for _, layer in layers:
            _init_weight(layer.weight, cfg, nonlinearity)
            if layer.bias is not None:
                layer.bias.fill_(0.0 if cfg.weights == "lsuv" else cfg.bias)
        for norm in norms:
            if getattr(norm, "weight", None) is not None:
                norm.weight.fill_(1.0)
            if getattr(norm, "bias", None) is not None:
                norm.bias.fill_(0.0)
    if cfg.weights == "lsuv":
        report.update(_lsuv(model, dict(layers), cfg, sample))
    return report


def _init_weight(weight: torch.Tensor, cfg: InitConfig, nonlinearity: str) -> None:
    """One weight tensor by ``cfg.weights`` (formulas: design/algorithms.md section 4)."""
    slope = LEAKY_SLOPE if nonlinearity == "leaky_relu" else None
    gain = cfg.gain if cfg.gain is not None else nn.init.calculate_gain(nonlinearity, slope)
    scheme = cfg.weights
    if scheme == "xavier_uniform":  # Glorot & Bengio 2010: U(-a, a), a = gain*sqrt(6/(fan_in+fan_out))
        nn.init.xavier_uniform_(weight, gain=gain)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(weight, gain=gain)
    elif scheme in ("kaiming_uniform", "kaiming_normal"):  # He et al. 2015: std = gain/sqrt(fan)
        fn = nn.init.kaiming_uniform_ if scheme == "kaiming_uniform" else nn.init.kaiming_normal_
        fn(weight, a=slope or 0.0, mode=cfg.mode, nonlinearity=nonlinearity)
    elif scheme == "orthogonal":  # Saxe et al. 2013
        nn.init.orthogonal_(weight, gain=gain)
    elif scheme == "normal":
        nn.init.normal_(weight, std=cfg.std)
    elif scheme == "lsuv":  # step 1 of LSUV: orthonormal pre-init (rescaled per layer later)
        nn.init.orthogonal_(weight)
    else:
        raise NnrunError(f"unknown init scheme `{scheme}`", where="init.weights")


def _forward_order(model: nn.Module, layers: dict[str, nn.Module], sample: torch.Tensor) -> list[str]:
    """Names of ``layers`` in the order one forward pass calls them (not definition order)."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: order.append(name))
             for name, m in layers.items()]
    try:
        model(sample)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))  # a layer called twice counts at its first call


def _output_std(model: nn.Module, layer: nn.Module, sample: torch.Tensor) -> float:
    """Std of ``layer``'s output on ``sample``; the forward stops right after that layer."""
    seen: list[float] = []

    def hook(_mod, _inp, out):
        seen.append(float(out.detach().float().std()))
        raise _StopForward

    handle = layer.register_forward_hook(hook)
    try:
        model(sample)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return seen[0]


def _lsuv(model: nn.Module, layers: dict[str, nn.Module], cfg: InitConfig, sample: torch.Tensor) -> dict:
    """Layer-sequential unit-variance init (Mishkin & Matas, ICLR 2016), after the orthonormal step.

    For each conv/linear layer in forward order, with the fixed batch, under no_grad in eval mode
    (BatchNorm uses its running statistics and is not updated), scale ``W <- W / std(out)`` until
    ``|std(out) - 1| < lsuv_tol`` or ``lsuv_iters`` rescalings; layers with output std 0 are skipped.
    """
    modes = {m: m.training for m in model.modules()}
    param = next(model.parameters(), None)
    if param is not None:
        sample = sample.to(param.device)
    stds, names, skipped = [], [], []
    model.eval()
    try:
        with torch.no_grad():
            for name in _forward_order(model, layers, sample):
                layer = layers[name]
                std = _output_std(model, layer, sample)
                attempts = 0
                while std > 0 and math.isfinite(std) and abs(std - 1) >= cfg.lsuv_tol \
                        and attempts < cfg.lsuv_iters:
                    layer.weight.div_(std)
                    attempts += 1
                    std = _output_std(model, layer, sample)
                if std == 0 or not math.isfinite(std):
                    skipped.append(name)
                stds.append(std)
                names.append(name)
    finally:
        for m, mode in modes.items():  # per module: some may have been frozen in eval on purpose
            m.training = mode
    return {"lsuv": stds, "lsuv_layers": names, "lsuv_skipped": skipped}
