"""The optimizer section (nnrun/components/optim.py): named parameter groups keep their rate ratios
under every schedule, discriminative rates, `no_decay`, and a group pattern that matches nothing."""

from __future__ import annotations

import pytest
import torch

from nnrun import recipe as recipe_io
from nnrun.build import build
from nnrun.errors import RecipeError

TB_ON = "log.tensorboard=true"  # these runs have always written TensorBoard too; train_tiny turns it off


@pytest.mark.parametrize("schedule", [["schedule.name=cosine"], ["schedule.name=one_cycle"],
                                      ["schedule.name=cyclic", "schedule.step_size=0.5"]])
def test_groups_keep_their_ratio_under_every_schedule(train_tiny, schedule):
    res = train_tiny([TB_ON, "optimizer.groups=[{match: 'head.*', lr_mult: 10, name: head}]",
                      "optimizer.weight_decay=0.01", "optimizer.no_decay=[bias]", *schedule])
    for record in res.history:
        assert record["lr/head"] == pytest.approx(10 * record["lr/default"])
        assert record["lr/head.no_decay"] == pytest.approx(record["lr/head"])


def test_discriminative_rates_fall_by_the_factor_towards_the_input(tiny_recipe):
    r = recipe_io.load(tiny_recipe, ["model.hidden=[16, 16]", "optimizer.discriminative={groups: 3, factor: 4}"])
    c = build(r, device=torch.device("cpu"))
    lrs = {g["name"]: g["lr"] for g in c.optimizer.param_groups}
    assert lrs["layers2"] == pytest.approx(3e-3) and lrs["layers1"] == pytest.approx(3e-3 / 4)
    assert lrs["layers0"] == pytest.approx(3e-3 / 16)
    assert c.optimizer.param_groups[-1]["param_names"][-1] == "head.bias"  # the head is in the fastest group


def test_no_decay_exempts_biases_and_norm_parameters(tiny_recipe):
    r = recipe_io.load(tiny_recipe, ["model.norm=batch", "optimizer.weight_decay=0.1",
                                     "optimizer.no_decay=[bias, norm]"])
    c = build(r, device=torch.device("cpu"))
    by_name = {g["name"]: g for g in c.optimizer.param_groups}
    assert by_name["default"]["weight_decay"] == 0.1 and by_name["default.no_decay"]["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in by_name["default"]["params"])
    assert len(by_name["default.no_decay"]["params"]) == 3  # BN weight, BN bias, head bias


def test_unknown_group_pattern_is_a_recipe_error(tiny_recipe):
    r = recipe_io.load(tiny_recipe, ["optimizer.groups=[{match: 'encoder.*'}]"])
    with pytest.raises(RecipeError, match="matches no parameter"):
        build(r, device=torch.device("cpu"))
