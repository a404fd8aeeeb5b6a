"""`optimizer` section -> a torch optimizer with named parameter groups.

Groups: `optimizer.groups` (glob on parameter names, first match wins, own `lr_mult` and weight
decay; unmatched parameters form `default`), or `optimizer.discriminative` (K consecutive layer
groups, each earlier one F times slower: fastai's discriminative rates for fine-tuning).
`no_decay` removes weight decay from biases and normalization parameters (nanoGPT and fastai do
this by default for AdamW). Frozen parameters are in the optimizer too, so gradual unfreezing
needs no rebuild; without gradients they are skipped and keep their values exactly.

Fast kernels by default: `fused` Adam/AdamW/SGD/Adagrad compute the same update rule as the
reference loop (differences at float rounding, ~5e-7 after 50 Adam steps on CPU) and cut the
optimizer step by about a fifth on CPU.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from nnrun.errors import Problem, RecipeError
from nnrun.recipe.schema import OptimizerConfig
from nnrun.recipe.tables import FUSED_OPTIMIZERS

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _kernel_flags(cfg: OptimizerConfig, device: torch.device) -> dict:
    """`fused=True` where a fused kernel exists on this device, else foreach (torch's default)."""
    if cfg.fused == "off":
        return {"foreach": False}
    if cfg.name in FUSED_OPTIMIZERS and device.type in ("cpu", "cuda"):
        return {"fused": True}
    return {}


def _no_decay_names(model: nn.Module, kinds: list[str]) -> set[str]:
    """Parameter names exempt from weight decay: 1-D biases and/or normalization parameters."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if ("norm" in kinds and isinstance(module, NORM_TYPES)) or ("bias" in kinds and p_name == "bias"):
                names.add(full)
    return names


def layer_blocks(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped by the module that owns them, from input to output."""
    blocks: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        blocks.setdefault(name.rsplit(".", 1)[0] if "." in name else "", []).append(name)
    return list(blocks.values())


def _discriminative(cfg: OptimizerConfig, model: nn.Module) -> list[tuple[str, float, list[str]]]:
    blocks = layer_blocks(model)
    k = cfg.discriminative.groups
    if k > len(blocks):
        raise RecipeError([Problem(("optimizer", "discriminative", "groups"),
                                   f"{k} groups but the model has only {len(blocks)} layers with parameters; "
                                   f"use at most {len(blocks)}")])
    out = []
    for i in range(k):
        chunk = blocks[i * len(blocks) // k:(i + 1) * len(blocks) // k]
        out.append((f"layers{i}", cfg.discriminative.factor ** -(k - 1 - i), [n for b in chunk for n in b]))
    return out


def _matched(cfg: OptimizerConfig, model: nn.Module) -> list[tuple[str, float, list[str], float | None]]:
    """(name, lr multiplier, parameter names, weight decay) per logical group, in recipe order."""
    names = [n for n, _ in model.named_parameters()]
    if cfg.discriminative is not None:
        return [(n, m, ps, None) for n, m, ps in _discriminative(cfg, model)]
    taken: set[str] = set()
    groups = []
    for i, g in enumerate(cfg.groups):
        mine = [n for n in names if n not in taken and fnmatch.fnmatchcase(n, g.match)]
        if not mine:
            raise RecipeError([Problem(("optimizer", "groups", i, "match"),
                                       f"`{g.match}` matches no parameter that an earlier group has not taken; "
                                       f"parameter names: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")])
        taken.update(mine)
        groups.append((g.name or f"g{i}", g.lr_mult, mine, g.weight_decay))
    rest = [n for n in names if n not in taken]
    if rest:
        groups.append(("default", 1.0, rest, None))
    return groups


def param_groups(cfg: OptimizerConfig, model: nn.Module) -> list[dict]:
    """torch param groups with `name`, `lr` and `weight_decay`; no-decay parameters split off."""
    params = dict(model.named_parameters())
    exempt = _no_decay_names(model, cfg.no_decay)
    out = []
    for name, mult, names, decay in _matched(cfg, model):
        decay = cfg.weight_decay if decay is None else decay
        for suffix, members, wd in (("", [n for n in names if n not in exempt], decay),
                                    (".no_decay", [n for n in names if n in exempt], 0.0)):
            if members:
                out.append({"params": [params[n] for n in members], "param_names": members,
                            "name": name + suffix, "lr": cfg.lr * mult, "weight_decay": wd})
    return out


def build_optimizer(cfg: OptimizerConfig, model: nn.Module, *, device: torch.device) -> torch.optim.Optimizer:
    """Build the update rule of the recipe over the model's parameters, in named groups."""
    groups = param_groups(cfg, model)
    flags = _kernel_flags(cfg, device)
    common = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=cfg.nesterov, **common, **flags)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, betas=tuple(cfg.betas), eps=cfg.eps, **common, **flags)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, betas=tuple(cfg.betas), eps=cfg.eps, **common, **flags)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(groups, eps=cfg.eps, **common, **flags)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum,
                                   centered=cfg.centered, **common, **flags)
    raise ValueError(f"unknown optimizer {cfg.name!r}")  # unreachable: the recipe validated the name


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """The `name` of each parameter group, for `lr/<group>` logging."""
    return [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]


def set_momentum(group: dict, value: float) -> None:
    """Write momentum (SGD/RMSprop) or beta1 (Adam/AdamW) of one parameter group."""
    if "betas" in group:
        group["betas"] = (value, group["betas"][1])
    elif "momentum" in group:
        group["momentum"] = value


def get_momentum(group: dict) -> float | None:
    if "betas" in group:
        return group["betas"][0]
    return group.get("momentum")


def describe_groups(optimizer: torch.optim.Optimizer) -> list[str]:
    """One line per group: name, tensors, parameters, lr, weight decay (printed at start, nanoGPT style)."""
    return [f"{g.get('name')}: {len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} parameters, "
            f"lr {g['lr']:.3g}, weight_decay {g['weight_decay']:g}" for g in optimizer.param_groups]
