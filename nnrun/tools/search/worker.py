"""One search worker: runs trials of every stage until each stage's budget is spent.

A worker is a plain process with the same :class:`WorkerPlan` (picklable data only), so
`--workers W` spawns W of them and `nnrun search ... --study NAME --storage URL` on another
machine runs the same code; Optuna's storage is the only thing they share. Each trial is a full
`nnrun train` run in its own folder, renamed on completion to `trial-0042-val_acc=0.9731/`.

A stop asked for by a signal (:mod:`nnrun.tools.search.stopping`) stops the running trial at its
next step; the trial is then failed as interrupted (folder `trial-0042-interrupted/`) and the
worker raises :class:`TrialInterrupted` instead of starting another one. A trial whose folder
cannot be written ends the whole worker with the :class:`~nnrun.errors.OutputError`.
"""

from __future__ import annotations

import contextlib
import errno
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnrun import progress
from nnrun.errors import NnrunError, OutputError, writing
from nnrun.files import crash_point
from nnrun.recipe import Source, validate
from nnrun.recipe.schema import Recipe
from nnrun.recipe.search import Param, SearchSpec, Stage, override_text
from nnrun.runtime import recipe_threads
from nnrun.signals import Stopped
from nnrun.tools.search import recovery
from nnrun.tools.search import study as studies
from nnrun.tools.search.recovery import rename_free
from nnrun.tools.search.sampling import suggest
from nnrun.tools.search.stages import narrow
from nnrun.tools.search.stopping import INTERRUPTED, StopFlag, TrialInterrupted
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


class _TrialProgress(Callback):
    """A trial's optimizer steps as a :mod:`nnrun.progress` task (shown when the trial runs in the
    process that reports progress: `--workers 1`; a spawned worker has no reporter)."""

    def __init__(self, description: str):
        self.description, self.stack, self.handle, self.step = description, contextlib.ExitStack(), None, 0

    def on_fit_start(self, trainer) -> None:
        self.step = trainer.state.step
        total = trainer.settings.total_steps
        self.handle = self.stack.enter_context(progress.task(self.description, total, done=min(self.step, total)))

    def on_step_end(self, trainer) -> None:
        if self.handle is not None and trainer.state.step > self.step:
            self.handle.advance(trainer.state.step - self.step)
            self.step = trainer.state.step

    def close(self) -> None:
        self.stack.close()


def trial_overrides(plan: WorkerPlan, values: dict[str, Any], stage: Stage) -> list[str]:
    """The overrides that turn the base recipe into one trial's recipe."""
    out = [override_text(k, v) for k, v in values.items()]
    out += ["log.progress=none", f"train.monitor={plan.spec.metric}"]
    if stage.epochs is not None:
        out.append(f"train.epochs={stage.epochs}")
    if plan.threads and not plan.recipe["train"].get("threads"):
        out.append(f"train.threads={plan.threads}")
    return out


WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR,
                errno.EISDIR}


def write_failure(exc: BaseException, run_dir: Path, number: int) -> OutputError | None:
    """The OutputError that ends the whole search, when a trial failed because its folder (or the
    search folder) cannot be written: every later trial would fail the same way."""
    if isinstance(exc, OutputError):
        return exc
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return OutputError(f"cannot write trial {number}'s folder {run_dir}: {exc.strerror or exc}",
                           hint="choose a writable folder with --out (and check its free space)")
    return None


@recipe_threads
def train_trial(recipe: Recipe, *, run_dir: Path, callbacks: list[Callback], device: str | None,
                stop: StopFlag) -> TrainResult:
    """One trial's training run (in the worker's own thread count); a stop request stops it at the
    next step."""
    return train_recipe(recipe, run_dir=run_dir, callbacks=callbacks, device=device, fit_context=stop.attach)


