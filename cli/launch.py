"""`nnrun train --nproc N`: start N training processes on this machine through torchrun's own
launcher, in this process (as torchtune's `tune run` and Lightning Fabric do).

The recipe was validated once in this (parent) process, so a mistake is one message; the
workers run `python -m nnrun train ...` with the same arguments and torchrun's environment. For
several machines, SLURM or elastic restarts, call torchrun itself
(`torchrun --nnodes ... -m nnrun train ...`).
"""

from __future__ import annotations

import sys
import uuid


def launch(nproc: int, args: list[str]) -> int:
    """Run `nnrun train <args>` in `nproc` processes; the exit code to leave with (0, 2, 130, 143...)."""
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
    """The code of the first failed worker (by rank); a worker killed by signal S gives 128 + S."""
    first = failures[min(failures)]
    code = first.exitcode
    return 128 + (-code) if code < 0 else code or 1


def without_nproc(argv: list[str]) -> list[str]:
    """The command line's `train` arguments minus `--nproc N` (the workers must not launch again)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out

