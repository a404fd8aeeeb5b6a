"""Does ensembling pay? Member vs ensemble accuracy on the test split, and EMA vs raw weights.

Trains `--seeds` runs of the shipped quickstart (digits) and, given an MNIST folder, of
mnist-mlp (fewer epochs), each with `ensemble.strategy: ema` and `ensemble.seeds`, then combines
the members' best checkpoints with `nnrun ensemble` in mean, vote and weights modes, with raw and
with EMA weights, and prints the members' accuracies beside each ensemble's.

    python benchmarks/ensemble_gain.py [--mnist ../shared/data/mnist] [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


def study(name: str, overrides: list[str], seeds: int, root: Path) -> None:
    from nnrun import recipe as recipe_io
    from nnrun.workflows import ensemble, train

    r = recipe_io.load(name, [*overrides, f"ensemble.seeds={seeds}", "ensemble.strategy=ema",
                              "log.progress=none", "log.tensorboard=false"])
    res = train.run(r, run_dir=root / name, handle_signals=False)
    print(f"\n{name}: {seeds} seeds, {r.train.epochs:g} epochs each ({res.seconds:.0f} s of training)")
    for use_ema in (False, True):
        label = "EMA weights" if use_ema else "raw weights"
        for mode in ("mean", "vote", "weights"):
            out = ensemble.run([res.run_dir], mode=mode, split="test", use_ema=use_ema)
            members = [m.metrics["test_acc"] for m in out.members]
            print(f"  {label:11s} {mode:7s} members test_acc mean {statistics.mean(members):.4f} "
                  f"(best {max(members):.4f})  ensemble {out.metrics['test_acc']:.4f}  "
                  f"gain over best {out.metrics['test_acc'] - max(members):+.4f}, "
                  f"over mean {out.metrics['test_acc'] - statistics.mean(members):+.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", help="folder with the MNIST IDX files")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study("quickstart", ["train.epochs=10"], args.seeds, Path(tmp))
        if args.mnist:
            study("mnist-mlp", [f"data.path={Path(args.mnist).resolve()}", "train.epochs=3"], args.seeds, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
