"""One training run into a run folder: build the components, attach the file writers, fit.

`nnrun train` (:mod:`nnrun.workflows.train`, which adds signals, seed ensembles and resuming from
a path) and every search trial run through here. The run folder holds `recipe.yaml` (resolved),
`metrics.jsonl`, `tb/`, `checkpoints/` and, once a fit ends (stopped or not), `summary.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nnrun import distributed
from nnrun.build import build, monitor_of
from nnrun.distributed import SINGLE, World
from nnrun.errors import CheckpointError, NnrunError, OutputError, writing
from nnrun.files import dumps, write_text_atomic
from nnrun.recipe import dump
from nnrun.recipe.schema import Recipe
from nnrun.recipe.tables import metric_info, split_seed
from nnrun.runtime import resolve_device, seed_everything
from nnrun.training import loggers, run_folder
from nnrun.training.callbacks import Callback, Checkpointing, EnsembleMembers, MetricsFile
from nnrun.training.trainer import LoopSettings, Trainer

SUMMARY = "summary.json"


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    monitor: str
    best: dict | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    history: list[dict]
    stop_reason: str
    steps: int
    seconds: float
    signal: str | None = None
    events: list[str] = field(default_factory=list)   # warnings: gradient spikes, skips, rollbacks
    members: list[TrainResult] = field(default_factory=list)  # ensemble.seeds: one result per seed
    diagnostic_checkpoint: Path | None = None          # written when the non-finite guard stopped the run

    @property
    def interrupted(self) -> bool:
        return self.signal is not None


def prepare_run_dir(path: Path, recipe: Recipe) -> Path:
    """Write the resolved recipe and the checkpoints folder, or explain why it cannot."""
    with writing(f"the run folder {path}", hint="choose a writable folder with --run-dir or log.run_dir=..."):
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_text_atomic(path / "recipe.yaml", dump(recipe), what=f"the run folder {path}",
                      hint="choose a writable folder with --run-dir or log.run_dir=...")
    return path


def file_writers(run_dir: Path, recipe: Recipe, *, monitor: str, mode: str,
                 resumed_from: Path | None = None) -> tuple[list[Callback], Checkpointing]:
    """The callbacks that write the run folder (main process only) and the checkpoint saver among them."""
    prepare_run_dir(run_dir, recipe)
    saver = Checkpointing(run_dir / "checkpoints", monitor=monitor, mode=mode, top_k=recipe.train.save_top_k,
                          resumed_from=resumed_from)
    writers: list[Callback] = [MetricsFile(run_dir / "metrics.jsonl"), saver]
    if recipe.ensemble.strategy in ("checkpoints", "snapshots"):
        writers.append(EnsembleMembers(run_dir / "checkpoints" / "members", strategy=recipe.ensemble.strategy,
                                       every=recipe.ensemble.every))
    if recipe.log.tensorboard:
        writers.insert(0, loggers.TensorBoard(run_dir / "tb", histograms_every=recipe.log.histograms_every))
    return writers, saver


class Session:
    """A built run ready to fit: the trainer with its callbacks, and where its files go.

    The main process claims the run folder for the session's lifetime (:mod:`.run_folder`): a
    folder that holds another run is refused unless this is a resume.

    Args:
        recipe: a validated recipe.
        run_dir: the run folder.
        payload: a checkpoint to continue exactly (its normalization statistics are reused).
        device: overrides `train.device`.
        callbacks: extra callbacks (e.g. the CLI's progress display).
        base_dir: folder that relative data paths are resolved against.
        notes: called with the build's notes (parameter groups, init.from report) before training.
    """

    def __init__(self, recipe: Recipe, *, run_dir: Path, payload: dict | None = None,
                 device: str | torch.device | None = None, callbacks: Sequence[Callback] = (),
                 base_dir: Path | None = None, notes: Callable[[list[str]], None] | None = None,
                 world: World = SINGLE):
        self.run_dir, self.saver, self.trainer, self.lock, self.world = run_dir, None, None, None, world
        self.resumed = payload is not None
        error = None
        try:
            self.lock = run_folder.claim(run_dir, resume=payload is not None) if world.is_main else None
            self._build(recipe, payload, device, callbacks, base_dir, notes)
        except Exception as exc:  # noqa: BLE001 - every process must learn that one failed (below)
            error = exc
        try:
            agree_on_setup(world, error)
        except BaseException:
            self.close()
            raise

    def _build(self, recipe, payload, device, callbacks, base_dir, notes) -> None:
        if recipe.log.tensorboard and self.world.is_main:
            loggers.preload()
        dev = device if isinstance(device, torch.device) else resolve_device(device or recipe.train.device)
        c = build(recipe, device=dev, base_dir=base_dir, normalizer=payload["normalization"] if payload else None,
                  world=self.world)
        if self.world.active:
            seed_everything(recipe.seed + self.world.rank)  # own dropout streams; init came from the same seed
        self.monitor, mode = monitor_of(recipe, c.data.task)
        if notes is not None and c.notes:
            notes(c.notes)
        settings = LoopSettings(total_steps=c.total_steps, log_every=recipe.log.every_n_steps,
                                eval_every=recipe.train.eval_every, monitor=self.monitor, mode=mode,
                                patience=recipe.train.patience)
        writers: list[Callback] = []
        if self.world.is_main:
            writers, self.saver = file_writers(self.run_dir, recipe, monitor=self.monitor, mode=mode,
                                               resumed_from=Path(payload["path"]) if payload else None)
        self.trainer: Trainer | None = Trainer(c, settings, [*callbacks, *writers])
        if payload is not None:
            resumed = _load_for_resume(self.trainer, payload)
            if notes is not None and resumed:
                notes(resumed)

    def close(self) -> None:
        """Close the callbacks' files and threads and give up the claim on the run folder."""
        for cb in self.trainer.callbacks if self.trainer is not None else []:
            cb.close()
        if self.lock is not None:
            self.lock.release()

    def fit(self) -> TrainResult:
        """Train to the end (or the stop) and say what was produced. A write failure (full disk,
        read-only folder) ends the run with one message that names the last complete checkpoint."""
        start = time.perf_counter()
        try:
            state = self.trainer.fit()
            if self.saver is not None:  # the main process writes the run folder
                write_summary(self.run_dir, state, monitor=self.monitor, mode=self.trainer.settings.mode,
                              seconds=time.perf_counter() - start, resumed=self.resumed)
        except OutputError as exc:
            last = self.saver.last_complete if self.saver else None
            raise OutputError(f"{exc.message} (last complete checkpoint: {last or 'none yet'})",
                              hint=exc.hint) from exc
        finally:
            self.close()
        saver = self.saver
        return TrainResult(run_dir=self.run_dir, monitor=self.monitor, best=state.best,
                           best_checkpoint=saver.best_path if saver else None,
                           last_checkpoint=saver.last_path if saver else None, history=state.history,
                           stop_reason=state.stop_reason or "finished", steps=state.step,
                           seconds=time.perf_counter() - start, events=list(state.events),
                           diagnostic_checkpoint=saver.diagnostic_path if saver else None)


def write_summary(run_dir: Path, state, *, monitor: str, mode: str, seconds: float, resumed: bool) -> None:
    """`summary.json` (strict JSON, atomic): how the fit ended, its steps and its wall time, for
    `nnrun report`. A resumed run adds its time to the summary it continues (a run killed before it
    wrote one counts only the fits that ended)."""
    path = run_dir / SUMMARY
    before = 0.0
    if resumed:
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            before = float(json.loads(path.read_text()).get("seconds") or 0.0)
    summary = {"stop_reason": state.stop_reason or "finished", "steps": state.step,
               "seconds": round(before + seconds, 3), "monitor": monitor, "mode": mode, "best": state.best,
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text_atomic(path, dumps(summary, indent=1) + "\n", what=str(path),
                      hint="free space or choose a writable folder with --run-dir")


FitContext = Callable[[Trainer], AbstractContextManager[dict]]
"""Wraps a fit (e.g. with signal handlers that ask the trainer to stop); yields what it caught."""


def train_recipe(recipe: Recipe, *, run_dir: Path, payload: dict | None = None,
                 fit_context: FitContext | None = None, **session_args) -> TrainResult:
    """Train one recipe into `run_dir` (a seed ensemble into `run_dir/seed-<i>/`).

    Args:
        recipe: a validated recipe.
        run_dir: the run folder.
        payload: a checkpoint to continue exactly.
        fit_context: wraps each fit (the CLI's signal handlers); its dict's `signal` is reported.
        session_args: the other arguments of :class:`Session`.
    """
    if recipe.ensemble.seeds > 1 and payload is None:
        return _train_seeds(recipe, run_dir=run_dir, fit_context=fit_context, **session_args)
    session = Session(recipe, run_dir=run_dir, payload=payload, **session_args)
    with (fit_context or (lambda trainer: contextlib.nullcontext({})))(session.trainer) as caught:
        result = session.fit()
    result.signal = caught.get("signal")
    return result


def seed_member(recipe: Recipe, index: int) -> Recipe:
    """Member `index` of a seed ensemble: its own seed (init, data order, dropout), the shared
    validation split (split_seed fixed to the recipe's), and no further seeds."""
    return dataclasses.replace(recipe, seed=recipe.seed + index,
                               data=dataclasses.replace(recipe.data, split_seed=split_seed(recipe)),
                               ensemble=dataclasses.replace(recipe.ensemble, seeds=1))


def _train_seeds(recipe: Recipe, *, run_dir: Path, **kwargs) -> TrainResult:
    """`ensemble.seeds: N`: N runs into `<run_dir>/seed-<i>/`, one ensemble folder."""
    members: list[TrainResult] = []
    for i in range(recipe.ensemble.seeds):
        result = train_recipe(seed_member(recipe, i), run_dir=run_dir / f"seed-{i}", **kwargs)
        members.append(result)
        if result.interrupted or result.stop_reason.startswith("non-finite"):
            break
    ranked = [m for m in members if m.best]
    best = None
    if ranked:
        pick = max if metric_info(members[0].monitor).mode == "max" else min
        best = pick(ranked, key=lambda m: m.best["value"])
    last = members[-1]
    return TrainResult(run_dir=run_dir, monitor=last.monitor, best=best.best if best else None,
                       best_checkpoint=best.best_checkpoint if best else None,
                       last_checkpoint=last.last_checkpoint, history=last.history,
                       stop_reason=(f"finished {len(members)} seed runs" if last.stop_reason == "finished"
                                    and len(members) == recipe.ensemble.seeds else last.stop_reason),
                       steps=sum(m.steps for m in members), seconds=sum(m.seconds for m in members),
                       signal=last.signal, events=[e for m in members for e in m.events], members=members)


def agree_on_setup(world: World, error: Exception | None) -> None:
    """Raise `error`, and with several processes make all of them stop when any one failed to set up
    (the others would wait in the first collective until the 30-minute timeout). Rank 0 reports
    the first failure, whichever process had it; the CLI prints on rank 0 only."""
    if not world.active:
        if error is not None:
            raise error
        return
    failures = [(rank, text) for rank, text in enumerate(distributed.gather_objects(
        None if error is None else str(error))) if text is not None]
    if error is not None:
        raise error
    if failures:
        rank, text = failures[0]
        raise NnrunError(f"process {rank} of {world.world_size} could not start: {text}")


def _load_for_resume(trainer: Trainer, payload: dict) -> list[str]:
    """Restore the trainer, turning a model that does not fit the checkpoint into a clear error."""
    try:
        return trainer.load_state_dict(payload)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CheckpointError(f"{payload['path']} does not fit this recipe's model or optimizer ({first})",
                              hint="resume with the run's own recipe (omit RECIPE) or a compatible one") from exc
