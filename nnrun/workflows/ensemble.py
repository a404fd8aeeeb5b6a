"""`nnrun ensemble PATH...` as a function: checkpoints -> the ensemble's metrics and predictions.

Members are found under the paths (files, run folders, folders of runs such as a search study),
ranked by the metric stored with each checkpoint, checked for compatibility before any work, and
then evaluated one at a time (one model on the device at a time): their predictions are averaged
(mean probabilities, mean logits or majority vote), or their weights are (``weights`` mode, with
BatchNorm statistics measured both ways and an optional greedy soup).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nnrun import progress
from nnrun.components.losses import build_loss
from nnrun.data import load_data, make_batches, normalize_split
from nnrun.errors import DataError, NnrunError
from nnrun.inference import check_fits, predict, score, with_data_path, write_predictions
from nnrun.recipe.tables import metric_info, split_seed
from nnrun.runtime import cpu_settings, resolve_device, wants_flush
from nnrun.tools.ensemble.members import Averager, check_compatible, discover, load_members, rank
from nnrun.tools.ensemble.soups import SoupContext, export_checkpoint, greedy_soup, uniform_soup

if TYPE_CHECKING:
    from nnrun.tools.ensemble.members import Member


@dataclass
class MemberResult:
    """One member's line of the table."""

    label: str
    path: Path
    weights: str                 # ema | raw
    stored: float | None         # the stored ranking metric (`by`)
    metrics: dict                # on the ensemble's split
    val_metrics: dict | None = None
    in_soup: bool | None = None  # weights mode: whether the soup uses it


@dataclass
class WeightsResult:
    """How the weight average was made and what BatchNorm recomputation did (validation split)."""

    greedy: bool
    metric: str                  # the validation metric that decides (e.g. val_acc)
    bn: str                      # recomputed | averaged | none
    averaged_bn: dict
    recomputed_bn: dict | None
    ingredients: list[str]
    steps: list = field(default_factory=list)   # nnrun.ensemble_weights.GreedyStep (greedy only)


@dataclass
class EnsembleResult:
    mode: str
    split: str
    by: str                      # ranking metric (stored)
    metric: str                  # headline metric on the split, e.g. val_acc
    examples: int
    members: list[MemberResult]
    metrics: dict                # the ensemble's
    best_member: str
    gain: float                  # over the best member, positive = better (either direction)
    gain_over_mean: float        # over the members' mean
    outputs: object = field(repr=False)       # torch.Tensor [N, k]: softmax gives the probabilities
    targets: object = field(repr=False)
    predictions: object = field(default=None, repr=False)  # vote winners (vote mode)
    weights: WeightsResult | None = None
    out: Path | None = None
    export: Path | None = None


def run(paths: Sequence[str | Path], *, mode: str = "mean", top_k: int | None = None, by: str | None = None,
        split: str = "val", data_path: str | None = None, out: str | Path | None = None,
        export: str | Path | None = None, greedy: bool = False, use_ema: bool = True,
        all_checkpoints: bool = False, device: str = "auto") -> EnsembleResult:
    """Combine the checkpoints under ``paths`` and evaluate the ensemble on ``split``.

    Args:
        paths: checkpoint files, run folders, ensemble folders or folders of runs.
        mode: ``mean`` (probabilities), ``logits``, ``vote`` or ``weights``.
        top_k: keep the best K by ``by``; ``by`` defaults to the checkpoints' own monitor.
        split: ``val`` or ``test``; ``data_path`` predicts on another file/folder.
        out: write per-example predictions and probabilities (CSV).
        export: ``weights`` mode: write the averaged model as a checkpoint.
        greedy: ``weights`` mode: greedy soup instead of the uniform average.
        use_ema: use a checkpoint's EMA weights when it has them.
        all_checkpoints: take every checkpoint of a run folder, not only its best.
    """
    if greedy and mode != "weights":
        raise NnrunError("--greedy builds a weight soup", hint="use --mode weights --greedy")
    if export is not None and mode != "weights":
        raise NnrunError("--export writes averaged weights", hint="use --mode weights --export FILE")
    if split not in ("val", "test"):
        raise NnrunError(f"unknown split `{split}`", hint="use val or test")
    cands, by, values = rank(discover(paths, all_checkpoints=all_checkpoints), by=by, top_k=top_k)
    members = load_members(cands, values, use_ema=use_ema)
    for m in members:  # before the compatibility check, whose hints may suggest --data
        with_data_path(m.recipe(), data_path, f"member {m.label}")
    check_compatible(members, mode=mode, split=split, data_path=data_path)
    dev = resolve_device(device)
    cache = SplitCache(split, data_path)
    flush = wants_flush(members[0].recipe().train.flush_denormal, device=dev.type, precision="fp32")
    with cpu_settings(flush_denormal=flush):
        if mode == "weights":
            result = _weights(members, by, cache, dev, greedy=greedy, export=export)
        else:
            result = _predictions(members, by, mode, cache, dev)
    if out is not None:
        result.out = _write(out, result, members[0].data)
    return result


