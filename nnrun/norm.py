"""Normalization layers placed between a linear/conv layer and its nonlinearity.

Placement follows the BatchNorm paper (Ioffe & Szegedy, ICML 2015): normalize ``Wu + b`` *before*
the nonlinearity. The layer feeding a norm is built without a bias by :mod:`nnrun.models`: batch and
instance norm subtract a per-channel mean, which cancels any per-channel bias exactly, and for
group/layer norm the norm's own shift ``beta`` plays the bias's role (common practice, e.g. the
GroupNorm paper's ResNets).

Kinds and what they compute (see design/algorithms.md section 5):

* ``batch``    -- BatchNorm1d/2d: statistics over the batch (and spatial positions); running
  statistics in eval mode, so train and eval outputs differ.
* ``group``    -- GroupNorm(G, C) (Wu & He, ECCV 2018): per example, over C/G channels (and positions);
  batch-size independent, identical in train and eval. G must divide C.
* ``layer``    -- LayerNorm (Ba et al. 2016): per example over all features. On conv maps it is
  built as GroupNorm(1, C), which normalizes over (C, H, W) exactly like ``LayerNorm([C, H, W])``
  but with one scale/shift per channel, so it does not fix the input's spatial size.
* ``instance`` -- InstanceNorm2d (Ulyanov et al. 2016) with ``affine=True`` (PyTorch's default is
  ``affine=False``, unlike BatchNorm): per example per channel over spatial positions only, so it is
  undefined for vectors and for 1x1 maps.
* ``none``     -- no layer.
"""

from __future__ import annotations

import math

from torch import nn

from nnrun.config import NORMS
from nnrun.errors import NnrunError, did_you_mean


def make_norm(kind: str, width: int, *, spatial: bool, groups: int) -> nn.Module | None:
    """Build the normalization layer for ``width`` features or channels.

    Args:
        kind: one of ``batch``, ``group``, ``layer``, ``instance``, ``none``.
        width: channels (``spatial=True``) or features (``spatial=False``) to normalize.
        spatial: True for conv feature maps ``(N, C, H, W)``, False for vectors ``(N, C)``.
        groups: GroupNorm groups (only used by ``group``).

    Returns:
        The layer, or None for ``none``.

    Raises:
        NnrunError: unknown kind, groups that do not divide ``width``, or instance norm on vectors.
    """
    problems = check_norm_fits(kind, groups, [width], spatial=spatial, labels=[f"a {width}-wide layer"])
    if problems:
        key, message = problems[0].split(": ", 1)
        raise NnrunError(message, where=key,
                         hint="pick a norm and groups that fit every layer (`nnrun check` lists them)")
    if kind == "none":
        return None
    if kind == "batch":
        return nn.BatchNorm2d(width) if spatial else nn.BatchNorm1d(width)
    if kind == "group":
        return nn.GroupNorm(groups, width)
    if kind == "layer":
        # GroupNorm(1, C) == LayerNorm over (C, H, W) with per-channel affine (GroupNorm paper, Fig. 2).
        return nn.GroupNorm(1, width) if spatial else nn.LayerNorm(width)
    return nn.InstanceNorm2d(width, affine=True)  # instance, spatial (vectors refused above)


def check_norm_fits(kind: str, groups: int, widths: list[int], *, spatial: bool = True,
                    labels: list[str] | None = None) -> list[str]:
    """The problems with using norm ``kind`` on layers of the given widths (empty when it fits).

    Args:
        kind: the norm kind (``model.norm``).
        groups: GroupNorm groups (``model.groups``).
        widths: the width of every normalized layer.
        spatial: whether those layers produce conv maps (False: vectors).
        labels: a name per width for the messages (default ``layer 1``, ``layer 2``...).

    Returns:
        Problem strings, each starting with its recipe key, e.g. ``model.groups: 8 does not divide
        width 12 of hidden layer 2; use a divisor of every width (e.g. 4)``.
    """
    if kind not in NORMS:
        return [f"model.norm: unknown norm `{kind}`{did_you_mean(kind, NORMS)}; "
                f"choose one of {', '.join(NORMS)}"]
    labels = labels or [f"layer {i + 1}" for i in range(len(widths))]
    if kind == "instance" and not spatial and widths:
        return [f"model.norm: instance norm normalizes each channel over its spatial positions, but "
                f"{labels[0]} outputs a vector with none; use layer, group or batch norm here"]
    if kind != "group" or not widths:
        return []
    bad = [f"width {w} of {label}" for w, label in zip(widths, labels) if w % groups]
    if not bad:
        return []
    return [f"model.groups: {groups} does not divide {' or '.join(bad)}; GroupNorm splits the channels "
            f"into equal groups, so use a divisor of every width (e.g. {suggest_groups(groups, widths)})"]


def suggest_groups(groups: int, widths: list[int]) -> int:
    """The largest divisor of every width that is not above ``groups`` (1 when nothing else fits)."""
    common = 0
    for w in widths:
        common = math.gcd(common, w)
    return max(d for d in range(1, min(groups, common) + 1) if common % d == 0)
