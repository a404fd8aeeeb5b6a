"""The curves of a run against optimizer steps, and one colour per run.

Training loss and learning rates come from the TensorBoard events when the run wrote them
(`train/loss` and `lr/<group>` every `log.every_n_steps` steps, or every step with a clip policy):
far more points than one per evaluation. Without events (`log.tensorboard: false`, or an unreadable
file) they come from `metrics.jsonl` (the epoch's mean loss and the rate at each evaluation).
Validation loss and the monitored metric always come from `metrics.jsonl`.

TensorBoard's reader is imported only here and only when a run has events (it is slow to import).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from pathlib import Path

# matplotlib's tab10: the colours people know from every matplotlib plot
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf")


@dataclass
class Curve:
    """Points (step, value); a None value is a non-finite one the run recorded as null."""

    steps: list[float] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(v is not None for v in self.values)

    @property
    def last(self) -> float | None:
        return next((v for v in reversed(self.values) if v is not None), None)


@dataclass
class RunCurves:
    train_loss: Curve
    val_loss: Curve
    metric: Curve
    lrs: dict[str, Curve]
    source: str                # where the training loss and rates came from: `tensorboard` or `metrics.jsonl`


def colors(n: int) -> list[str]:
    """n distinct colours as `#rrggbb`: tab10, then evenly spaced hues."""
    if n <= len(TAB10):
        return list(TAB10[:n])
    rgb = [colorsys.hsv_to_rgb(i / n, 0.75, 0.85) for i in range(n)]
    return ["#" + "".join(f"{round(c * 255):02x}" for c in color) for color in rgb]


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def from_history(history: list[dict], key: str) -> Curve:
    """The values of `key` at each evaluation that recorded it."""
    curve = Curve()
    for record in history:
        if key in record and isinstance(record.get("step"), (int, float)):
            curve.steps.append(float(record["step"]))
            curve.values.append(_finite(record[key]))
    return curve


def read_events(folder: Path, notes: list[str]) -> dict[str, Curve]:
    """`train/loss` and `lr/<group>` from the TensorBoard events in `folder` ({} when there are none)."""
    if not folder.is_dir() or not any(p.name.startswith("events.out.tfevents") for p in folder.iterdir()):
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
        acc.Reload()
        tags = [t for t in acc.Tags().get("scalars", []) if t == "train/loss" or t.startswith("lr/")]
        out = {}
        for tag in tags:
            events = acc.Scalars(tag)
            out[tag] = Curve([float(e.step) for e in events], [_finite(e.value) for e in events])
        return out
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign event file: fall back to metrics.jsonl
        notes.append(f"{folder}: TensorBoard events not readable ({type(exc).__name__}: {exc}); "
                     "using metrics.jsonl for the training loss and learning rate")
        return {}


def run_curves(path: Path, history: list[dict], metric: str | None, notes: list[str]) -> RunCurves:
    """The four curves of one run (see the module docstring for where each comes from); `metric`
    None leaves the metric's curve empty."""
    events = read_events(path / "tb", notes)
    groups = sorted({k for r in history for k in r if k.startswith("lr/")})
    if events.get("train/loss"):
        train, lrs, source = events["train/loss"], {t[3:]: c for t, c in events.items() if t.startswith("lr/")}, \
            "tensorboard"
    else:
        train, lrs, source = from_history(history, "train_loss"), {}, "metrics.jsonl"
    if not lrs:
        lrs = {g[3:]: from_history(history, g) for g in groups}
    return RunCurves(train_loss=train, val_loss=from_history(history, "val_loss"),
                     metric=from_history(history, metric) if metric else Curve(), lrs=lrs, source=source)
