"""Find run folders and read what each one recorded, with no torch and no checkpoint loads.

A run folder is a folder holding both `recipe.yaml` and `metrics.jsonl` (what `nnrun train` and
every search trial write); a search folder (its trials below it) or any folder of runs is searched
for them, without descending into a run folder, `tb/`, `checkpoints/` or hidden folders.

What a run records and where it is read from:

- the resolved recipe: `recipe.yaml` (parsed as data, not validated, so a folder written by an older
  nnrun still reads);
- every evaluation: `metrics.jsonl` (a line that is not a JSON object, as a crash in the middle of
  an append may leave, is skipped with a note);
- how the fit ended, its steps and its wall time: `summary.json` (written by nnrun since the report
  exists; older folders show `-`);
- the monitored metric and its direction: `summary.json`, else `checkpoints/index.json`, else the
  recipe's `train.monitor`, else `val_acc` when the run recorded it and `val_loss` otherwise.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnrun import recipe as recipe_io
from nnrun.errors import NnrunError
from nnrun.recipe.tables import METRICS

RECIPE, METRICS_FILE, SUMMARY, INDEX = "recipe.yaml", "metrics.jsonl", "summary.json", "checkpoints/index.json"
SKIP = {"tb", "checkpoints"}
HINT = ("give run folders (each holds recipe.yaml and metrics.jsonl, as `nnrun train` writes them), "
        "a search folder or a folder of runs")


@dataclass
class Run:
    """One run folder as read from disk."""

    path: Path
    label: str
    recipe: dict                       # recipe.yaml as plain data
    recipe_text: str
    history: list[dict]                # metrics.jsonl, one record per evaluation
    monitor: str | None
    mode: str | None                   # `max`, `min`, or None when the direction is unknown
    summary: dict                      # summary.json ({} for folders written before it existed)
    notes: list[str] = field(default_factory=list)
    color: str = "#1f77b4"
    curves: Any = None                 # curves.RunCurves, once read

    @property
    def steps(self) -> int | None:
        if isinstance(self.summary.get("steps"), int):
            return self.summary["steps"]
        return self.history[-1].get("step") if self.history else None

    @property
    def seconds(self) -> float | None:
        value = self.summary.get("seconds")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def stop_reason(self) -> str | None:
        value = self.summary.get("stop_reason")
        return value if isinstance(value, str) else None

    def last(self) -> dict[str, float | None]:
        """The last evaluation's losses and metrics (no position, no learning rates)."""
        record = self.history[-1] if self.history else {}
        return {k: v for k, v in record.items() if (k.endswith("loss") or "val_" in k) and _number_or_none(v)}

    def best(self, metric: str, mode: str | None) -> dict | None:
        """`{value, epoch, step}` of the best evaluation by `metric` (the first of equal ones)."""
        if mode not in ("min", "max"):
            return None
        best = None
        for record in self.history:
            value = record.get(metric)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue
            if best is None or (value > best["value"] if mode == "max" else value < best["value"]):
                best = {"value": float(value), "epoch": record.get("epoch"), "step": record.get("step")}
        return best


@dataclass
class Report:
    """The runs being compared, the metric they are compared by, and the recipe keys that differ."""

    runs: list[Run]
    metric: str | None
    mode: str | None
    keys: list[str]                    # differing recipe keys, in recipe order
    values: list[dict[str, str]]       # per run: key -> shown value
    notes: list[str] = field(default_factory=list)

    def best_run(self) -> Run | None:
        """The run with the best value of the metric (None when no run has one)."""
        scored = [(r.best(self.metric, self.mode), r) for r in self.runs] if self.metric else []
        scored = [(b["value"], r) for b, r in scored if b is not None]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: t[0])[1]

    def legend(self, index: int, width: int = 100) -> str:
        """`label: key=value, ...` of run `index`, cut to `width` characters."""
        pairs = ", ".join(f"{k}={v}" for k, v in self.values[index].items())
        text = f"{self.runs[index].label}: {pairs}" if pairs else self.runs[index].label
        return text if len(text) <= width else text[:width - 3] + "..."


def _number_or_none(value: Any) -> bool:
    return value is None or isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# finding runs


def is_run(path: Path) -> bool:
    return (path / RECIPE).is_file() and (path / METRICS_FILE).is_file()


