"""`nnrun train` as a function: recipe -> trained run folder.

The run folder holds `recipe.yaml` (resolved), `metrics.jsonl`, `tb/` and `checkpoints/`.
Ctrl-C and SIGTERM stop the loop at the next step boundary and save `last.pt` with the position
inside the epoch and every RNG state, so `--resume` continues bit-identically.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from nnrun import recipe as recipe_io
from nnrun.config import Recipe
from nnrun.errors import OutputError
from nnrun.trainer import Callback, LoopSettings, Trainer
from nnrun.threads import recipe_threads
from nnrun.workflows.folders import fresh_dir

INTERRUPTED = "interrupted"


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
    members: list["TrainResult"] = field(default_factory=list)  # ensemble.seeds: one result per seed
    diagnostic_checkpoint: Path | None = None          # written when the non-finite guard stopped the run

    @property
    def interrupted(self) -> bool:
        return self.signal is not None


def new_run_dir(recipe: Recipe) -> Path:
    """`<log.run_dir>/<name>/<timestamp>/`, never reusing an existing folder."""
    return fresh_dir(recipe.log.run_dir, recipe.name)


def prepare_run_dir(path: Path, recipe: Recipe) -> Path:
    """Create the run folder and write the resolved recipe, or explain why it cannot."""
    try:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (path / "recipe.yaml").write_text(recipe_io.dump(recipe))
    except OSError as exc:
        raise OutputError(f"cannot write the run folder {path}: {exc.strerror}",
                          hint="choose a writable folder with --run-dir or log.run_dir=...") from exc
    return path


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[dict]:
    """SIGINT/SIGTERM ask the trainer to stop at the next step; a second SIGINT aborts."""
    caught: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught["signal"] = signal.Signals(signum).name
        trainer.request_stop(INTERRUPTED)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@recipe_threads
def run(recipe: Recipe, *, run_dir: Path | None = None, resume: Path | str | None = None,
        device: str | None = None, callbacks: Sequence[Callback] = (), base_dir: Path | None = None,
        handle_signals: bool = True, notes=None) -> TrainResult:
    """Train a recipe; with `resume`, continue the run that wrote that checkpoint exactly.

    Args:
        recipe: a validated recipe.
        run_dir: where to write; default a new `<log.run_dir>/<name>/<timestamp>/`, or the
            resumed run's own folder.
        resume: a checkpoint file or run folder to continue from.
        device: overrides `train.device` (auto, cpu, cuda).
        callbacks: extra callbacks (e.g. the CLI's progress display).
        base_dir: folder that relative data paths are resolved against (the recipe's folder).
        handle_signals: install the Ctrl-C / SIGTERM handlers (main thread only).
        notes: called with the build's notes (parameter groups, init.from report) before training.
    """
    import torch

    from nnrun import checkpoint
    from nnrun.build import build, monitor_of, resolve_device
    from nnrun.callbacks import Checkpointing, EnsembleMembers, MetricsFile
    from nnrun.distributed import is_main_process
    from nnrun.loggers import TensorBoard

    if recipe.ensemble.seeds > 1 and resume is None:
        return _run_seeds(recipe, run_dir=run_dir, device=device, callbacks=callbacks, base_dir=base_dir,
                          handle_signals=handle_signals, notes=notes)
    if recipe.log.tensorboard and is_main_process():
        # Importing TensorBoard takes ~0.1 s: do it while the data loads, not when training starts.
        threading.Thread(target=importlib.import_module, args=("torch.utils.tensorboard",), daemon=True).start()
    payload = checkpoint.load(resume) if resume is not None else None
    if payload is not None and run_dir is None:
        run_dir = Path(payload["path"]).parent.parent
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(recipe)
    dev = resolve_device(device or recipe.train.device)
    c = build(recipe, device=dev, base_dir=base_dir,
              normalizer=payload["normalization"] if payload else None)
    monitor, mode = monitor_of(recipe, c.data.task)
    if notes is not None and c.notes:
        notes(c.notes)
    settings = LoopSettings(total_steps=c.total_steps, log_every=recipe.log.every_n_steps,
                            eval_every=recipe.train.eval_every, monitor=monitor, mode=mode,
                            patience=recipe.train.patience)
    writers: list[Callback] = []
    saver = None
    if is_main_process():
        prepare_run_dir(run_dir, recipe)
        saver = Checkpointing(run_dir / "checkpoints", monitor=monitor, mode=mode, top_k=recipe.train.save_top_k)
        writers = [MetricsFile(run_dir / "metrics.jsonl"), saver]
        if recipe.ensemble.strategy in ("checkpoints", "snapshots"):
            writers.append(EnsembleMembers(run_dir / "checkpoints" / "members", strategy=recipe.ensemble.strategy,
                                           every=recipe.ensemble.every))
        if recipe.log.tensorboard:
            writers.insert(0, TensorBoard(run_dir / "tb", histograms_every=recipe.log.histograms_every))
    trainer = Trainer(c, settings, [*callbacks, *writers])
    if payload is not None:
        _load_for_resume(trainer, payload)
    start = time.perf_counter()
    with (stop_on_signals(trainer) if handle_signals else contextlib.nullcontext({})) as caught:
        state = trainer.fit()
    return TrainResult(run_dir=run_dir, monitor=monitor, best=state.best,
                       best_checkpoint=saver.best_path if saver else None,
                       last_checkpoint=saver.last_path if saver else None, history=state.history,
                       stop_reason=state.stop_reason or "finished", steps=state.step,
                       seconds=time.perf_counter() - start, signal=caught.get("signal"),
                       events=list(state.events), diagnostic_checkpoint=saver.diagnostic_path if saver else None)


def seed_member(recipe: Recipe, index: int) -> Recipe:
    """Member `index` of a seed ensemble: its own seed (init, data order, dropout), the shared
    validation split (split_seed fixed to the recipe's), and no further seeds."""
    import dataclasses

    from nnrun.build import split_seed

    return dataclasses.replace(recipe, seed=recipe.seed + index,
                               data=dataclasses.replace(recipe.data, split_seed=split_seed(recipe)),
                               ensemble=dataclasses.replace(recipe.ensemble, seeds=1))


def _run_seeds(recipe: Recipe, *, run_dir, **kwargs) -> TrainResult:
    """`ensemble.seeds: N`: N runs into `<run_dir>/seed-<i>/`, one ensemble folder."""
    root = Path(run_dir) if run_dir is not None else new_run_dir(recipe)
    members: list[TrainResult] = []
    for i in range(recipe.ensemble.seeds):
        result = run(seed_member(recipe, i), run_dir=root / f"seed-{i}", **kwargs)
        members.append(result)
        if result.interrupted or result.stop_reason.startswith("non-finite"):
            break
    ranked = [m for m in members if m.best]
    best = None
    if ranked:
        from nnrun.metrics import metric_info

        pick = max if metric_info(members[0].monitor).mode == "max" else min
        best = pick(ranked, key=lambda m: m.best["value"])
    last = members[-1]
    return TrainResult(run_dir=root, monitor=last.monitor, best=best.best if best else None,
                       best_checkpoint=best.best_checkpoint if best else None,
                       last_checkpoint=last.last_checkpoint, history=last.history,
                       stop_reason=(f"finished {len(members)} seed runs" if last.stop_reason == "finished"
                                    and len(members) == recipe.ensemble.seeds else last.stop_reason),
                       steps=sum(m.steps for m in members), seconds=sum(m.seconds for m in members),
                       signal=last.signal, events=[e for m in members for e in m.events], members=members)


def _load_for_resume(trainer: Trainer, payload: dict) -> None:
    """Restore the trainer, turning a model that does not fit the checkpoint into a clear error."""
    from nnrun.errors import CheckpointError

    try:
        trainer.load_state_dict(payload)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CheckpointError(f"{payload['path']} does not fit this recipe's model or optimizer ({first})",
                              hint="resume with the run's own recipe (omit RECIPE) or a compatible one") from exc


def resume_recipe(resume: Path | str, overrides: Sequence[str] = ()) -> Recipe:
    """The recipe stored in a checkpoint, with command-line overrides (e.g. `train.epochs=20`)."""
    from nnrun import checkpoint

    payload = checkpoint.load(resume)
    return recipe_io.validate(payload["recipe"], source=recipe_io.Source(f"{payload['path']} (stored recipe)"),
                              overrides=overrides)
