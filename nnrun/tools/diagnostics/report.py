"""The verdict of `nnrun overfit-one-batch`: when a batch counts as memorized, and the report.

PASS needs both: the batch memorized (classification: 100% accuracy and cross-entropy below
``LOSS_MARGIN`` above its floor; regression: MSE at most ``REGRESSION_FRACTION`` of the targets'
variance; judged in eval mode on the same batch) and no check FAILed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nnrun.components.losses import match_regression
from nnrun.errors import writing
from nnrun.files import dumps
from nnrun.recipe.schema import Recipe
from nnrun.tools.diagnostics import activations
from nnrun.tools.diagnostics import rows as checks
from nnrun.tools.diagnostics import steps as step_rows
from nnrun.tools.diagnostics.rows import FAIL, PASS, Row

if TYPE_CHECKING:
    from nnrun.build import Components


@dataclass
class OverfitSetup:
    """The built run and its fixed batch; tests and scripts may modify both before :func:`run_setup`."""

    recipe: Recipe
    components: Components
    batch: tuple             # (x, y) on the device
    changes: list[str]


LOSS_MARGIN = 0.05
"""Classification: memorized when the loss is below floor + 0.05 (floor 0 without label smoothing)."""


REGRESSION_FRACTION = 0.01
"""Regression: memorized when the MSE is at most 1% of the targets' variance (R^2 >= 0.99)."""


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
        with writing(f"the report {path}", hint="choose a writable path with --json"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps(self.to_dict(), indent=2) + "\n")
        return path




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


def post_rows(s: OverfitSetup, pre, log: TrainLog | None, *, threshold: float, steps: int) -> list[Row]:
    """Every check's row, in report order."""
    c, lr, n = s.components, s.recipe.optimizer.lr, int(s.batch[1].shape[0])
    done = len(log.curve) if log else 0
    rows = [step_rows.memorization_row(n, c.data.task, pre.rows, log, threshold=threshold, steps=steps),
            checks.settings_row(s.recipe, n, s.changes)]
    rows += [pre.rows[k] for k in ("labels", "input statistics", "output layer", "initial loss", "forward pass")
             if k in pre.rows]
    final_stats = log.final_stats if log else None
    rows.append(checks.symmetry_row(pre.symmetric, log.symmetric_after if log else None, output=pre.output, steps=done))
    if pre.init_stats:
        rows += [activations.activation_scale_row(pre.init_stats, final_stats, output=pre.output),
                 activations.dead_relu_row(pre.init_stats, final_stats, batch_size=n),
                 activations.saturation_row(pre.init_stats, final_stats)]
    obs = log.observer if log else None
    rows += [step_rows.grad_norm_row(obs.grad_first if obs else {}, obs.grad_last if obs else {}, last_step=done),
             step_rows.update_ratio_row(obs.ratios() if obs else {}, lr=lr),
             step_rows.no_grad_row(c.model, obs.got_grad if obs else set(), obs.nonzero if obs else set(), steps=done),
             step_rows.optimizer_row(c.model, c.optimizer)]
    if log is not None and log.error is None:
        rows += step_rows.nonfinite_rows(log.nonfinite_step, log.found, steps=done, lr=lr, overflow=log.norm_overflow)
    rows.append(pre.rows["BatchNorm batch size"])
    failed = [r.check for r in rows[1:] if r.status == FAIL]
    rows.append(step_rows.loss_trend_row(log.curve if log else [], memorized=bool(log and log.memorized_at),
                                 threshold=threshold if c.data.task == "classification" else None, lr=lr,
                                 failed=failed))
    return rows


def build_result(s: OverfitSetup, rows: list[Row], log, threshold: float, seconds: float,
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