def _natural(path: Path) -> list:
    """Sort key: `seed-2` before `seed-10`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def runs_below(root: Path) -> list[Path]:
    """Every run folder at or below `root`, sorted."""
    if is_run(root):
        return [root]
    found = []
    for folder, dirs, files in os.walk(root):
        if RECIPE in files and METRICS_FILE in files:
            found.append(Path(folder))
            dirs.clear()
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP]
    return sorted(found, key=_natural)


def _run_above(path: Path) -> Path | None:
    """The run folder a path inside a run belongs to (`run/metrics.jsonl`, `run/checkpoints/last.pt`)."""
    return next((p for p in list(path.parents)[:3] if is_run(p)), None)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """The run folders the arguments name or hold: in argument order, each argument's runs sorted,
    each run once.

    Raises:
        NnrunError: a path that does not exist, a file outside any run, or a folder with no runs.
    """
    if not paths:
        raise NnrunError("no runs to compare", hint=HINT)
    found: dict[Path, Path] = {}
    for given in map(Path, paths):
        if not given.exists():
            raise NnrunError(f"{given} does not exist", hint=HINT)
        if given.is_file():
            run = _run_above(given)
            if run is None:
                raise NnrunError(f"{given} is a file, not a run folder", hint=HINT)
            runs = [run]
        else:  # a folder inside a run (`run/checkpoints`) stands for its run
            runs = runs_below(given) or [r for r in [_run_above(given / "x")] if r is not None]
        if not runs:
            raise NnrunError(f"no run folders in {given} (none holds both recipe.yaml and metrics.jsonl)",
                             hint=HINT)
        for run in runs:
            found.setdefault(run.resolve(), run)
    return list(found.values())


def labels(paths: list[Path]) -> list[str]:
    """Short names: each path relative to the folder all of them share (a lone run: its name)."""
    resolved = [p.resolve() for p in paths]
    if len(resolved) == 1:
        return [resolved[0].name or str(resolved[0])]
    common = Path(os.path.commonpath([str(p) for p in resolved]))
    return [p.relative_to(common).as_posix() for p in resolved]


# ---------------------------------------------------------------------------------------------
# reading one run


def read_history(path: Path, notes: list[str]) -> list[dict]:
    """The records of `metrics.jsonl`; lines that are not JSON objects are skipped with a note."""
    history, bad = [], []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise NnrunError(f"cannot read {path}: {exc.strerror or exc}", hint="check the folder's permissions") from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            history.append(record)
        else:
            bad.append(number)
    if bad:
        notes.append(f"{path}: skipped line(s) {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''} "
                     "(not a JSON object: a write cut short?)")
    return history


def read_json(path: Path, notes: list[str]) -> dict:
    """A small JSON object file, or {} when it is missing; an unreadable one is noted."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{path}: not readable JSON, ignored ({exc})")
        return {}
    if not isinstance(data, dict):
        notes.append(f"{path}: not a JSON object, ignored")
        return {}
    return data


def read_recipe(path: Path) -> tuple[dict, str]:
    """`recipe.yaml` as data and as text. Raises RecipeError naming the file and line."""
    text, source = recipe_io.locate(path)
    data, _ = recipe_io.parse_text(text, source)
    return data, text


def mode_of(metric: str) -> str | None:
    """The direction of a metric name (`val_acc`, `ema_val_acc`), None when it is not a known metric."""
    base = metric.split("_", 1)[1] if metric.startswith(("ema_", "swa_")) else metric
    return METRICS[base].mode if base in METRICS else None


def _monitor(summary: dict, index: dict, recipe: dict, history: list[dict]) -> tuple[str | None, str | None]:
    for source in (summary, index):
        if isinstance(source.get("monitor"), str):
            mode = source.get("mode")
            return source["monitor"], mode if mode in ("min", "max") else mode_of(source["monitor"])
    train = recipe.get("train")
    wanted = train.get("monitor") if isinstance(train, dict) else None
    if isinstance(wanted, str) and wanted != "auto":
        return wanted, mode_of(wanted)
    seen = {k for r in history for k in r}
    name = "val_acc" if "val_acc" in seen else "val_loss" if "val_loss" in seen else None
    return name, mode_of(name) if name else None


def read_run(path: Path, label: str) -> Run:
    """Everything `nnrun report` shows of one run folder."""
    notes: list[str] = []
    recipe, text = read_recipe(path / RECIPE)
    history = read_history(path / METRICS_FILE, notes)
    summary = read_json(path / SUMMARY, notes)
    index = read_json(path / INDEX, notes)
    monitor, mode = _monitor(summary, index, recipe, history)
    return Run(path=path, label=label, recipe=recipe, recipe_text=text, history=history, monitor=monitor,
               mode=mode, summary=summary, notes=notes)