class SplitCache:
    """Each member's split, whitened with its own statistics; raw data loaded once per config."""

    def __init__(self, split: str, data_path: str | None):
        self.split, self.data_path, self._raw = split, data_path, {}

    def bundle(self, member: Member, *, with_test: bool):
        """The raw (unwhitened) DataBundle of the member's data config."""
        recipe = with_data_path(member.recipe(), self.data_path, f"member {member.label}")
        cfg = recipe.data
        seed = split_seed(recipe)
        key = (json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str), seed, with_test)
        if key not in self._raw:
            self._raw[key] = load_data(cfg, seed=seed, base_dir=None, with_test=with_test)
        return self._raw[key]

    def get(self, member: Member, split: str | None = None):
        """(whitened split, raw bundle) of ``split`` (default: the cache's split)."""
        split = split or self.split
        bundle = self.bundle(member, with_test=split == "test")
        part = bundle.require_test() if split == "test" else bundle.val
        if part is None:
            raise DataError(f"{member.label} has no {split} split (data.val_fraction is 0)",
                            hint="use --split test")
        check_fits(member.data, bundle, member.label)
        return normalize_split(part, member.payload["normalization"]), bundle


def _loss(member):
    return build_loss(member.recipe().train, task=member.data["task"])


def _member_outputs(member, cache, dev, split: str | None = None):
    part, _ = cache.get(member, split)
    model = member.build(dev)
    outputs, targets = predict(model, part, batch_size=member.recipe().data.eval_batch_size, device=dev,
                               description=f"member {member.label}: {part.num_examples:,} {split or cache.split} "
                                           "examples")
    del model
    return outputs, targets


def _same_targets(ref, targets, first, member, split: str):
    if ref is not None and not (ref.shape == targets.shape and torch.equal(ref, targets)):
        raise DataError(f"members {first.label} and {member.label} see different {split} examples",
                        hint="combine members trained on the same data split, or use --split test / --data")
    return targets if ref is None else ref


def _predictions(members, by: str, mode: str, cache, dev) -> EnsembleResult:
    task, split = members[0].data["task"], cache.split
    loss_fn, averager = _loss(members[0]), Averager(task, mode)
    reports, ref = [], None
    with progress.task(f"ensemble: predicting with {len(members)} members", len(members)) as bar:
        for m in members:
            outputs, targets = _member_outputs(m, cache, dev)
            ref = _same_targets(ref, targets, members[0], m, split)
            averager.add(outputs)
            metrics = score(outputs, targets, loss_fn, task=task, prefix=f"{split}_")
            reports.append(MemberResult(m.label, m.path, m.weights, m.stored, metrics))
            bar.advance(1)
    outputs, predictions = averager.result()
    metrics = score(outputs, ref, loss_fn, task=task, prefix=f"{split}_", predictions=predictions)
    return _summarize(mode, split, by, reports, metrics, outputs, ref, predictions, task)


def _headline(by: str, split: str, metrics: dict, task: str) -> str:
    base = by.split("_", 1)[1] if "_" in by else by
    name = f"{split}_{base}"
    return name if name in metrics else f"{split}_{'acc' if task == 'classification' else 'loss'}"


