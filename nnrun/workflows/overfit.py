"""`nnrun overfit-one-batch` as a function: recipe -> can the model memorize one fixed batch?

One batch is taken from the training split (normalized as in training) and used for both training
and evaluation (Lightning #15021: its ``overfit_batches`` evaluated on a different batch). Dropout and
weight decay are turned off (and said so); the recipe's optimizer and learning rate train it for up
to ``steps`` steps through :meth:`Trainer.train_step`, exactly as ``nnrun train`` trains, stopping as
soon as the batch is memorized. Around the run, the checks of :mod:`nnrun.diagnostics` each add a row.

PASS needs both: the batch memorized (classification: 100% accuracy and cross-entropy below
``LOSS_MARGIN`` above its floor; regression: MSE at most ``REGRESSION_FRACTION`` of the targets'
variance; judged in eval mode on the same batch) and no check FAILed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nnrun.config import Recipe
from nnrun.diagnostics import FAIL, PASS, Row
from nnrun.errors import OutputError
from nnrun.threads import recipe_threads
from nnrun.workflows.folders import fresh_dir

LOSS_MARGIN = 0.05
"""Classification: memorized when the loss is below floor + 0.05 (floor 0 without label smoothing)."""
REGRESSION_FRACTION = 0.01
"""Regression: memorized when the MSE is at most 1% of the targets' variance (R^2 >= 0.99)."""
DEFAULT_STEPS = 500


@dataclass
class OverfitSetup:
    """The built run and its fixed batch; tests and scripts may modify both before :func:`run_setup`."""

    recipe: Recipe
    components: Any          # nnrun.build.Components
    batch: tuple             # (x, y) on the device
    changes: list[str]


@dataclass
class OverfitResult:
    """The report: verdict, one row per check, the loss curve."""

    recipe: str
    verdict: str
    summary: str
    rows: list[Row]
    loss_curve: list[float]
    batch_size: int
    steps: int
    memorized_at: int | None
    threshold: float
    changes: list[str]
    seconds: float
    out_dir: Path | None = None
    final: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 on PASS, 1 on FAIL."""
        return 0 if self.verdict == PASS else 1

    def row(self, check: str) -> Row:
        """The row of one check by name."""
        return next(r for r in self.rows if r.check == check)

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "verdict": self.verdict, "summary": self.summary,
                "batch_size": self.batch_size, "steps": self.steps, "memorized_at": self.memorized_at,
                "threshold": self.threshold, "final": self.final, "changes": self.changes,
                "checks": [r.to_dict() for r in self.rows], "loss_curve": self.loss_curve,
                "out_dir": str(self.out_dir) if self.out_dir else None}

    def write_json(self, path: str | Path) -> Path:
        """Write the machine-readable report (verdict, every check's name/status/evidence)."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_clean(self.to_dict()), indent=2, allow_nan=False) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write the report {path}: {exc.strerror}",
                              hint="choose a writable path with --json") from exc
        return path


def _clean(v):
    """Strict JSON: NaN/Inf become null, anything unusual its string."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_clean(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return v if v is None or isinstance(v, (str, int, bool)) else str(v)


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
    import torch

    from nnrun.build import build, resolve_device

    recipe, changes = memorization_recipe(recipe, batch_size)
    c = build(recipe, device=resolve_device(device or recipe.train.device), base_dir=base_dir)
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
    from nnrun.freeze import apply_freeze, set_train_mode

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

def loss_threshold(recipe: Recipe, task: str, num_classes: int | None) -> float:
    """Classification: the label-smoothing floor + LOSS_MARGIN (the best achievable CE is the
    entropy of the smoothed target). Regression: unused here (see :func:`regression_tolerance`)."""
    eps = recipe.train.label_smoothing if task == "classification" else 0.0
    if not eps or not num_classes:
        return LOSS_MARGIN
    on, off = 1 - eps + eps / num_classes, eps / num_classes
    return -(on * math.log(on) + (num_classes - 1) * off * math.log(off)) + LOSS_MARGIN


def regression_tolerance(y) -> float:
    """MSE a memorized batch stays under: 1% of the targets' variance (of their mean square if constant)."""
    t = y.detach().float()
    var = float(t.var()) if t.shape[0] > 1 else 0.0
    scale = var if var > 0 else float((t ** 2).mean()) or 1.0
    return REGRESSION_FRACTION * scale


def evaluate_batch(model, loss_fn, x, y, task: str) -> dict:
    """Loss and accuracy (classification) or MSE (regression) of the batch in eval mode."""
    import torch

    from nnrun.losses import match_regression

    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
            res = {"loss": float(loss_fn(out, y))}
            if task == "classification":
                hits = int((out.argmax(dim=1) == y).sum())
                res.update(correct=hits, accuracy=hits / len(y))
            else:
                o, t = match_regression(out, y)
                res["mse"] = float(((o.float() - t.float()) ** 2).mean())
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode
    return res


def memorized(res: dict, task: str, threshold: float) -> bool:
    if task == "classification":
        return res["accuracy"] == 1.0 and res["loss"] < threshold
    return res["mse"] <= threshold


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
    from nnrun.diagnostics_activations import checks_at_init
    from nnrun.distributed import is_main_process

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
            from nnrun.loggers import TensorBoard
            writers.append(TensorBoard(out_dir / "tb"))
    else:
        out_dir = None
    log = None
    if not pre.fatal:
        log = train_loop(s, steps=steps, threshold=threshold, callbacks=[*callbacks, *writers])
    rows = post_rows(s, pre, log, threshold=threshold, steps=steps)
    result = _result(s, rows, log, threshold, time.perf_counter() - start, out_dir)
    if out_dir is not None:
        result.write_json(out_dir / "report.json")
    return result


