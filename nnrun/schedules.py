"""`schedule` section -> a learning-rate schedule, a pure function of the optimizer step.

The caller owns the step counter (no hidden `last_epoch`, timm style): the loop asks for the
factor at step t and writes `base_lr * factor` into every parameter group, so a resumed run is
exactly where it left off once the step is restored.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnrun.config import ScheduleConfig


@dataclass
class Schedule:
    """A learning-rate multiplier per optimizer step.

    Args:
        cfg: the recipe's schedule section.
        steps_per_epoch: optimizer steps in one epoch, to convert epochs to steps.
        total_steps: optimizer steps in the whole run.
    """

    cfg: ScheduleConfig
    steps_per_epoch: int
    total_steps: int

    def factor(self, step: int) -> float:
        """Multiplier of every group's base learning rate at optimizer step `step` (0-based)."""
        return 1.0  # `constant`, the only schedule so far

    def state_dict(self) -> dict:
        """Schedules are pure functions of the step, so only the identity is saved."""
        return {"name": self.cfg.name}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore beyond the step, which the loop owns."""


def build_schedule(cfg: ScheduleConfig, *, steps_per_epoch: int, total_steps: int) -> Schedule:
    """Build the schedule of the recipe for a run of `total_steps` optimizer steps."""
    return Schedule(cfg, steps_per_epoch, total_steps)
