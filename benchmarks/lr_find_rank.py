"""Is `nnrun lr-find`'s suggestion a good learning rate?

For a fixed recipe (the shipped `quickstart` on the built-in digits and `mnist-mlp` on MNIST, with
fewer epochs), run the range test, then train with the recommended rate, with each rule's rate, and
with each rate of a 7-point log grid (1e-4 .. 1e-1, half-decade steps) for the same budget. Prints
the final validation accuracy of each (mean over --seeds, default 2), where the recommendation ranks among the
grid, and its gap to the grid's best. Aim: within 1 point of accuracy of the grid's best.

    python benchmarks/lr_find_rank.py /work/shared/data/mnist [--digits-epochs 10] [--mnist-epochs 2]
    python benchmarks/lr_find_rank.py            # digits only
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

GRID = [10 ** (-4 + k / 2) for k in range(7)]   # 1e-4, 3.2e-4, ..., 1e-1
QUIET = ["log.progress=none", "log.tensorboard=false", "train.save_top_k=0"]


def final_val_acc(recipe, lr: float, seeds: int, tmp: Path, cache: dict) -> float:
    """Mean over seeds of the validation accuracy after the whole budget (each rate trained once)."""
    from nnrun.workflows import train as train_wf

    lr = float(f"{lr:.2g}")
    if lr in cache:
        return cache[lr]
    accs = []
    for seed in range(seeds):
        r = dataclasses.replace(recipe, seed=recipe.seed + seed,
                                optimizer=dataclasses.replace(recipe.optimizer, lr=lr))
        res = train_wf.run(r, run_dir=tmp / recipe.name / f"lr{lr:.3g}-s{seed}", handle_signals=False)
        accs.append(res.history[-1]["val_acc"])
    cache[lr] = statistics.mean(accs)
    return cache[lr]


def bench(name: str, overrides: list[str], seeds: int, tmp: Path) -> dict:
    """Range test, then the budgeted training runs; returns the rows and the verdict."""
    from nnrun import recipe as recipe_io
    from nnrun.workflows import lr_find

    recipe = recipe_io.load(name, overrides + QUIET)
    t0 = time.perf_counter()
    found = lr_find.run(recipe, out_dir=tmp / f"{name}-lr-find")
    s = found.suggestions
    if s.lr is None:
        return {"name": name, "refused": s.refused}
    find_s = time.perf_counter() - t0
    cache: dict = {}
    grid = {lr: final_val_acc(recipe, lr, seeds, tmp, cache) for lr in GRID}
    rules = {k: final_val_acc(recipe, r.lr, seeds, tmp, cache) for k, r in s.rules.items()}
    rec = final_val_acc(recipe, s.lr, seeds, tmp, cache)
    best_lr = max(grid, key=grid.get)
    rank = 1 + sum(acc > rec for acc in grid.values())
    return {"name": name, "recipe": recipe, "suggestions": s, "grid": grid, "rules": rules, "rec": rec,
            "best_lr": best_lr, "gap": 100 * (grid[best_lr] - rec), "rank": rank, "find_s": find_s}


def report(res: dict, seeds: int) -> None:
    name = res["name"]
    if "refused" in res:
        print(f"\n## {name}: no suggestion ({res['refused']})")
        return
    s, r = res["suggestions"], res["recipe"]
    print(f"\n## {name}: {r.model.arch} {r.model.hidden}, {r.optimizer.name}, batch {r.data.batch_size}, "
          f"{r.train.epochs:g} epochs, final val_acc (mean of {seeds} seed(s))")
    print(f"lr-find ({res['find_s']:.1f} s): recommended {s.lr:g} ({s.recommended}); spread "
          f"{s.spread_decades:.2f} decades; warnings: {'; '.join(s.warnings) or 'none'}")
    print("| lr | source | val_acc |\n|---|---|---|")
    for lr, acc in res["grid"].items():
        print(f"| {lr:.2g} | grid{' (best)' if lr == res['best_lr'] else ''} | {acc:.4f} |")
    for k, acc in res["rules"].items():
        mark = " (recommended)" if k == s.recommended else ""
        print(f"| {s.rules[k].lr:.2g} | rule {k}{mark} | {acc:.4f} |")
    print(f"recommendation {s.lr:g}: val_acc {res['rec']:.4f}, rank {res['rank']} of 8 against the grid, "
          f"gap to the grid's best ({res['best_lr']:.2g}) {res['gap']:+.2f} points "
          f"-> {'PASS' if res['gap'] <= 1.0 else 'MISS'} (aim: <= 1 point)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mnist", nargs="?", help="folder with the MNIST IDX files (omit: digits only)")
    p.add_argument("--digits-epochs", type=float, default=10)
    p.add_argument("--mnist-epochs", type=float, default=2)
    p.add_argument("--seeds", type=int, default=2, help="training seeds averaged per rate")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # results as they come, also into a file
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [("quickstart", [f"train.epochs={args.digits_epochs}"])]
        if args.mnist:
            jobs.append(("mnist-mlp", [f"data.path={args.mnist}", f"train.epochs={args.mnist_epochs}"]))
        for name, overrides in jobs:
            report(bench(name, overrides, args.seeds, Path(tmp)), args.seeds)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
