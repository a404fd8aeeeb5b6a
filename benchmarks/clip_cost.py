"""Per-step cost of each gradient-clip policy relative to `none` on an MNIST-sized MLP.

Runs the real optimizer step (nnrun.training.stepper.Stepper: forward, backward, clip, non-finite guard,
fused Adam) on random MNIST-shaped batches (784 -> 256 -> 128 -> 10, batch 128), interleaving the
policies over several rounds and keeping each policy's best round (noise only adds time).
Target: agc and autoclip within 10% of `none`.

    python benchmarks/clip_cost.py [--steps 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

POLICIES = ["none", "global_norm", "per_param_norm", "value", "agc", "autoclip"]


def make(policy: str):
    from nnrun import recipe as recipe_io
    from nnrun.components.losses import build_loss
    from nnrun.components.models import build_model
    from nnrun.components.optim import build_optimizer
    from nnrun.recipe.schema import ModelConfig
    from nnrun.runtime import seed_everything
    from nnrun.training.stepper import make_stepper

    r = recipe_io.validate({"clip": {"policy": policy}, "model": {"hidden": [256, 128]}},
                           source=recipe_io.Source("bench"))
    seed_everything(0)
    model = build_model(ModelConfig(hidden=[256, 128]), input_shape=(1, 28, 28), num_outputs=10)
    opt = build_optimizer(r.optimizer, model, device=torch.device("cpu"))
    return make_stepper(r, model, build_loss(r.train, task="classification"), opt, torch.device("cpu")), opt


def time_steps(stepper, opt, batches) -> float:
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        stepper.step([batch], i)
        opt.zero_grad(set_to_none=True)
    float(stepper.guard.bad_total)  # wait for queued work (matters on GPU)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g))
               for _ in range(args.steps)]
    steppers = {p: make(p) for p in POLICIES}
    for stepper, opt in steppers.values():  # warm up allocators and kernels
        time_steps(stepper, opt, batches[:20])
    times = {p: [] for p in POLICIES}
    for _ in range(args.rounds):
        for p, (stepper, opt) in steppers.items():
            times[p].append(time_steps(stepper, opt, batches))
    print(f"MNIST-sized MLP 784-256-128-10, batch 128, {args.steps} steps x {args.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    # The VM's speed drifts; each policy is compared with `none` of the same round (seconds apart)
    # and the median of those ratios is reported beside the best-of-rounds ratio.
    ratio = {}
    for p in POLICIES:
        ratio[p] = statistics.median(t / n for t, n in zip(times[p], times["none"]))
        ms = min(times[p]) / args.steps * 1e3
        print(f"{p:15s} best {ms:7.3f} ms/step   paired median {ratio[p]:.3f}x none   "
              f"best-of {min(times[p]) / min(times['none']):.3f}x none")
    worst = max(ratio["agc"], ratio["autoclip"])
    print(f"agc/autoclip worst paired ratio: {worst:.3f}x (target <= 1.10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
