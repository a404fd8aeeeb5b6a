"""`nnrun train` as a function: recipe -> trained run folder.

The run itself is :func:`nnrun.training.session.train_recipe`; this use case adds the choice of
folder, resuming from a checkpoint path, and signals: Ctrl-C and SIGTERM stop
the loop at the next step boundary and save `last.pt` with the position inside the epoch and
every RNG state, so `--resume` continues bit-identically.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

from nnrun import checkpoint, signals
from nnrun.files import crash_point
from nnrun.recipe import Source, validate
from nnrun.recipe.schema import Recipe
from nnrun.runtime import recipe_threads
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
    crash_point("start")
    payload = checkpoint.load(resume, resume=True) if resume is not None else None
    if payload is not None and run_dir is None:
        run_dir = Path(payload["path"]).parent.parent
    fresh = run_dir is None
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(recipe)
    try:
        return train_recipe(recipe, run_dir=run_dir, payload=payload, device=device, callbacks=callbacks,
                            base_dir=base_dir, notes=notes, fit_context=stop_on_signals if handle_signals else None)
    except BaseException:
        if fresh:
            discard_if_unused(run_dir)
        raise


def resume_recipe(resume: Path | str, overrides: Sequence[str] = ()) -> Recipe:
    """The recipe stored in a checkpoint, with command-line overrides (e.g. `train.epochs=20`)."""
    payload = checkpoint.load(resume)
    return validate(payload["recipe"], source=Source(f"{payload['path']} (stored recipe)"), overrides=overrides)