class Objective:
    """The Optuna objective of one stage: sample, train, report, name the folder.

    A trial whose folder cannot be written fails as lost (it is retried on `--resume`) and the
    error is kept in `write_error`: the worker loop raises it, since every trial would fail so.
    """

    def __init__(self, plan: WorkerPlan, k: int, params: list[Param], stop: StopFlag | None = None):
        self.plan, self.k, self.params = plan, k, params
        self.stage = plan.spec.stages[k]
        self.stop = stop or StopFlag()
        self.write_error: OutputError | None = None

    def __call__(self, trial) -> float:
        trial.set_user_attr("worker", recovery.worker_id())
        if self.stop.signum is not None:  # asked to stop before this trial began: retried on --resume
            trial.set_user_attr("lost", INTERRUPTED)
            self.stop.check()
        if studies.budget_used(trial.study, below=trial.number) >= self.stage.trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise _Surplus()
        values = suggest(trial, self.params)
        run_dir = self.plan.stage_dir(self.k) / f"trial-{trial.number:04d}-running"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        try:
            result, reporter = self._train(trial, values, run_dir)
            if self.stop.signum is not None and result.stop_reason == INTERRUPTED:  # else it trained to the end
                raise TrialInterrupted(self.stop.signum)
            return self._finish(trial, values, result, reporter)
        except (KeyboardInterrupt, Stopped) as exc:  # retried on --resume
            self._lost(trial, INTERRUPTED, INTERRUPTED)
            if isinstance(exc, TrialInterrupted):
                raise
            raise TrialInterrupted(getattr(exc, "signum", None) or self.stop.signum or signal.SIGINT) from exc
        except Exception as exc:
            self.write_error = write_failure(exc, run_dir, trial.number)
            if self.write_error is not None:
                self._lost(trial, f"not written: {self.write_error.message}", "failed")
                raise
            trial.set_user_attr("error", str(exc)[:2000])
            trial.set_user_attr("run_dir", str(rename_free(run_dir, f"trial-{trial.number:04d}-failed").resolve()))
            raise

    def _train(self, trial, values: dict, run_dir: Path):
        recipe = validate(dict(self.plan.recipe, search={}), source=Source(f"trial {trial.number}"),
                          overrides=trial_overrides(self.plan, values, self.stage))
        reporter = _Reporter(trial, self.plan.spec.metric)
        shown = _TrialProgress(f"trial {trial.number}{self._stage_label()}: optimizer steps")
        try:
            result = train_trial(recipe, run_dir=run_dir, callbacks=[reporter, shown], device=self.plan.device,
                                 stop=self.stop)
        finally:
            shown.close()
        return result, reporter

    def _stage_label(self) -> str:
        return f" (stage {self.k + 1})" if len(self.plan.spec.stages) > 1 else ""

    def _lost(self, trial, note: str, kind: str) -> None:
        with contextlib.suppress(Exception):  # recorded as well as the storage allows; the trial fails anyway
            recovery.record_lost(trial.study._storage, trial, note=note, kind=kind,
                                 stage_dir=self.plan.stage_dir(self.k))

    def _finish(self, trial, values: dict, result, reporter: _Reporter) -> float:
        import optuna

        metric = self.plan.spec.metric
        value = result.best["value"] if result.best else float("nan")
        tag = "-pruned" if reporter.pruned_at is not None else ""
        final = rename_free(result.run_dir, f"trial-{trial.number:04d}{tag}-{metric}={value:.4f}")
        crash_point("trial:after-rename")
        trial.set_user_attr("run_dir", str(final.resolve()))
        trial.set_user_attr("epochs", float(result.history[-1]["epoch"]) if result.history else 0.0)
        trial.set_user_attr("value", value if math.isfinite(value) else None)
        tb = Path(self.plan.out) / "tb"
        with writing(f"TensorBoard hparams in {tb}", hint="choose a writable folder with --out"):
            write_hparams(tb, f"{self.plan.study_name(self.k)}/trial-{trial.number:04d}", values,
                          {f"hparam/{metric}": value})
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"{metric}={value:.4f} at epoch {reporter.pruned_at:g}")
        if not math.isfinite(value):
            raise NnrunError(f"trial {trial.number} produced no finite {metric}")
        return value




# ---------------------------------------------------------------------------------------------
# the worker loop


def run_worker(plan: WorkerPlan, seed_offset: int = 0, *, after_trial: Callable[[], None] | None = None,
               stop: StopFlag | None = None) -> None:
    """Run trials of every stage until all are done (waiting for other workers between stages).

    Args:
        plan: the search.
        seed_offset: this worker's sampler seed offset (distinct per worker).
        after_trial: called after each trial and narrowing (the in-process progress display).
        stop: set by the signal handlers: the running trial stops at its next step and the worker
            raises :class:`TrialInterrupted` instead of starting anything new.

    Raises:
        TrialInterrupted: a stop was asked for.
        OutputError: a trial's folder (or the search's tb/) cannot be written.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    stop = stop or StopFlag()
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
        run_stage(study, Objective(plan, k, params, stop), stage.trials, after_trial)
    stop.check()


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

    stop, stage_dir = objective.stop, objective.plan.stage_dir(objective.k)

    def budget_callback(study, trial) -> None:
        if objective.write_error is not None:
            raise objective.write_error
        if studies.budget_used(study) >= budget or stop.signum is not None:
            study.stop()
        if after_trial:
            after_trial()

    recovery.recover_lost_trials(study, stage_dir)
    while not studies.stage_done(study, budget):
        stop.check()
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting or studies.budget_used(study) < budget:
            study.optimize(objective, catch=(Exception,), gc_after_trial=False,
                           callbacks=[MaxTrialsCallback(budget, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                                      budget_callback])
            continue
        time.sleep(POLL_S)  # other workers still run this stage's last trials
        recovery.recover_lost_trials(study, stage_dir)
    stop.check()
