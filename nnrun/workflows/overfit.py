"""`nnrun overfit-one-batch` as a function: recipe -> can the model memorize one fixed batch?

One batch is taken from the training split (normalized as in training) and used for both training
and evaluation (Lightning #15021: its ``overfit_batches`` evaluated on a different batch). Dropout and
weight decay are turned off (and said so); the recipe's optimizer and learning rate train it for up
to ``steps`` steps through :meth:`Trainer.train_step`, exactly as ``nnrun train`` trains, stopping as
soon as the batch is memorized. Around the run, the checks of :mod:`nnrun.tools.diagnostics` each
add a row; :mod:`nnrun.tools.diagnostics.report` decides the verdict.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from nnrun.build import build
from nnrun.components.freeze import apply_freeze, set_train_mode
from nnrun.errors import writing
from nnrun.recipe.schema import Recipe
from nnrun.runtime import is_main_process, recipe_threads, resolve_device
from nnrun.tools.diagnostics.activations import checks_at_init, first_line, probe_forward
from nnrun.tools.diagnostics.report import (
    OverfitResult,
    OverfitSetup,
    TrainLog,
    build_result,
    evaluate_batch,
    loss_threshold,
    memorized,
    post_rows,
    regression_tolerance,
)
from nnrun.tools.diagnostics.rows import symmetric_layers
from nnrun.tools.diagnostics.steps import StepObserver
from nnrun.training.guard import find_first_nonfinite
from nnrun.training.loggers import TensorBoard
from nnrun.training.trainer import LoopSettings, Trainer
from nnrun.workflows._folders import fresh_dir

DEFAULT_STEPS = 500


# -- setup -------------------------------------------------------------------------------------

def memorization_recipe(recipe: Recipe, batch_size: int | None) -> tuple[Recipe, list[str]]:
    """The recipe with what fights memorization turned off, and a line per change."""
    changes = []
    model, opt, data = recipe.model, recipe.optimizer, recipe.data
    if model.dropout > 0:
        changes.append(f"model.dropout {model.dropout:g} -> 0")
    if opt.weight_decay > 0:
        changes.append(f"optimizer.weight_decay {opt.weight_decay:g} -> 0")
    size = batch_size or data.batch_size
    recipe = dataclasses.replace(
        recipe, model=dataclasses.replace(model, dropout=0.0),
        optimizer=dataclasses.replace(opt, weight_decay=0.0),
        data=dataclasses.replace(data, batch_size=size, drop_last=False, num_workers=0))
    return recipe, changes


def setup(recipe: Recipe, *, batch_size: int | None = None, device: str | None = None,
          base_dir: Path | None = None) -> OverfitSetup:
    """Build the run and take its fixed batch (the first training batch of epoch 0).

    Args:
        recipe: a validated recipe.
        batch_size: examples in the fixed batch (default: the recipe's data.batch_size); 1 for one example.
        device: overrides train.device.
        base_dir: folder that relative data paths are resolved against.
    """
    recipe, changes = memorization_recipe(recipe, batch_size)
    c = build(recipe, device=resolve_device(device or recipe.train.device), base_dir=base_dir, one_batch=True)
    dropouts = [m for m in c.model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]
    for m in dropouts:  # python models ignore model.dropout
        m.p = 0.0
    if dropouts:
        changes.append(f"p -> 0 on {len(dropouts)} Dropout module(s) of the model")
    if recipe.schedule.name != "constant":
        changes.append(f"schedule.name {recipe.schedule.name} -> constant at the base optimizer.lr")
    _train_mode(c.model, recipe)
    x, y = next(iter(c.train_batches.epoch(0)))
    return OverfitSetup(recipe, c, (x.to(c.device), y.to(c.device)), changes)


def _train_mode(model, recipe: Recipe) -> None:
    """Freeze and set training mode as `nnrun train` does in epoch 0 (model.freeze, freeze_bn)."""
    if recipe.model.freeze:
        apply_freeze(model, recipe.model, 0)
    set_train_mode(model, recipe.model)


@recipe_threads
def run(recipe: Recipe, *, steps: int = DEFAULT_STEPS, batch_size: int | None = None, device: str | None = None,
        out: Path | str | None = None, callbacks: Sequence = (), base_dir: Path | None = None,
        write: bool = True) -> OverfitResult:
    """Set up and run the overfit-one-batch check (see :func:`setup` and :func:`run_setup`)."""
    return run_setup(setup(recipe, batch_size=batch_size, device=device, base_dir=base_dir),
                     steps=steps, out=out, callbacks=callbacks, write=write)


def new_out_dir(recipe: Recipe) -> Path:
    """`<log.run_dir>/<name>/overfit-<timestamp>/`, never reusing an existing folder."""
    return fresh_dir(recipe.log.run_dir, recipe.name, "overfit")


# -- criteria ------------------------------------------------------------------------------------


# -- the run -------------------------------------------------------------------------------------

def run_setup(s: OverfitSetup, *, steps: int = DEFAULT_STEPS, out: Path | str | None = None,
              callbacks: Sequence = (), write: bool = True) -> OverfitResult:
    """Run the checks and the training on the fixed batch.

    Args:
        s: from :func:`setup` (possibly modified).
        steps: the step budget; training stops early once the batch is memorized.
        out: output folder (TensorBoard scalars in ``tb/``, ``report.json``); default
            ``<log.run_dir>/<name>/overfit-<timestamp>/``.
        callbacks: trainer callbacks (the CLI's progress display); they see on_fit_start,
            on_step_end, on_log (every step) and on_fit_end.
        write: write the output folder (main process only).
    """
    start = time.perf_counter()
    c, (x, y) = s.components, s.batch
    task = c.data.task
    threshold = loss_threshold(s.recipe, task, c.data.num_classes) if task == "classification" \
        else regression_tolerance(y)
    pre = checks_at_init(c.model, c.loss_fn, x, y, data=c.data, normalizer=c.normalizer,
                         loss_name=s.recipe.train.loss)
    out_dir = Path(out) if out is not None else new_out_dir(s.recipe)
    writers = []
    if write and is_main_process():
        _prepare_out(out_dir)
        if s.recipe.log.tensorboard:
            writers.append(TensorBoard(out_dir / "tb"))
    else:
        out_dir = None
    log = None
    if not pre.fatal:
        log = train_loop(s, steps=steps, threshold=threshold, callbacks=[*callbacks, *writers])
    rows = post_rows(s, pre, log, threshold=threshold, steps=steps)
    result = build_result(s, rows, log, threshold, time.perf_counter() - start, out_dir)
    if out_dir is not None:
        result.write_json(out_dir / "report.json")
    return result


def _prepare_out(path: Path) -> None:
    with writing(f"the output folder {path}", hint="choose a writable folder with --out or log.run_dir=..."):
        path.mkdir(parents=True, exist_ok=True)


# -- the training loop ------------------------------------------------------------------------


def train_loop(s: OverfitSetup, *, steps: int, threshold: float, callbacks: Sequence = ()) -> TrainLog:
    """Train on the fixed batch with Trainer.train_step until memorized, non-finite, or `steps`."""
    c, (x, y) = s.components, s.batch
    trainer = Trainer(c, LoopSettings(total_steps=steps, log_every=1, eval_every=1, monitor="loss",
                                      mode="min", patience=None), callbacks)
    log, reason = TrainLog(StepObserver(c.model)), "finished"
    obs = log.observer
    for cb in callbacks:
        cb.on_fit_start(trainer)
    try:
        for step in range(1, steps + 1):
            obs.before()
            try:
                loss, _, gnorm = trainer.train_step([(x, y)], want_grad_norm=True)
            except (RuntimeError, ValueError, IndexError) as exc:
                log.error, reason = first_line(exc), "error"
                break
            finite = obs.after()
            c.optimizer.zero_grad(set_to_none=True)
            loss_v, gnorm_v, grads_finite = float(loss), float(gnorm), bool(finite)
            obs.read_norms()
            log.curve.append(loss_v)
            trainer.publish_step(step, loss, {"train/loss": loss_v, "grad_norm": gnorm_v})
            # The total norm can overflow while every gradient is finite; `nnrun train`'s guard
            # skips that update too, so it ends the run here as well.
            if not (math.isfinite(loss_v) and grads_finite and math.isfinite(gnorm_v)):
                log.nonfinite_step, reason = step, "non-finite"
                log.norm_overflow = grads_finite and not math.isfinite(gnorm_v)
                obs.restore()
                log.found = find_first_nonfinite(c.model, c.loss_fn, x, y)
                break
            if _maybe_memorized(s, log, loss_v, threshold, step):
                reason = "memorized"
                break
    finally:
        for cb in callbacks:
            cb.on_fit_end(trainer, reason)
    _after_training(s, log, c.data.task)
    return log


def _maybe_memorized(s: OverfitSetup, log: TrainLog, loss_v: float, threshold: float, step: int) -> bool:
    """Evaluate the same batch in eval mode when the training loss says it may be memorized."""
    c, (x, y), task = s.components, s.batch, s.components.data.task
    if task == "classification" and loss_v >= threshold:
        return False
    if task == "regression" and s.recipe.train.loss == "mse" and loss_v > threshold:
        return False
    res = evaluate_batch(c.model, c.loss_fn, x, y, task)
    if memorized(res, task, threshold):
        log.memorized_at, log.final = step, res
        return True
    return False


def _after_training(s: OverfitSetup, log: TrainLog, task: str) -> None:
    """Final metrics, activation statistics and symmetry after training (when the model is finite)."""
    if log.error or log.nonfinite_step:
        return
    c, (x, y) = s.components, s.batch
    if not log.final:
        log.final = evaluate_batch(c.model, c.loss_fn, x, y, task)
    log.final_stats = probe_forward(c.model, x)[0]
    log.symmetric_after = symmetric_layers(c.model)


# -- the report ---------------------------------------------------------------------------------

