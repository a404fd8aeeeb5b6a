"""The processes of a run: who this one is (rank, world size) and the few collectives the loop needs.

nnrun runs data-parallel on PyTorch's own engine: `torch.distributed` with DistributedDataParallel,
launched by `torchrun` (or `nnrun train --nproc N`, which starts torchrun in-process). Everything
here is a no-op when the world has one process (`import torch` itself already imports
`torch.distributed` in torch 2.x; one process initializes no process group).

Rules the loop keeps: every collective runs on every rank at the same point of the loop, never in
code only rank 0 reaches (a rank-0-only save that waits on a collective hangs the job until the
watchdog fires); rank 0 writes every file.
"""

from __future__ import annotations

import datetime
import os
import pickle
import signal
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (from torchrun's environment)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def active(self) -> bool:
        """More than one process: collectives are real."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()
"""One process (the default everywhere)."""


def world() -> World:
    """The world torchrun (or SLURM through torchrun) describes in the environment; one process otherwise."""
    env = os.environ
    size = int(env.get("WORLD_SIZE", "1"))
    return World(rank=int(env.get("RANK", "0")), local_rank=int(env.get("LOCAL_RANK", "0")), world_size=size,
                 local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(size))))



def initialized() -> bool:
    return world().active and dist.is_initialized()


def init(w: World, device: torch.device) -> bool:
    """Join the process group: the backend PyTorch maps to the device (gloo on CPU, nccl on CUDA),
    an explicit timeout, eager init on CUDA (`device_id`), and loopback for gloo on one machine
    unless GLOO_SOCKET_IFNAME says otherwise (hostname-based interface choice is flaky).

    Returns whether this call created the group (a caller that already has one keeps it: leave it
    to whoever created it)."""
    if not w.active or dist.is_initialized():
        return False
    if device.type == "cpu" and w.local_world_size == w.world_size:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if os.uname().sysname == "Darwin" else "lo")
    backend = dist.Backend.default_device_backend_map.get(device.type, "gloo")
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, timeout=TIMEOUT, rank=w.rank, world_size=w.world_size, **kwargs)
    return True


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """The DDP wrapper for training forwards (the raw module stays what is evaluated and saved).
    Only parameters that require gradients are synced, so a change of the frozen set re-wraps."""
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shutdown(*, finished: bool = True) -> None:
    """Leave the process group (every rank, at the end of the run). After a run that finished, the
    ranks first wait for each other (rank 0 may still be writing the last checkpoint): a rank that
    tears its group down while a peer still uses it can abort at exit. After a failure nobody waits
    (a peer may be gone)."""
    if initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the ranks, in place (returned for convenience); identity with one process."""
    if initialized():
        dist.all_reduce(t)
    return t


def agree(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any rank (one all-reduce of one number)."""
    if not initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """The largest of each value over the ranks (the values themselves with one process)."""
    if not initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (`[obj]` with one process)."""
    if not initialized():
        return [obj]
    out: list[Any] = [None] * world().world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_buffers(model: nn.Module) -> None:
    """Average the floating buffers (BatchNorm running statistics) over the ranks, so every rank
    evaluates and saves the same model (timm's `--dist-bn reduce`)."""
    if not initialized():
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
    dist.all_reduce(flat)
    flat /= world().world_size
    offset = 0
    with torch.no_grad():
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b).to(b.dtype))
            offset += b.numel()


def fingerprint(*states: Any) -> bytes:
    """A digest of nested tensors and primitives (tests compare ranks with it)."""
    import hashlib

    digest = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            digest.update(v.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                digest.update(str(k).encode())
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            for x in v:
                feed(x)
        else:
            digest.update(pickle.dumps(v))

    for s in states:
        feed(s)
    return digest.digest()


# ---------------------------------------------------------------------------------------------
# launching on one machine (`nnrun train --nproc N`)


def launch_local(nproc: int, args: list[str]) -> int:
    """Run `python -m nnrun train <args>` in `nproc` processes on this machine through torchrun's
    own launcher, in this process (as torchtune's `tune run` and Lightning Fabric do); returns the
    exit code to leave with (0, or the first failed worker's: 2, 130, 143...). For several machines,
    SLURM or elastic restarts, call torchrun itself (`torchrun --nnodes ... -m nnrun train ...`)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "nnrun", "train", *args)
    except ChildFailedError as exc:
        return worker_exit_code(exc.failures)
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


def worker_exit_code(failures: dict) -> int:
    """The code of the worker that failed first (the root cause); a worker killed by signal S gives
    128 + S. When one worker fails, torchrun stops the others with SIGTERM: they exit 143 (nnrun's
    handler) or die of the signal, often within the same second as the root cause, whose timestamp
    then ties with theirs. So a SIGTERM exit counts only when every failure is one (a user's
    `kill`/`scancel` of the whole job)."""
    def code(failure) -> int:
        raw = failure.exitcode
        return 128 + (-raw) if raw < 0 else raw or 1

    causes = {rank: f for rank, f in failures.items() if code(f) != 128 + signal.SIGTERM} or failures
    first = min(causes.items(), key=lambda item: (getattr(item[1], "timestamp", 0), item[0]))[1]
    return code(first)
