"""What the loop does differently when several processes share each global batch (DDP).

The trainer calls the same methods in both cases; with one process they cost nothing and run no
collective. With several, every method that communicates is called by every process at the same
point of the loop (a step boundary, an evaluation, the end), never from code only rank 0 reaches:

- the model is trained through a DistributedDataParallel wrapper, re-made whenever the frozen set
  changes (DDP registers the trainable parameters when it is built);
- the stepper weights each process's loss by its share of the global batch;
- a stop asked on any process (a signal) is agreed on at log boundaries and evaluations, so all
  stop at the same step;
- before an evaluation or a checkpoint, BatchNorm running statistics are averaged and every
  process's RNG states are gathered (they travel in the checkpoint);
- evaluation sums and the epoch's training loss are added up over the processes.
"""

from __future__ import annotations

import torch
from torch import nn

from nnrun import distributed
from nnrun.checkpoint import capture_rng
from nnrun.distributed import World


class Sharing:
    """One process: nothing to share."""

    active = False

    def __init__(self, world: World, device: torch.device):
        self.world, self.device = world, device
        self.ddp: nn.Module | None = None

    def train_module(self, model: nn.Module, frozen: frozenset[str], stepper) -> None:
        """Make sure the stepper trains through a wrapper that syncs the current trainable set."""

    def global_sizes(self, batches, start: int, count: int) -> list[int] | None:
        return None

    def agree(self, flag: bool) -> bool:
        return flag

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def reducer(self):
        """The evaluation's reduction (None: nothing to add up)."""
        return None

    def all_reduce_max(self, values: list[float]) -> list[float]:
        return values

    def sync_buffers(self, models: list[nn.Module]) -> None:
        """Make every process hold the same buffers before evaluating or saving."""

    def gather_rng(self) -> None:
        """Collect every process's RNG states for the checkpoint about to be written."""

    def rng_states(self) -> list[dict]:
        """Every process's RNG states, rank order (at the last checkpoint point when shared)."""
        return [capture_rng()]

    def shared_mean(self, loss: torch.Tensor, examples: int, since_log: int) -> tuple[float, int]:
        """(mean loss of the last step over all processes, examples since the last log over all)."""
        return float(loss), since_log


class SharedBatches(Sharing):
    """Several processes (see the module docstring)."""

    active = True

    def __init__(self, world: World, device: torch.device):
        super().__init__(world, device)
        self._frozen: frozenset[str] | None = None
        self._rng: list[dict] | None = None

    def train_module(self, model: nn.Module, frozen: frozenset[str], stepper) -> None:
        if self.ddp is None or frozen != self._frozen:
            self._frozen = frozen
            trains = any(p.requires_grad for p in model.parameters())  # DDP refuses a module with nothing to sync
            self.ddp = distributed.wrap(model, self.device) if trains else None
            stepper.share(self.ddp, self.world.world_size)

    def global_sizes(self, batches, start: int, count: int) -> list[int]:
        return [batches.global_size(b) for b in range(start, start + count)]

    def agree(self, flag: bool) -> bool:
        return distributed.agree(flag, self.device)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(t)

    def reducer(self):
        return distributed.all_reduce_sum

    def all_reduce_max(self, values: list[float]) -> list[float]:
        return distributed.all_reduce_max(values, self.device)

    def sync_buffers(self, models: list[nn.Module]) -> None:
        for m in models:
            distributed.average_buffers(m)

    def gather_rng(self) -> None:
        self._rng = distributed.gather_objects(capture_rng())

    def rng_states(self) -> list[dict]:
        return self._rng if self._rng is not None else distributed.gather_objects(capture_rng())

    def shared_mean(self, loss: torch.Tensor, examples: int, since_log: int) -> tuple[float, int]:
        t = torch.tensor([float(loss) * examples, float(examples), float(since_log)], dtype=torch.float64,
                         device=self.device)
        distributed.all_reduce_sum(t)
        return float(t[0] / max(t[1], 1.0)), int(t[2])


def sharing_for(world: World, device: torch.device) -> Sharing:
    return SharedBatches(world, device) if world.active else Sharing(world, device)
