"""`nnrun train` as a function: recipe -> trained run folder.

The run itself is :func:`nnrun.training.session.train_recipe`; this use case adds the process
group (under torchrun), the choice of folder, resuming from a checkpoint path, and signals: Ctrl-C and SIGTERM stop
the loop at the next step boundary and save `last.pt` with the position inside the epoch and
every RNG state, so `--resume` continues bit-identically.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

from nnrun import checkpoint, distributed, signals
from nnrun.errors import NnrunError, Problem, RecipeError
from nnrun.files import crash_point
from nnrun.recipe import Source, validate
from nnrun.recipe.schema import Recipe
from nnrun.runtime import recipe_threads, resolve_device
from nnrun.training.callbacks import Callback
from nnrun.training.run_folder import discard_if_unused
from nnrun.training.session import TrainResult, seed_member, train_recipe
from nnrun.training.trainer import Trainer
from nnrun.workflows._folders import fresh_dir

INTERRUPTED = "interrupted"
__all__ = ["TrainResult", "run", "resume_recipe", "seed_member", "new_run_dir"]


def new_run_dir(recipe: Recipe) -> Path:
    """`<log.run_dir>/<name>/<timestamp>/`, never reusing an existing folder."""
    return fresh_dir(recipe.log.run_dir, recipe.name)


def stop_on_signals(trainer: Trainer) -> contextlib.AbstractContextManager[dict]:
    """SIGINT/SIGTERM ask the trainer to stop at the next step (it saves `last.pt`); a second one
    aborts with the first one's exit code (:func:`nnrun.signals.stop_on_signals`)."""
    return signals.stop_on_signals(lambda name: trainer.request_stop(INTERRUPTED))


@recipe_threads
def run(recipe: Recipe, *, run_dir: Path | None = None, resume: Path | str | None = None,
        device: str | None = None, callbacks: Sequence[Callback] = (), base_dir: Path | None = None,
        handle_signals: bool = True, notes: Callable[[list[str]], None] | None = None) -> TrainResult:
    """Train a recipe; with `resume`, continue the run that wrote that checkpoint exactly.

    Launched by torchrun (WORLD_SIZE > 1), every process runs this: they join the process group,
    share each global batch, and rank 0 writes the files (see :mod:`nnrun.distributed`).

    Args:
        recipe: a validated recipe.
        run_dir: where to write; default a new `<log.run_dir>/<name>/<timestamp>/`, or the
            resumed run's own folder.
        resume: a checkpoint file or run folder to continue from; `"auto"` (with `run_dir`):
            continue from `<run_dir>/checkpoints/last.pt` when it exists, else start (the idiom for
            torchrun's --max-restarts and preemption).
        device: overrides `train.device` (auto, cpu, cuda).
        callbacks: extra callbacks (e.g. the CLI's progress display).
        base_dir: folder that relative data paths are resolved against (the recipe's folder).
        handle_signals: install the Ctrl-C / SIGTERM handlers (main thread only).
        notes: called with the build's notes (parameter groups, init.from report) before training.
    """
    crash_point("start")
    world = distributed.world()
    dev = resolve_device(device or recipe.train.device, local_rank=world.local_rank if world.active else None)
    created = False
    if world.active:
        refuse_unsupported(recipe, world, dev)
        created = distributed.init(world, dev)
    finished = False
    try:
        result = _run(recipe, world, dev, run_dir=run_dir, resume=resume, callbacks=callbacks, base_dir=base_dir,
                      handle_signals=handle_signals, notes=notes)
        finished = True
        return result
    finally:
        if created:
            distributed.shutdown(finished=finished)


def _run(recipe: Recipe, world: distributed.World, device, *, run_dir, resume, handle_signals, **session_args):
    resume = auto_resume(resume, run_dir)
    payload = checkpoint.load(resume, resume=True) if resume is not None else None
    if payload is not None and run_dir is None:
        run_dir = Path(payload["path"]).parent.parent
    fresh = run_dir is None
    if fresh:  # rank 0 names the folder, the others learn it
        run_dir = distributed.broadcast_object(str(new_run_dir(recipe)) if world.is_main else None)
    run_dir = Path(run_dir)
    try:
        return train_recipe(recipe, run_dir=run_dir, payload=payload, device=device, world=world,
                            fit_context=stop_on_signals if handle_signals else None, **session_args)
    except BaseException:
        if fresh and world.is_main:
            discard_if_unused(run_dir)
        raise


def auto_resume(resume: Path | str | None, run_dir: Path | None) -> Path | str | None:
    """`--resume auto`: the run folder's last.pt when there is one, else None (a fresh start)."""
    if resume is None or str(resume) != "auto":
        return resume
    if run_dir is None:
        raise NnrunError("--resume auto needs --run-dir: the folder to continue when it holds a run",
                         hint="e.g. nnrun train recipe.yaml --run-dir runs/job-42 --resume auto")
    last = Path(run_dir) / "checkpoints" / "last.pt"
    return last if last.is_file() else None


def refuse_unsupported(recipe: Recipe, world: distributed.World, device) -> None:
    """What several processes cannot do (yet), each as one clear error before anything starts."""
    problems = []
    if recipe.ensemble.seeds > 1:
        problems.append(Problem(("ensemble", "seeds"), "a seed ensemble trains its members one after another in "
                                                       "one process; run it without torchrun, or launch one "
                                                       "torchrun job per seed"))
    if recipe.ensemble.strategy == "snapshots":
        problems.append(Problem(("ensemble", "strategy"), "snapshots are taken by one process at cycle ends; use "
                                                          "checkpoints, ema or swa with several processes"))
    if recipe.train.sync_bn == "on" and device.type != "cuda":
        problems.append(Problem(("train", "sync_bn"), "SyncBatchNorm runs on CUDA only; use auto or off on the CPU "
                                                      "(each process then normalizes its own chunk)"))
    if problems:
        raise RecipeError(problems, source=f"{recipe.name} on {world.world_size} processes")


def resume_recipe(resume: Path | str, overrides: Sequence[str] = ()) -> Recipe:
    """The recipe stored in a checkpoint, with command-line overrides (e.g. `train.epochs=20`)."""
    payload = checkpoint.load(resume)
    return validate(payload["recipe"], source=Source(f"{payload['path']} (stored recipe)"), overrides=overrides)
