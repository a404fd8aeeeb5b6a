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

from torch import nn

from nnrun.errors import NnrunError
from nnrun.recipe.rules import check_norm_fits


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
        path, message, _ = problems[0]
        raise NnrunError(message, where=".".join(path),
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