def _summarize(mode, split, by, reports, metrics, outputs, targets, predictions, task, **extra) -> EnsembleResult:
    name = _headline(by, split, metrics, task)
    sign = 1.0 if metric_info(name).mode == "max" else -1.0
    values = [r.metrics[name] for r in reports]
    best = max(range(len(values)), key=lambda i: sign * values[i])
    mean = sum(values) / len(values)
    return EnsembleResult(mode=mode, split=split, by=by, metric=name, examples=len(targets), members=reports,
                          metrics=metrics, best_member=reports[best].label,
                          gain=sign * (metrics[name] - values[best]), gain_over_mean=sign * (metrics[name] - mean),
                          outputs=outputs, targets=targets, predictions=predictions, **extra)


def _soup_context(members, by: str, cache, dev):
    first = members[0]
    recipe, task = first.recipe(), first.data["task"]
    val, bundle = cache.get(first, "val")
    train = normalize_split(bundle.train, first.payload["normalization"])
    bs = recipe.data.batch_size
    batches = make_batches(train, batch_size=bs, shuffle=True, seed=recipe.seed,
                           drop_last=train.num_examples > bs, device=dev)
    metric = _headline(by, "val", {f"val_{b}": 0 for b in ("acc", "loss", "mae", "rmse")}, task)
    if task == "classification" and metric in ("val_mae", "val_rmse"):
        metric = "val_acc"
    model = first.build(dev)
    return SoupContext(model=model, val=val, train_batches=batches, loss_fn=_loss(first), task=task,
                       device=dev, metric=metric, mode=metric_info(metric).mode,
                       batch_size=recipe.data.eval_batch_size)


def _weights(members, by: str, cache, dev, *, greedy: bool, export) -> EnsembleResult:
    ctx = _soup_context(members, by, cache, dev)
    split, task = cache.split, ctx.task
    reports, ref = [], None
    with progress.task(f"ensemble: evaluating {len(members)} members", len(members)) as bar:
        for m in members:
            outputs, targets = _member_outputs(m, cache, dev, "val")
            ref = _same_targets(ref, targets, members[0], m, "val")
            val = score(outputs, targets, ctx.loss_fn, task=task, prefix="val_")
            metrics = val if split == "val" else score(*_member_outputs(m, cache, dev), ctx.loss_fn, task=task,
                                                       prefix=f"{split}_")
            reports.append(MemberResult(m.label, m.path, m.weights, m.stored, metrics, val_metrics=val))
            bar.advance(1)
    sign = 1.0 if ctx.mode == "max" else -1.0
    order = sorted(range(len(members)), key=lambda i: (-sign * reports[i].val_metrics[ctx.metric], i))
    states = [members[i].state_dict for i in order]
    labels = [members[i].label for i in order]
    steps = []
    if greedy:
        soup, steps = greedy_soup(states, labels, ctx)
        used = {s.label for s in steps if s.kept}
    else:
        soup, used = uniform_soup(states, ctx), set(labels)
    for r in reports:
        r.in_soup = r.label in used
    ctx.model.load_state_dict(soup.state_dict)
    part = ctx.val if split == "val" else cache.get(members[0], split)[0]
    outputs, targets = predict(ctx.model, part, batch_size=ctx.batch_size, device=dev,
                               description=f"weight average: {part.num_examples:,} {split} examples")
    metrics = score(outputs, targets, ctx.loss_fn, task=task, prefix=f"{split}_")
    info = WeightsResult(greedy, ctx.metric, soup.bn, soup.averaged_bn, soup.recomputed_bn,
                         [label for label in labels if label in used], steps)
    exported = None
    if export is not None:
        exported = export_checkpoint(export, template=members[0].path, state_dict=soup.state_dict,
                                     metrics=soup.metrics, info={
                                         "mode": "greedy-soup" if greedy else "uniform-average",
                                         "members": [str(members[i].path) for i in order if members[i].label in used],
                                         "bn": soup.bn, "weights": members[0].weights})
    return _summarize("weights", split, by, reports, metrics, outputs, targets, None, task,
                      weights=info, export=exported)


def _write(path, result: EnsembleResult, data: dict) -> Path:
    """CSV as `nnrun predict` writes it: index, target, prediction, prob_<class>... (the
    ensemble's probabilities; in vote mode the prediction is the vote winner)."""
    return write_predictions(path, result.outputs, result.targets, task=data["task"],
                             class_names=data.get("class_names"), predictions=result.predictions)
