"""Prediction from checkpoints, shared by `predict`, `ensemble` and the search: rebuild a model
from the recipe stored in its checkpoint, run it over a split once, score the outputs, and write
the predictions CSV.

Inputs are always whitened with the checkpoint's own training-split statistics, never with
statistics of the data predicted on.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import torch
from torch import nn

from nnrun import progress
from nnrun.components.losses import summed_loss
from nnrun.components.metrics import Accumulator
from nnrun.components.models import build_model
from nnrun.data import make_batches
from nnrun.data.splits import DataBundle, Split
from nnrun.errors import CheckpointError, DataError, writing
from nnrun.recipe import from_dict
from nnrun.recipe.schema import Recipe
from nnrun.recipe.tables import SOURCES


def stored_recipe(payload: dict) -> Recipe:
    """The recipe a checkpoint was trained with (validated again)."""
    return from_dict(payload["recipe"], label=f"{payload['path']} (stored recipe)")


def with_data_path(recipe: Recipe, data_path: str | Path | None, label: str) -> Recipe:
    """The stored recipe predicting on ``data_path`` (`--data`) instead of its own data.path.

    Raises:
        DataError: the checkpoint's source reads no file or folder (digits, python), so there is
            nothing for `--data` to replace.
    """
    if data_path is None:
        return recipe
    source = recipe.data.source
    if SOURCES[source].path_kind is None:
        raise DataError(f"`--data` needs a file-based source; {label} was trained on `{source}`",
                        hint=f"drop --data to predict on its own `{source}` data (--split val or test), or "
                             "train on a file-based source (csv, npz, image-folder, mnist, fashion-mnist, cifar10)")
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, path=str(Path(data_path).resolve())))


def rebuild_model(payload: dict, *, device: torch.device | str, state_dict: dict | None = None,
                  label: str | None = None) -> nn.Module:
    """The network of a checkpoint's stored recipe with its weights (or `state_dict`), in eval mode.

    Raises:
        CheckpointError: the weights do not fit the model the stored recipe describes.
    """
    info = payload["data"]
    model = build_model(stored_recipe(payload).model, input_shape=tuple(info["input_shape"]),
                        num_outputs=info["num_outputs"])
    try:
        model.load_state_dict(payload["model"] if state_dict is None else state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{label or payload['path']}: the weights do not fit the model of its stored recipe "
                              f"({first})", hint="use a checkpoint written by `nnrun train`") from exc
    return model.to(device).eval()


def check_fits(info: dict, bundle: DataBundle, label: str) -> None:
    """Refuse data the checkpoint's model cannot predict: another input shape or another task.

    Args:
        info: the checkpoint's `data` entry (task, input_shape, ...).
        bundle: the loaded data.
        label: names the checkpoint in the message.
    """
    if tuple(bundle.input_shape) != tuple(info["input_shape"]):
        raise DataError(f"the data has examples of shape {tuple(bundle.input_shape)} but {label} expects "
                        f"{tuple(info['input_shape'])}", hint="predict on data like the training data")
    if bundle.task != info["task"]:
        raise DataError(f"the data looks like a {bundle.task} task but {label} is {info['task']}",
                        hint="predict on data like the training data")


def predict(model: nn.Module, part: Split, *, batch_size: int, device: torch.device | str,
            description: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs float32 [N, k], targets [N]) of ``model`` on a split, batch by batch, on the CPU.

    Progress goes to :mod:`nnrun.progress` as one task of one step per batch, named
    ``description`` (default `predicting N examples`)."""
    batches = make_batches(part, batch_size=batch_size, shuffle=False, seed=0, device=torch.device(device))
    outputs, targets = [], []
    model.eval()
    with torch.inference_mode(), progress.task(description or f"predicting {part.num_examples:,} examples",
                                               len(batches)) as bar:
        for x, y in batches.epoch(0):
            outputs.append(model(x.to(device, non_blocking=True)).float().cpu())
            targets.append(y.cpu())
            bar.advance(1)
    return torch.cat(outputs), torch.cat(targets)


def score(outputs: torch.Tensor, targets: torch.Tensor, loss_fn: nn.Module, *, task: str, prefix: str,
          predictions: torch.Tensor | None = None) -> dict[str, float]:
    """Metrics as :func:`nnrun.components.metrics.evaluate` reports them, from outputs already
    computed; ``predictions`` (vote winners) replace the argmax for the accuracy."""
    acc = Accumulator(task, "cpu")
    acc.update(outputs, targets, summed_loss(loss_fn, outputs, targets))
    metrics = acc.compute(prefix)
    if predictions is not None:
        metrics[f"{prefix}acc"] = float((predictions == targets).double().mean())
    return metrics


def write_predictions(path: str | Path, outputs: torch.Tensor, targets: torch.Tensor, *, task: str,
                      class_names: list[str] | None = None, predictions: torch.Tensor | None = None) -> Path:
    """CSV: index, target, prediction, and a probability per class (classification); index,
    targets and predicted values (regression).

    Args:
        outputs: logits (classification) or values.
        predictions: the predicted classes when they are not the argmax (an ensemble's vote).
    """
    path = Path(path)
    with writing(f"predictions {path}", hint="choose a writable path with --out"):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            if task == "classification":
                probs = torch.softmax(outputs.double(), dim=1)
                preds = probs.argmax(1) if predictions is None else predictions
                names = class_names or [str(i) for i in range(probs.shape[1])]
                writer.writerow(["index", "target", "prediction", *[f"prob_{n}" for n in names]])
                for i, (t, p, row) in enumerate(zip(targets.tolist(), preds.tolist(), probs.tolist())):
                    writer.writerow([i, t, p, *[f"{v:.6g}" for v in row]])
            else:
                flat = outputs.reshape(len(outputs), -1).tolist()
                tflat = targets.reshape(len(targets), -1).tolist()
                writer.writerow(["index", *[f"target_{j}" for j in range(len(tflat[0]))],
                                 *[f"prediction_{j}" for j in range(len(flat[0]))]])
                for i, (t, p) in enumerate(zip(tflat, flat)):
                    writer.writerow([i, *t, *[f"{v:.6g}" for v in p]])
    return path
