"""`nnrun predict` as a function: checkpoint -> per-example predictions and metrics.

The model is rebuilt from the recipe stored in the checkpoint (:mod:`nnrun.inference`) and its
inputs are whitened with the checkpoint's own training-split statistics, never with statistics of
the data predicted on. The model runs over the split once; the metrics come from those outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nnrun import checkpoint
from nnrun.build import build_data
from nnrun.components.losses import build_loss
from nnrun.errors import NnrunError
from nnrun.inference import (
    check_fits,
    predict,
    rebuild_model,
    score,
    stored_recipe,
    with_data_path,
    write_predictions,
)
from nnrun.runtime import cpu_settings, resolve_device, wants_flush


@dataclass
class PredictResult:
    checkpoint: Path
    split: str
    examples: int
    metrics: dict
    out: Path | None
    outputs: torch.Tensor    # [N, outputs]: logits (classification) or values
    targets: torch.Tensor    # [N]


def run(checkpoint_path: str | Path, *, split: str = "val", data_path: str | None = None,
        device: str = "auto", out: str | Path | None = None) -> PredictResult:
    """Predict a split of the checkpoint's data (or of `data_path`, same source kind)."""
    payload = checkpoint.load(checkpoint_path)
    dev = resolve_device(device)
    recipe = stored_recipe(payload)
    recipe = with_data_path(recipe, data_path, "this checkpoint")
    flush = wants_flush(recipe.train.flush_denormal, device=dev.type, precision="fp32")
    with cpu_settings(threads=recipe.train.threads, flush_denormal=flush):
        return _predict(payload, recipe, dev, split=split, out=out)


def _predict(payload: dict, recipe, dev: torch.device, *, split: str, out) -> PredictResult:
    model = rebuild_model(payload, device=dev)
    bundle, _ = build_data(recipe, base_dir=None, normalizer=payload["normalization"], with_test=split == "test")
    part = bundle.require_test() if split == "test" else bundle.val
    if part is None:
        raise NnrunError(f"the recipe has no {split} split (data.val_fraction is 0)", hint="use --split test")
    check_fits(payload["data"], bundle, f"checkpoint {payload['path']}")
    outputs, targets = predict(model, part, batch_size=recipe.data.eval_batch_size, device=dev,
                               description=f"predicting {part.num_examples:,} {split} examples")
    metrics = score(outputs, targets, build_loss(recipe.train, task=bundle.task), task=bundle.task, prefix=f"{split}_")
    out_path = write_predictions(out, outputs, targets, task=bundle.task,
                                 class_names=payload["data"].get("class_names")) if out else None
    return PredictResult(Path(payload["path"]), split, len(outputs), metrics, out_path, outputs, targets)
