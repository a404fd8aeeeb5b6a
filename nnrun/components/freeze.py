"""Freezing and gradual unfreezing (`model.freeze`, `model.unfreeze`, `model.freeze_bn`).

Which parameters train is a pure function of the epoch, so a resumed run applies the same
state. Frozen parameters get no gradient, so the optimizer skips them and they keep their values
exactly; with `freeze_bn`, BatchNorm layers whose parameters are all frozen stay in eval mode so
their running statistics do not drift either (fastai's `train_bn=False`).
"""

from __future__ import annotations

import fnmatch

from torch import nn

from nnrun.errors import Problem, RecipeError
from nnrun.recipe.schema import ModelConfig


def frozen_names(cfg: ModelConfig, names: list[str], epoch: int) -> set[str]:
    """Parameter names frozen during `epoch` (0-based)."""
    frozen = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in cfg.freeze)}
    for u in cfg.unfreeze:
        if epoch >= u.epoch:
            frozen -= {n for n in frozen if fnmatch.fnmatchcase(n, u.match)}
    return frozen


def check_patterns(cfg: ModelConfig, model: nn.Module) -> None:
    """Every freeze/unfreeze pattern must match a parameter (a typo would silently train all)."""
    names = [n for n, _ in model.named_parameters()]
    shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    problems = [Problem(("model", "freeze", i), f"`{p}` matches no parameter; parameter names: {shown}")
                for i, p in enumerate(cfg.freeze) if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    problems += [Problem(("model", "unfreeze", i, "match"), f"`{u.match}` matches no parameter; parameter names: "
                                                            f"{shown}")
                 for i, u in enumerate(cfg.unfreeze) if not any(fnmatch.fnmatchcase(n, u.match) for n in names)]
    if problems:
        raise RecipeError(problems)


def apply_freeze(model: nn.Module, cfg: ModelConfig, epoch: int) -> set[str]:
    """Set requires_grad for `epoch`; returns the frozen names."""
    params = dict(model.named_parameters())
    frozen = frozen_names(cfg, list(params), epoch)
    for name, p in params.items():
        p.requires_grad_(name not in frozen)
    return frozen


def set_train_mode(model: nn.Module, cfg: ModelConfig) -> None:
    """model.train(), keeping fully frozen BatchNorm layers in eval mode when `freeze_bn`."""
    model.train()
    if not cfg.freeze_bn:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            ps = list(module.parameters(recurse=False))
            if ps and not any(p.requires_grad for p in ps):
                module.eval()
