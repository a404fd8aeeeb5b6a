"""Where a run is, the loop's settings, and the checkpoint payload of a trainer.

The payload is a plain dict of tensors and primitives, so `torch.load(..., weights_only=True)`
reads it: position (epoch, batch, step), model, optimizer, schedule, stepper (scaler, clip history,
guard counters), weight average, RNG states, history, and what prediction needs (normalization,
data facts, the resolved recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nnrun._version import __version__
from nnrun.checkpoint import FORMAT, FORMAT_VERSION, restore_rng
from nnrun.distributed import World
from nnrun.runtime import seed_everything


@dataclass
class TrainState:
    """Where the run is. `batch` is the next batch of epoch `epoch` (0-based)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    bad_evals: int = 0
    epoch_loss_sum: torch.Tensor | None = None
    epoch_examples: int = 0
    stop_reason: str | None = None
    lr_scale: float = 1.0     # cut by each non-finite rollback
    rollbacks: int = 0
    events: list[str] = field(default_factory=list)  # warnings a person should see


@dataclass(frozen=True)
class LoopSettings:
    """The loop's knobs, resolved from the recipe by the workflow."""

    total_steps: int
    log_every: int
    eval_every: int
    monitor: str
    mode: str
    patience: int | None


def make_payload(trainer) -> dict:
    """Everything needed to resume a :class:`~nnrun.training.trainer.Trainer` exactly, as tensors and
    primitives (weights_only-safe)."""
    s, c = trainer.state, trainer.components
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__,
        "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "schedule": trainer.schedule.state_dict(), "stepper": trainer.stepper.state_dict(),
        "scaler": trainer.stepper.state_dict()["scaler"],
        "ema": trainer.averager.state_dict() if trainer.averager else None,
        "lr_scale": s.lr_scale, "rollbacks": s.rollbacks,
        "rng": trainer.sharing.rng_states(), "world_size": trainer.sharing.world.world_size,
        "epoch": s.epoch, "batch": s.batch, "step": s.step,
        "epoch_loss_sum": None if s.epoch_loss_sum is None else s.epoch_loss_sum.detach().cpu(),
        "epoch_examples": s.epoch_examples,
        "history": list(s.history), "best": s.best, "bad_evals": s.bad_evals,
        "metrics": s.history[-1] if s.history else {},
        "monitor": trainer.settings.monitor, "mode": trainer.settings.mode,
        "normalization": c.normalizer, "data": c.data_info(),
        "recipe": c.recipe_dict(),
    }


def apply_payload(trainer, payload: dict) -> list[str]:
    """Continue a trainer from a checkpoint written by :func:`make_payload` (returns notes for a person)."""
    trainer.model.load_state_dict(payload["model"])
    trainer.optimizer.load_state_dict(payload["optimizer"])
    trainer.schedule.load_state_dict(payload["schedule"])
    trainer.stepper.load_state_dict(payload.get("stepper"))
    if trainer.averager is not None and payload.get("ema"):
        trainer.averager.load_state_dict(payload["ema"])
    s = trainer.state
    s.lr_scale, s.rollbacks = payload.get("lr_scale", 1.0), payload.get("rollbacks", 0)
    s.epoch, s.batch, s.step = payload["epoch"], payload["batch"], payload["step"]
    s.history, s.best, s.bad_evals = list(payload["history"]), payload["best"], payload["bad_evals"]
    loss_sum = payload["epoch_loss_sum"]
    s.epoch_loss_sum = None if loss_sum is None else loss_sum.to(trainer.components.device)
    s.epoch_examples = payload["epoch_examples"]
    return restore_rngs(payload, trainer.sharing.world, seed=trainer.components.recipe.seed)


def restore_rngs(payload: dict, world: World, *, seed: int) -> list[str]:
    """Put back this process's RNG states from a checkpoint of any number of processes; a process
    the checkpoint has no states for (more processes than before) seeds from (seed, rank, step).
    Returns a note when the number of processes changed."""
    states = payload["rng"] if isinstance(payload["rng"], list) else [payload["rng"]]  # format 1: one dict
    if world.rank < len(states):
        restore_rng(states[world.rank])
    else:
        seed_everything((seed * 1_000_003 + world.rank * 7919 + payload["step"]) % 2**63)
    saved = payload.get("world_size", len(states))
    if saved == world.world_size:
        return []
    return [f"resumed a run of {saved} process(es): the data order and position are exact, the dropout "
            "random streams are derived again, so the run is consistent but not bit-identical to one that "
            "kept its process count"]
