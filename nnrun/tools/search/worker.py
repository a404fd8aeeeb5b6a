"""One search worker: runs trials of every stage until each stage's budget is spent.

A worker is a plain process with the same :class:`WorkerPlan` (picklable data only), so
`--workers W` spawns W of them and `nnrun search ... --study NAME --storage URL` on another
machine runs the same code; Optuna's storage is the only thing they share. Each trial is a full
`nnrun train` run in its own folder, renamed on completion to `trial-0042-val_acc=0.9731/`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnrun.errors import NnrunError
from nnrun.recipe import Source, validate
from nnrun.recipe.schema import Recipe
from nnrun.recipe.search import Param, SearchSpec, Stage, override_text
from nnrun.runtime import recipe_threads
from nnrun.tools.search import study as studies
from nnrun.tools.search.sampling import suggest
from nnrun.tools.search.stages import narrow
from nnrun.training.callbacks import Callback
from nnrun.training.loggers import write_hparams
from nnrun.training.session import TrainResult, train_recipe

POLL_S = 1.0


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs, as plain data (it crosses process boundaries)."""

    recipe: dict  # the resolved base recipe (to_dict), search section included
    spec: SearchSpec
    out: str
    storage: str
    study: str
    seed: int
    threads: int | None = None
    device: str | None = None

    def stage_dir(self, k: int) -> Path:
        return Path(self.out) if len(self.spec.stages) == 1 else Path(self.out) / f"stage-{k + 1}"

    def study_name(self, k: int) -> str:
        return studies.stage_study_name(self.study, k, len(self.spec.stages))


class _Surplus(Exception):
    """The trial was created after the stage's budget was spent by other workers."""


class _Reporter(Callback):
    """Reports each evaluation's metric to Optuna and stops the run when the pruner says so."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric, self.pruned_at = trial, metric, None

    def on_eval_end(self, trainer, record: dict) -> None:
        value = record.get(self.metric)
        if value is None:
            return
        self.trial.report(float(value), step=len(trainer.state.history) - 1)
        finished = trainer.state.step >= trainer.settings.total_steps  # nothing left to save
        if not finished and self.trial.should_prune():
            self.pruned_at = record["epoch"]
            trainer.request_stop(f"pruned by the search at epoch {record['epoch']:g}")


def trial_overrides(plan: WorkerPlan, values: dict[str, Any], stage: Stage) -> list[str]:
    """The overrides that turn the base recipe into one trial's recipe."""
    out = [override_text(k, v) for k, v in values.items()]
    out += ["log.progress=none", f"train.monitor={plan.spec.metric}"]
    if stage.epochs is not None:
        out.append(f"train.epochs={stage.epochs}")
    if plan.threads and not plan.recipe["train"].get("threads"):
        out.append(f"train.threads={plan.threads}")
    return out


def _rename(src: Path, name: str) -> Path:
    dst, n = src.with_name(name), 1
    while dst.exists():
        dst, n = src.with_name(f"{name}-{n}"), n + 1
    try:
        src.rename(dst)
    except OSError:
        return src
    return dst


@recipe_threads
def train_trial(recipe: Recipe, *, run_dir: Path, callbacks: list[Callback], device: str | None) -> TrainResult:
    """One trial's training run (in the worker's own thread count; signals are the parent's business)."""
    return train_recipe(recipe, run_dir=run_dir, callbacks=callbacks, device=device)