def _prepare_out(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write the output folder {path}: {exc.strerror}",
                          hint="choose a writable folder with --out or log.run_dir=...") from exc


def _result(s: OverfitSetup, rows: list[Row], log, threshold: float, seconds: float,
            out_dir: Path | None) -> OverfitResult:
    n = int(s.batch[1].shape[0])
    mem = rows[0]
    failed = [r.check for r in rows[1:] if r.status == FAIL]
    at = log.memorized_at if log else None
    if mem.status == PASS and not failed:
        verdict, summary = PASS, f"PASS: memorized {n} example(s) at step {at}"
    elif mem.status == PASS:
        verdict, summary = FAIL, f"FAIL: memorized {n} example(s) at step {at}, but check(s) failed: " \
                                 + ", ".join(failed)
    else:
        verdict = FAIL
        summary = "FAIL: " + mem.evidence + (f"; failed checks: {', '.join(failed)}" if failed else "")
    return OverfitResult(recipe=s.recipe.name, verdict=verdict, summary=summary, rows=rows,
                         loss_curve=list(log.curve) if log else [], batch_size=n,
                         steps=len(log.curve) if log else 0, memorized_at=at, threshold=threshold,
                         changes=list(s.changes), seconds=seconds, out_dir=out_dir,
                         final=dict(log.final) if log else {})


# -- the training loop ------------------------------------------------------------------------

@dataclass
class TrainLog:
    """What the loop observed."""

    observer: Any
    curve: list[float] = field(default_factory=list)
    memorized_at: int | None = None
    final: dict = field(default_factory=dict)
    nonfinite_step: int | None = None
    norm_overflow: bool = False
    found: Any = None
    error: str | None = None
    final_stats: list | None = None
    symmetric_after: dict | None = None


def train_loop(s: OverfitSetup, *, steps: int, threshold: float, callbacks: Sequence = ()) -> TrainLog:
    """Train on the fixed batch with Trainer.train_step until memorized, non-finite, or `steps`."""
    from nnrun.diagnostics_activations import find_first_nonfinite, first_line
    from nnrun.diagnostics_training import StepObserver
    from nnrun.trainer import LoopSettings, Trainer

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
            _notify(trainer, callbacks, step, loss, gnorm_v)
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


def _notify(trainer, callbacks: Sequence, step: int, loss, grad_norm: float) -> None:
    """The trainer callbacks' view of one step (TensorBoard reads `step_series` or the logs)."""
    loss_v = float(loss)
    trainer.state.step, trainer.last_loss = step, loss
    trainer.step_series = [(step, {"train/loss": loss_v, "grad_norm": grad_norm})]
    for cb in callbacks:
        cb.on_step_end(trainer)
        cb.on_log(trainer, {"train/loss": loss_v, "grad_norm": grad_norm, **trainer.current_lrs()})


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
    from nnrun import diagnostics as D
    from nnrun.diagnostics_activations import probe_forward

    if log.error or log.nonfinite_step:
        return
    c, (x, y) = s.components, s.batch
    if not log.final:
        log.final = evaluate_batch(c.model, c.loss_fn, x, y, task)
    log.final_stats = probe_forward(c.model, x)[0]
    log.symmetric_after = D.symmetric_layers(c.model)


# -- the report ---------------------------------------------------------------------------------

def post_rows(s: OverfitSetup, pre, log: TrainLog | None, *, threshold: float, steps: int) -> list[Row]:
    """Every check's row, in report order."""
    from nnrun import diagnostics as D
    from nnrun import diagnostics_activations as A
    from nnrun import diagnostics_training as T

    c, lr, n = s.components, s.recipe.optimizer.lr, int(s.batch[1].shape[0])
    done = len(log.curve) if log else 0
    rows = [T.memorization_row(n, c.data.task, pre.rows, log, threshold=threshold, steps=steps),
            D.settings_row(s.recipe, n, s.changes)]
    rows += [pre.rows[k] for k in ("labels", "input statistics", "output layer", "initial loss", "forward pass")
             if k in pre.rows]
    final_stats = log.final_stats if log else None
    rows.append(D.symmetry_row(pre.symmetric, log.symmetric_after if log else None, output=pre.output, steps=done))
    if pre.init_stats:
        rows += [A.activation_scale_row(pre.init_stats, final_stats, output=pre.output),
                 A.dead_relu_row(pre.init_stats, final_stats, batch_size=n),
                 A.saturation_row(pre.init_stats, final_stats)]
    obs = log.observer if log else None
    rows += [T.grad_norm_row(obs.grad_first if obs else {}, obs.grad_last if obs else {}, last_step=done),
             T.update_ratio_row(obs.ratios() if obs else {}, lr=lr),
             T.no_grad_row(c.model, obs.got_grad if obs else set(), obs.nonzero if obs else set(), steps=done),
             T.optimizer_row(c.model, c.optimizer)]
    if log is not None and log.error is None:
        rows += T.nonfinite_rows(log.nonfinite_step, log.found, steps=done, lr=lr, overflow=log.norm_overflow)
    rows.append(pre.rows["BatchNorm batch size"])
    failed = [r.check for r in rows[1:] if r.status == FAIL]
    rows.append(T.loss_trend_row(log.curve if log else [], memorized=bool(log and log.memorized_at),
                                 threshold=threshold if c.data.task == "classification" else None, lr=lr,
                                 failed=failed))
    return rows
