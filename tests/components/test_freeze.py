"""Freezing (nnrun/components/freeze.py) in real runs: frozen parameters stay bit-identical, gradual
unfreezing on schedule, and `freeze_bn` keeps BatchNorm running statistics."""

from __future__ import annotations

import torch

from nnrun import checkpoint
from nnrun import recipe as recipe_io
from nnrun.build import build

TB_ON = "log.tensorboard=true"  # these runs have always written TensorBoard too; train_tiny turns it off


def test_freeze_then_unfreeze_on_schedule(tiny_recipe, train_tiny):
    res = train_tiny([TB_ON, "train.epochs=1", "model.freeze=['body.1.*']"], name="one")
    res2 = train_tiny([TB_ON, "train.epochs=2", "model.freeze=['body.1.*']",
                       "model.unfreeze=[{epoch: 1, match: 'body.*'}]"], name="two")
    init = build(recipe_io.load(tiny_recipe), device=torch.device("cpu")).model.state_dict()
    after1 = checkpoint.load(res.last_checkpoint)["model"]
    after2 = checkpoint.load(res2.last_checkpoint)["model"]
    assert torch.equal(after1["body.1.weight"], init["body.1.weight"])  # frozen: exactly unchanged
    assert not torch.equal(after1["head.weight"], init["head.weight"])
    assert not torch.equal(after2["body.1.weight"], init["body.1.weight"])  # unfrozen at epoch 1


def test_freeze_bn_keeps_running_statistics(tiny_recipe, train_tiny):
    overrides = ["train.epochs=1", "model.norm=batch", "model.freeze=['body.1.*', 'body.2.*']"]
    init = build(recipe_io.load(tiny_recipe, overrides), device=torch.device("cpu")).model.state_dict()
    res = train_tiny([TB_ON, *overrides, "model.freeze_bn=true"])
    after = checkpoint.load(res.last_checkpoint)["model"]
    assert torch.equal(after["body.2.running_mean"], init["body.2.running_mean"])
    res2 = train_tiny([TB_ON, *overrides], name="bn-trains")
    assert not torch.equal(checkpoint.load(res2.last_checkpoint)["model"]["body.2.running_mean"],
                           init["body.2.running_mean"])