class Objective:
    """The Optuna objective of one stage: sample, train, report, name the folder."""

    def __init__(self, plan: WorkerPlan, k: int, params: list[Param]):
        self.plan, self.k, self.params = plan, k, params
        self.stage = plan.spec.stages[k]

    def __call__(self, trial) -> float:
        trial.set_user_attr("worker", studies.worker_id())
        if studies.budget_used(trial.study, below=trial.number) >= self.stage.trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise _Surplus()
        values = suggest(trial, self.params)
        run_dir = self.plan.stage_dir(self.k) / f"trial-{trial.number:04d}-running"
        trial.set_user_attr("run_dir", str(run_dir))
        base = dict(self.plan.recipe, search={})
        try:
            recipe = validate(base, source=Source(f"trial {trial.number}"),
                              overrides=trial_overrides(self.plan, values, self.stage))
            reporter = _Reporter(trial, self.plan.spec.metric)
            result = train_trial(recipe, run_dir=run_dir, callbacks=[reporter], device=self.plan.device)
        except KeyboardInterrupt:
            trial.set_user_attr("lost", "interrupted")  # retried on --resume
            trial.set_user_attr("run_dir", str(_rename(run_dir, f"trial-{trial.number:04d}-interrupted")))
            raise
        except Exception as exc:
            trial.set_user_attr("error", str(exc)[:2000])
            trial.set_user_attr("run_dir", str(_rename(run_dir, f"trial-{trial.number:04d}-failed")))
            raise
        return self._finish(trial, values, result, reporter)

    def _finish(self, trial, values: dict, result, reporter: _Reporter) -> float:
        import optuna

        metric = self.plan.spec.metric
        value = result.best["value"] if result.best else float("nan")
        tag = "-pruned" if reporter.pruned_at is not None else ""
        final = _rename(result.run_dir, f"trial-{trial.number:04d}{tag}-{metric}={value:.4f}")
        trial.set_user_attr("run_dir", str(final))
        trial.set_user_attr("epochs", float(result.history[-1]["epoch"]) if result.history else 0.0)
        trial.set_user_attr("value", value if math.isfinite(value) else None)
        write_hparams(Path(self.plan.out) / "tb", f"{self.plan.study_name(self.k)}/trial-{trial.number:04d}",
                      values, {f"hparam/{metric}": value})
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"{metric}={value:.4f} at epoch {reporter.pruned_at:g}")
        if not math.isfinite(value):
            raise NnrunError(f"trial {trial.number} produced no finite {metric}")
        return value




# ---------------------------------------------------------------------------------------------
# the worker loop


def run_worker(plan: WorkerPlan, seed_offset: int = 0, *, after_trial: Callable[[], None] | None = None) -> None:
    """Run trials of every stage until all are done (waiting for other workers between stages).

    Args:
        plan: the search.
        seed_offset: this worker's sampler seed offset (distinct per worker).
        after_trial: called after each trial and narrowing (the in-process progress display).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = studies.open_storage(plan.storage)
    params = list(plan.spec.params)
    for k, stage in enumerate(plan.spec.stages):
        sampler = studies.make_sampler(plan.spec.sampler, plan.seed + 7919 * k + seed_offset, stage.trials)
        pruner = studies.make_pruner(plan.spec.pruner, startup=plan.spec.pruner_startup, warmup=plan.spec.pruner_warmup)
        study = studies.open_study(storage, plan.study_name(k), mode=plan.spec.mode, sampler=sampler, pruner=pruner)
        if k > 0:
            params = stage_space(plan, storage, k, params)
            if after_trial:
                after_trial()
        run_stage(study, Objective(plan, k, params), stage.trials, after_trial)


def stage_space(plan: WorkerPlan, storage, k: int, previous: list[Param]) -> list[Param]:
    """Stage k's distributions: stored in its study by the first worker to get there, or narrowed
    now around the best trials of stage k-1 (the same result in every worker)."""
    study = studies.open_study(storage, plan.study_name(k), mode=plan.spec.mode)
    stored = study.user_attrs.get("space")
    if stored:
        return [Param.from_dict(d) for d in stored]
    prev = studies.open_study(storage, plan.study_name(k - 1), mode=plan.spec.mode)
    finished = studies.finished_values(prev)
    if not finished:
        raise NnrunError(f"stage {k} finished no trial, so there is nothing to narrow around",
                         hint="look at the failed trials' errors (`error` in the table) and fix the recipe or space")
    new, lines = narrow(previous, finished, keep_top=plan.spec.stages[k].keep_top, mode=plan.spec.mode,
                        original=plan.spec.params)
    study.set_user_attr("space", [p.to_dict() for p in new])
    study.set_user_attr("narrowed", lines)
    return new


def run_stage(study, objective: Objective, budget: int, after_trial: Callable[[], None] | None) -> None:
    """Run trials until the stage has `budget` of them and none is running anywhere."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    def budget_callback(study, trial) -> None:
        if studies.budget_used(study) >= budget:
            study.stop()
        if after_trial:
            after_trial()

    studies.recover_lost_trials(study)
    while not studies.stage_done(study, budget):
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting or studies.budget_used(study) < budget:
            study.optimize(objective, catch=(Exception,), gc_after_trial=False,
                           callbacks=[MaxTrialsCallback(budget, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                                      budget_callback])
            continue
        time.sleep(POLL_S)  # other workers still run this stage's last trials
        studies.recover_lost_trials(study)
