"""The small runner every evidence experiment shares: train through nnrun, print a table, write a
PNG, a JSON of the raw numbers and a Markdown section for docs/evidence.md (NAME.section).

An experiment is a module of this package with ``NAME``, ``TITLE``, ``CLAIM`` (one sentence),
``SOURCE`` (the paper or notes) and ``run(ctx) -> Report``. ``ctx.quick`` asks for a tiny budget
(the suite's end-to-end check of the runner: a table, a plot and finite numbers, not the claim).
Everything trains through nnrun itself: recipes as dicts validated by :func:`nnrun.recipe.validate`
and :func:`nnrun.workflows.train.run`, or the tools' workflows (lr-find, search, ensemble).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One thread per run: results then do not depend on the machine's core count (float sums split over
# threads round differently), and on a shared 2-core machine two threads per run were 40-50x slower.
QUIET = {"log": {"progress": "none", "tensorboard": False}, "train": {"save_top_k": 0, "threads": 1}}


@dataclass
class Context:
    """What an experiment may use: where to write, its budget, and where MNIST is (None: digits only)."""

    out: Path
    tmp: Path
    quick: bool = False
    mnist: Path | None = None
    seeds: int = 3

    def folder(self, *parts: str) -> Path:
        """A fresh run folder under the temporary area (nnrun refuses to reuse one)."""
        path = self.tmp.joinpath(*parts)
        n = 0
        while path.exists():
            n += 1
            path = self.tmp.joinpath(*parts[:-1], f"{parts[-1]}-{n}")
        return path


@dataclass
class Report:
    """What an experiment found.

    Attributes:
        columns, rows: the table (rows of plain values; floats are printed with 4 significant digits).
        verdict: `reproduced`, `partly` or `not reproduced`.
        because: the verdict's one sentence, with the numbers.
        setup: recipe, seeds, budget in a sentence or two.
        plot: draws the figure on a matplotlib Figure.
        raw: every number measured (JSON-able; non-finite floats become null).
        notes: anything the reader should know (e.g. a refusal message, why the scale matters).
    """

    columns: Sequence[str]
    rows: list[Sequence[Any]]
    verdict: str
    because: str
    setup: str
    plot: Callable[[Any], None]
    raw: dict
    notes: list[str] = field(default_factory=list)


def recipe(base: dict | None = None, **sections: dict) -> dict:
    """A recipe dict: the quiet logging defaults, then `base`, then each section's keys merged in."""
    out: dict = json.loads(json.dumps(QUIET))
    for layer in (base or {}), sections:
        for key, value in layer.items():
            if isinstance(value, dict):
                out.setdefault(key, {}).update(value)
            else:
                out[key] = value
    return out


def validate(spec: dict, name: str):
    """A Recipe from a dict (every check nnrun runs on a file)."""
    from nnrun.recipe import Source
    from nnrun.recipe import validate as check

    return check(dict(spec, name=name), source=Source(f"evidence {name}"))


def train(ctx: Context, spec: dict, name: str, *, callbacks=()):
    """Train a recipe dict into a fresh folder; nnrun's TrainResult (history, best, steps, seconds)."""
    from nnrun.workflows.train import run

    return run(validate(spec, name), run_dir=ctx.folder(name), handle_signals=False, callbacks=list(callbacks))


def mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(finite) if finite else float("nan")


def machine() -> str:
    """One line naming the CPU, the threads and torch."""
    import torch

    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu} ({os.cpu_count()} cores; runs train on 1 thread), torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _clean(v: Any) -> Any:
    """JSON-able with non-finite floats as null (strict JSON)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def table_text(columns: Sequence[str], rows: list[Sequence[Any]], *, markdown: bool = False) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def finish(module, ctx: Context, report: Report, seconds: float, command: str) -> dict[str, Path]:
    """Print the table and verdict; write NAME.png, NAME.json and NAME.section (its Markdown section of
    docs/evidence.md, whose links are relative to docs/) into ctx.out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = module.NAME
    ctx.out.mkdir(parents=True, exist_ok=True)
    print(f"\n== {module.TITLE}\n{table_text(report.columns, report.rows)}\nverdict: {report.verdict}: "
          f"{report.because}")
    fig = plt.figure(figsize=(10, 4.5))
    report.plot(fig)
    fig.tight_layout()
    paths = {"png": ctx.out / f"{name}.png", "json": ctx.out / f"{name}.json", "md": ctx.out / f"{name}.section"}
    fig.savefig(paths["png"], dpi=90)
    plt.close(fig)
    raw = {"name": name, "claim": module.CLAIM, "source": module.SOURCE, "setup": report.setup,
           "columns": list(report.columns), "rows": [list(r) for r in report.rows], "verdict": report.verdict,
           "because": report.because, "notes": report.notes, "raw": report.raw, "quick": ctx.quick,
           "seconds": seconds, "machine": machine(), "command": command}
    paths["json"].write_text(json.dumps(_clean(raw), indent=1, allow_nan=False) + "\n")
    notes = "".join(f"\n{n}\n" for n in report.notes)
    paths["md"].write_text(
        f"## {module.TITLE}\n\n**Claim** ({module.SOURCE}): {module.CLAIM}\n\n**Setup**: {report.setup}\n\n"
        f"{table_text(report.columns, report.rows, markdown=True)}\n\n![{name}](evidence/{name}.png)\n\n"
        f"**Verdict: {report.verdict}.** {report.because}\n{notes}\n"
        f"Produced by `{command}` in {seconds / 60:.1f} min on {machine()}.\n")
    return paths


def run_one(module, ctx: Context, command: str) -> dict[str, Path]:
    start = time.perf_counter()
    report = module.run(ctx)
    return finish(module, ctx, report, time.perf_counter() - start, command)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
