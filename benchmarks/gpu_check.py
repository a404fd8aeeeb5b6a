"""The checks that need a CUDA GPU, as one command (run it where one exists; it says so and exits 0
where none does, so it can sit in any script).

1. A one-process NCCL launch: `torchrun --nproc-per-node=1 -m nnrun train` (process group on
   `cuda:0`, device_id eager init, the DDP wrapper with a world of one, SyncBatchNorm's `auto` path).
2. bf16 and fp16 training (autocast; fp16 with GradScaler): finite losses, a checkpoint that loads.
3. CUDA batching (the in-memory split moved to the GPU once) and the non-finite guard on the
   device (a run at an absurd learning rate stops on non-finite values without a host sync per step).
4. MNIST to 98% validation accuracy, with its time.

    python benchmarks/gpu_check.py ../shared/data/mnist
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

NNRUN = [sys.executable, "-m", "nnrun", "train"]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ}, timeout=900)
    print(f"$ {' '.join(cmd[2:])}\n  exit {res.returncode}", flush=True)
    if res.returncode not in (0, 1):
        print(res.stderr[-3000:])
    return res


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check")
        return 0
    mnist = str(Path(sys.argv[1]).resolve()) if len(sys.argv) > 1 else None
    from nnrun import checkpoint

    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "nnrun",
                    "train", "quickstart", "model.norm=batch", "train.epochs=2", "--run-dir", str(root / "nccl")]
        res = run(torchrun, root)
        if res.returncode != 0 or checkpoint.load(root / "nccl")["world_size"] != 1:
            failures.append("one-process NCCL launch")
        for precision in ("bf16", "fp16"):
            res = run([*NNRUN, "quickstart", f"train.precision={precision}", "train.epochs=2", "--device", "cuda",
                       "--run-dir", str(root / precision)], root)
            hist = checkpoint.load(root / precision)["history"] if res.returncode == 0 else []
            if not hist or not all(h["train_loss"] == h["train_loss"] for h in hist):
                failures.append(f"{precision} training")
        res = run([*NNRUN, "quickstart", "optimizer.lr=1e30", "optimizer.name=sgd", "train.epochs=2", "--device",
                   "cuda", "--run-dir", str(root / "guard")], root)
        if res.returncode != 1 or "non-finite" not in res.stderr:
            failures.append("the non-finite guard on the device")
        if mnist:
            start = time.perf_counter()
            res = run([*NNRUN, "mnist-mlp", f"data.path={mnist}", "--device", "cuda", "--run-dir", str(root / "m")],
                      root)
            best = checkpoint.load(root / "m")["best"]["value"] if res.returncode == 0 else 0.0
            print(f"  mnist-mlp on CUDA: best val_acc {best:.4f} in {time.perf_counter() - start:.1f} s")
            if best < 0.98:
                failures.append("MNIST to 98%")
    print("gpu_check:", "all passed" if not failures else f"FAILED: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
