"""Rules of the component sections (model and its norm, init, loss), checked before anything is built.

The builders in :mod:`nnrun.components` call the same functions again with what only the data can
tell (the input shape, the task), so a rule lives once and `nnrun check` can run it without
importing torch. Each returns :class:`~nnrun.errors.Problem` values, empty when the section fits.
"""

from __future__ import annotations

import math
import re

from nnrun.errors import Problem, did_you_mean
from nnrun.recipe.schema import NORMS, InitConfig, ModelConfig, TrainConfig
from nnrun.recipe.tables import TASKS

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
REGRESSION_LOSSES = ("mse", "l1", "smooth_l1")

# ---------------------------------------------------------------------------------------------
# model and normalization


def model_problems(cfg: ModelConfig, *, input_shape: tuple[int, ...] | None = None) -> list[Problem]:
    """Cross-field problems of a ``model`` section.

    Args:
        cfg: the ``model`` section.
        input_shape: shape of one example when known (without the batch dimension); with it the
            rules also check that a cnn/resnet gets image input and that pooling keeps every map
            at least 1x1.
    """
    problems = _unused_field_problems(cfg)
    if cfg.arch == "mlp":
        labels = [f"hidden layer {i + 1}" for i in range(len(cfg.hidden))]
        problems += check_norm_fits(cfg.norm, cfg.groups, list(cfg.hidden), spatial=False, labels=labels)
    elif cfg.arch in ("cnn", "resnet"):
        problems += _image_problems(cfg, input_shape)
    elif not cfg.factory:
        problems.append(Problem(("model", "factory"), "arch python needs a factory `module:function` "
                                                      "returning an nn.Module"))
    elif not _FACTORY.match(cfg.factory):
        problems.append(Problem(("model", "factory"), f"`{cfg.factory}` does not look like `module:function` "
                                                      "(e.g. `mypkg.nets:make_model`)"))
    return problems


def _unused_field_problems(cfg: ModelConfig) -> list[Problem]:
    """Settings that only the python arch reads, set on a built-in arch (they would be ignored)."""
    problems = []
    if cfg.arch != "python" and cfg.factory:
        problems.append(Problem(("model", "factory"), f"only used by arch python (arch is {cfg.arch}); "
                                                      "remove it or set model.arch: python"))
    if cfg.arch != "python" and cfg.kwargs:
        problems.append(Problem(("model", "kwargs"), f"only used by arch python (arch is {cfg.arch}); remove it"))
    return problems


def _image_problems(cfg: ModelConfig, input_shape: tuple[int, ...] | None) -> list[Problem]:
    """Norm fit, input rank and map-size problems of the conv archs."""
    problems: list[Problem] = []
    if cfg.arch == "cnn":
        labels = [f"conv stage {i + 1}" for i in range(len(cfg.channels))]
        problems += check_norm_fits(cfg.norm, cfg.groups, list(cfg.channels), labels=labels)
        if cfg.head_hidden and cfg.norm != "instance":  # instance: the vector layer gets no norm
            problems += check_norm_fits(cfg.norm, cfg.groups, [cfg.head_hidden], spatial=False,
                                        labels=["model.head_hidden"])
    else:
        if (cfg.depth - 2) % 6:
            n = max(1, round((cfg.depth - 2) / 6))
            problems.append(Problem(("model", "depth"), f"{cfg.depth} is not 6n+2 (three stages of n two-layer "
                                                        f"blocks plus the stem and the head); use {6 * n + 2} "
                                                        f"or {6 * n + 8}"))
        widths = [cfg.width, 2 * cfg.width, 4 * cfg.width]
        problems += check_norm_fits(cfg.norm, cfg.groups, widths, labels=[f"stage {i + 1}" for i in range(3)])
    if input_shape is None:
        return problems
    chw = image_shape(input_shape)
    if chw is None:
        return problems + [Problem(("model", "arch"), f"{cfg.arch} needs image input (C, H, W) or (H, W), but "
                                                      f"the data's input shape is {tuple(input_shape)}; use "
                                                      "arch: mlp for vectors")]
    return problems + _map_problems(cfg, chw)


