"""`nnrun predict` as a function: checkpoint -> per-example predictions and metrics.

The model is rebuilt from the recipe stored in the checkpoint and its inputs are whitened with
the checkpoint's own training-split statistics, never with statistics of the data predicted on.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from nnrun.errors import DataError, NnrunError, OutputError


@dataclass
class PredictResult:
    checkpoint: Path
    split: str
    examples: int
    metrics: dict
    out: Path | None
    outputs: object          # torch.Tensor [N, outputs]: logits (classification) or values
    targets: object | None   # torch.Tensor [N] or None


def load_model(payload: dict, *, device):
    """Rebuild a checkpoint's model from its stored recipe and weights, in eval mode."""
    from nnrun import recipe as recipe_io
    from nnrun.models import build_model

    recipe = recipe_io.from_dict(payload["recipe"], label=f"{payload['path']} (stored recipe)")
    info = payload["data"]
    model = build_model(recipe.model, input_shape=tuple(info["input_shape"]), num_outputs=info["num_outputs"])
    model.load_state_dict(payload["model"])
    return recipe, model.to(device).eval()


def _check_fits(info: dict, bundle, source: str) -> None:
    if tuple(info["input_shape"]) != tuple(bundle.input_shape):
        raise DataError(f"{source}: examples have shape {tuple(bundle.input_shape)} but the checkpoint's "
                        f"model expects {tuple(info['input_shape'])}", hint="predict on data like the training data")
    if info["task"] != bundle.task:
        raise DataError(f"{source}: looks like a {bundle.task} task but the checkpoint is {info['task']}")


def run(checkpoint_path: str | Path, *, split: str = "val", data_path: str | None = None,
        device: str = "auto", out: str | Path | None = None) -> PredictResult:
    """Predict a split of the checkpoint's data (or of `data_path`, same source kind)."""
    import torch

    from nnrun import checkpoint
    from nnrun.build import build_data, resolve_device
    from nnrun.data.batching import make_batches
    from nnrun.losses import build_loss
    from nnrun.metrics import evaluate

    payload = checkpoint.load(checkpoint_path)
    dev = resolve_device(device)
    recipe, model = load_model(payload, device=dev)
    if data_path is not None:
        recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, path=str(Path(data_path).resolve())))
    bundle, _ = build_data(recipe, base_dir=None, normalizer=payload["normalization"], with_test=split == "test")
    part = bundle.require_test() if split == "test" else bundle.val
    if part is None:
        raise NnrunError(f"the recipe has no {split} split (data.val_fraction is 0)", hint="use --split test")
    _check_fits(payload["data"], bundle, recipe.data.path or recipe.data.source)
    batches = make_batches(part, batch_size=recipe.data.eval_batch_size, shuffle=False, seed=recipe.seed,
                           device=dev)
    outputs, targets = [], []
    with torch.inference_mode():
        for x, y in batches.epoch(0):
            outputs.append(model(x.to(dev, non_blocking=True)).float().cpu())
            targets.append(y)
    outputs, targets = torch.cat(outputs), torch.cat(targets)
    loss_fn = build_loss(recipe.train, task=bundle.task)
    metrics = evaluate(model, batches.epoch(0), loss_fn, task=bundle.task, device=dev, prefix=f"{split}_")
    out_path = write_predictions(out, outputs, targets, task=bundle.task,
                                 class_names=payload["data"].get("class_names")) if out else None
    return PredictResult(Path(payload["path"]), split, len(outputs), metrics, out_path, outputs, targets)


def write_predictions(path, outputs, targets, *, task: str, class_names=None) -> Path:
    """CSV: index, target, prediction, and a probability per class (classification)."""
    import torch

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            if task == "classification":
                probs = torch.softmax(outputs, dim=1)
                names = class_names or [str(i) for i in range(probs.shape[1])]
                w.writerow(["index", "target", "prediction", *[f"prob_{n}" for n in names]])
                for i, (t, p) in enumerate(zip(targets.tolist(), probs.tolist())):
                    w.writerow([i, t, max(range(len(p)), key=p.__getitem__), *[f"{v:.6g}" for v in p]])
            else:
                flat = outputs.reshape(len(outputs), -1).tolist()
                tflat = targets.reshape(len(targets), -1).tolist()
                w.writerow(["index", *[f"target_{j}" for j in range(len(tflat[0]))],
                            *[f"prediction_{j}" for j in range(len(flat[0]))]])
                for i, (t, p) in enumerate(zip(tflat, flat)):
                    w.writerow([i, *t, *[f"{v:.6g}" for v in p]])
    except OSError as exc:
        raise OutputError(f"cannot write predictions to {path}: {exc.strerror}",
                          hint="choose a writable path with --out") from exc
    return path
