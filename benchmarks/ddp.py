"""What does nnrun cost over a hand-written DistributedDataParallel loop, on 2 processes?

Both run in the same 2 torchrun processes, alternating rounds: the same MNIST MLP (784-256-128-10),
the same global batch of 128 cut into one contiguous chunk per process from one seeded order per
epoch, fused Adam, DDP with gradients synced once per step, a sharded validation pass at the end of
each round. nnrun runs `nnrun.workflows.train.run` (checkpoints and metrics on rank 0, TensorBoard
off, plain progress); the reference is a minimal loop. Each side's step time is the median interval
between consecutive optimizer steps. Target: nnrun at most 1.10x.

    python benchmarks/ddp.py ../shared/data/mnist [--steps 150] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

BATCH, LR, HIDDEN = 128, 1e-3, [256, 128]


def reference(x: torch.Tensor, y: torch.Tensor, steps: int, world, device) -> list[float]:
    """The hand-written DDP loop; per-step wall times."""
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    times, step, epoch = [], 0, 0
    t = time.perf_counter()
    while step < steps:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for lo in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[lo:lo + BATCH].tensor_split(world.world_size)[world.rank]
            loss = loss_fn(ddp(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            now = time.perf_counter()
            times.append(now - t)
            t, step = now, step + 1
            if step >= steps:
                break
        epoch += 1
    return times


def nnrun_steps(data: str, steps: int, out: Path) -> list[float]:
    """nnrun's loop on the same work; per-step wall times from a callback."""
    from nnrun import recipe as recipe_io
    from nnrun.training.callbacks import Callback
    from nnrun.workflows import train as train_wf

    class Timer(Callback):
        def __init__(self):
            self.times, self.t = [], None

        def on_step_end(self, trainer):
            now = time.perf_counter()
            if self.t is not None:
                self.times.append(now - self.t)
            self.t = now

    timer = Timer()
    r = recipe_io.load("mnist-mlp", [f"data.path={data}", f"data.batch_size={BATCH}", f"model.hidden={HIDDEN}",
                                     "model.norm=none", "model.dropout=0.0", f"optimizer.lr={LR}",
                                     "data.val_fraction=0.1", "data.drop_last=true", "log.tensorboard=false",
                                     "log.progress=plain", f"train.epochs={steps / (54000 // BATCH):.6f}"])
    train_wf.run(r, run_dir=out, callbacks=[timer], handle_signals=False)
    return timer.times


def worker(args) -> None:
    from nnrun import distributed
    from nnrun.build import build_data
    from nnrun.recipe import load

    world = distributed.world()
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= world.world_size:
        # one core per process: without it the two processes and gloo's threads migrate across
        # cores and the per-round times scatter by +-40%
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[world.rank]})
    data, _ = build_data(load("mnist-mlp", [f"data.path={args.data}", "data.val_fraction=0.1"]), base_dir=None)
    x, y = data.train.x, data.train.y
    distributed.init(world, torch.device("cpu"))
    result = {"reference": [], "nnrun": []}
    for r in range(args.rounds):  # nnrun uses the process group this worker created
        result["reference"].append(reference(x, y, args.steps, world, torch.device("cpu"))[5:])
        with tempfile.TemporaryDirectory() as tmp:  # only rank 0's folder is written
            result["nnrun"].append(nnrun_steps(args.data, args.steps, Path(tmp) / f"r{r}")[5:])
    if world.is_main:
        Path(args.out).write_text(json.dumps(result))
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the MNIST folder (IDX files)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
               str(Path(args.data).resolve()), "--steps", str(args.steps), "--rounds", str(args.rounds), "--worker",
               "--out", str(out)]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp)
        times = json.loads(out.read_text())
    # Two processes share two cores with gloo's threads, so the machine's speed drifts between
    # rounds: each round's ratio compares neighbours, and the median over rounds is the figure.
    pairs = [(statistics.median(r), statistics.median(o)) for r, o in zip(times["reference"], times["nnrun"])]
    ratios = sorted(o / r for r, o in pairs)
    ref = statistics.median(p[0] for p in pairs)
    ours = statistics.median(p[1] for p in pairs)
    print(f"2 processes (gloo, CPU), MNIST MLP, global batch {BATCH}, {args.rounds} rounds of {args.steps} steps")
    print(f"per-round ratios: {' '.join(f'{q:.3f}' for q in ratios)}")
    print(f"median step: hand-written DDP {ref * 1e3:.2f} ms, nnrun {ours * 1e3:.2f} ms; median ratio "
          f"{statistics.median(ratios):.3f}x (target <= 1.10)")


if __name__ == "__main__":
    main()