def _map_problems(cfg: ModelConfig, chw: tuple[int, int, int]) -> list[Problem]:
    """Pooling below 1x1 and instance norm on 1x1 maps, for a known input size."""
    _, h, w = chw
    if cfg.arch == "cnn":
        maps = cnn_maps(cfg, h, w)
        if cfg.pool != "none":
            for i, (mh, mw) in enumerate(maps[:-1]):
                if mh < 2 or mw < 2:
                    return [Problem(("model", "channels"), f"{len(cfg.channels)} stages of 2x2 {cfg.pool} "
                                                           f"pooling shrink the {h}x{w} input below 1x1 at stage "
                                                           f"{i + 1}; use at most {i} stages or model.pool: none")]
        normed = maps[:-1]
    else:
        normed = [(h, w)]
        for _ in range(2):
            normed.append(((normed[-1][0] + 1) // 2, (normed[-1][1] + 1) // 2))  # 3x3, stride 2, pad 1
    if cfg.norm == "instance" and any(mh * mw < 2 for mh, mw in normed):
        return [Problem(("model", "norm"), f"instance norm needs more than one position per channel, but a "
                                           f"{h}x{w} input leaves a 1x1 map in the {cfg.arch}; use group or "
                                           "batch norm")]
    return []


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(C, H, W)`` for image-like input shapes (``(H, W)`` means one channel), else None."""
    if len(input_shape) == 3:
        return tuple(input_shape)  # type: ignore[return-value]
    if len(input_shape) == 2:
        return (1, *input_shape)  # type: ignore[return-value]
    return None


def cnn_maps(cfg: ModelConfig, h: int, w: int) -> list[tuple[int, int]]:
    """Map size after each conv (before its pooling), then the final size after the last stage."""
    pad = cfg.kernel // 2
    maps = []
    for _ in cfg.channels:
        h, w = h + 2 * pad - cfg.kernel + 1, w + 2 * pad - cfg.kernel + 1
        maps.append((h, w))
        if cfg.pool != "none":
            h, w = h // 2, w // 2
    return maps + [(h, w)]


def check_norm_fits(kind: str, groups: int, widths: list[int], *, spatial: bool = True,
                    labels: list[str] | None = None) -> list[Problem]:
    """The problems with using norm ``kind`` on layers of the given widths (empty when it fits).

    Args:
        kind: the norm kind (``model.norm``).
        groups: GroupNorm groups (``model.groups``).
        widths: the width of every normalized layer.
        spatial: whether those layers produce conv maps (False: vectors).
        labels: a name per width for the messages (default ``layer 1``, ``layer 2``...).
    """
    if kind not in NORMS:
        return [Problem(("model", "norm"), f"unknown norm `{kind}`{did_you_mean(kind, NORMS)}; "
                                           f"choose one of {', '.join(NORMS)}")]
    labels = labels or [f"layer {i + 1}" for i in range(len(widths))]
    if kind == "instance" and not spatial and widths:
        return [Problem(("model", "norm"), f"instance norm normalizes each channel over its spatial positions, "
                                           f"but {labels[0]} outputs a vector with none; use layer, group or "
                                           "batch norm here")]
    if kind != "group" or not widths:
        return []
    bad = [f"width {w} of {label}" for w, label in zip(widths, labels) if w % groups]
    if not bad:
        return []
    return [Problem(("model", "groups"), f"{groups} does not divide {' or '.join(bad)}; GroupNorm splits the "
                                         "channels into equal groups, so use a divisor of every width (e.g. "
                                         f"{suggest_groups(groups, widths)})")]


def suggest_groups(groups: int, widths: list[int]) -> int:
    """The largest divisor of every width that is not above ``groups`` (1 when nothing else fits)."""
    common = 0
    for w in widths:
        common = math.gcd(common, w)
    return max(d for d in range(1, min(groups, common) + 1) if common % d == 0)


# ---------------------------------------------------------------------------------------------
# init and loss

GAIN_SCHEMES = ("xavier_uniform", "xavier_normal", "orthogonal")
NONLINEARITY_SCHEMES = GAIN_SCHEMES + ("kaiming_uniform", "kaiming_normal")
ZEROS_WHY = ("every unit in a layer would compute the same output and get the same gradient, so the "
             "units never become different (symmetry is never broken), and with zero weights and ReLU "
             "the earlier layers get exactly zero gradient")


def init_problems(cfg: InitConfig) -> list[Problem]:
    """Problems with an ``init`` section; empty when the section is usable."""
    problems = []
    if cfg.weights == "zeros":
        problems.append(Problem(("init", "weights"), f"zeros is refused: {ZEROS_WHY}; use kaiming_normal "
                                                     "(ReLU family) or xavier_uniform (tanh/sigmoid)"))
    if cfg.gain is not None and cfg.weights not in GAIN_SCHEMES:
        problems.append(Problem(("init", "gain"), f"only xavier_* and orthogonal use a gain, not {cfg.weights}; "
                                                  "remove it (kaiming derives its gain from init.nonlinearity)"))
    if cfg.mode != "fan_in" and not cfg.weights.startswith("kaiming"):
        problems.append(Problem(("init", "mode"), f"only kaiming_* use a fan mode, not {cfg.weights}; remove it"))
    if cfg.nonlinearity != "auto" and cfg.weights not in NONLINEARITY_SCHEMES:
        problems.append(Problem(("init", "nonlinearity"), f"{cfg.weights} uses no gain, so the nonlinearity is "
                                                          "ignored; remove it"))
    if cfg.bias != 0 and cfg.weights in ("default", "lsuv"):
        what = "leaves PyTorch's init untouched" if cfg.weights == "default" else "zeroes every bias"
        problems.append(Problem(("init", "bias"), f"weights={cfg.weights} {what}, so bias={cfg.bias} would be "
                                                  "ignored; remove it or pick an explicit scheme"))
    return problems


def loss_problems(train_cfg: TrainConfig, *, task: str | None) -> list[Problem]:
    """Problems of the loss settings for ``task`` (None or ``auto`` while it is not known yet,
    which checks only what does not depend on the task)."""
    problems = []
    loss = train_cfg.loss
    if train_cfg.label_smoothing > 0 and loss != "cross_entropy":
        problems.append(Problem(("train", "label_smoothing"), f"only applies to cross_entropy, not {loss}; "
                                                              "remove it or use loss: cross_entropy"))
    if task == "classification" and loss in REGRESSION_LOSSES:
        problems.append(Problem(("train", "loss"), f"{loss} on class indices treats the labels as ordered "
                                                   "numbers (class 9 'far' from class 1) and the outputs as one "
                                                   "value; use cross_entropy on logits for classification"))
    if task == "regression" and loss == "cross_entropy":
        problems.append(Problem(("train", "loss"), "cross_entropy needs class labels, but the task is "
                                                   "regression; use mse, l1 or smooth_l1"))
    if task not in (None, "auto") + TASKS:
        problems.append(Problem(("data", "task"), f"unknown task `{task}`; use classification or regression"))
    return problems
