"""What a search has produced, read back from the storage: one row per trial, progress lines
while it runs, and the collected result.

Rows show each trial's folder as it is on disk *now* (a folder renamed `-lost` by another process,
or a search folder that was copied or moved, is found in this search's own folder first), and a
retried trial's row says which trial it retries instead of carrying the lost worker's note.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnrun.recipe.search import SearchSpec
from nnrun.tools.search import study as studies
from nnrun.tools.search.edges import edge_warnings
from nnrun.tools.search.recovery import retried_numbers, trial_folder
from nnrun.tools.search.sampling import decode_choice
from nnrun.tools.search.worker import WorkerPlan

Event = Callable[[str], None]


@dataclass
class TrialRow:
    """One trial as the results table shows it."""

    stage: int
    number: int
    state: str  # complete, pruned, failed, running, waiting
    value: float | None
    params: dict[str, Any]
    run_dir: str | None
    epochs: float | None = None
    note: str = ""


@dataclass
class SearchResult:
    """What a search produced (all stages, all workers)."""

    out: Path
    study: str
    storage: str
    metric: str
    mode: str
    trials: list[TrialRow]
    best: TrialRow | None
    narrowed: list[list[str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    worker_failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def ranked(self) -> list[TrialRow]:
        """Trials sorted by stage (last first), then by the metric (best first); unfinished last."""
        sign = -1.0 if self.mode == "max" else 1.0
        return sorted(self.trials, key=lambda r: (-r.stage, r.value is None or not math.isfinite(r.value),
                                                  sign * (r.value if r.value is not None else 0.0)))


def format_value(v: Any) -> str:
    """A parameter value for tables and event lines."""
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _note(t) -> str:
    """Why a trial ended as it did: its error, how it was lost, when it was pruned; for a retry
    that did not fail itself, which trial it retries."""
    state = t.state.name
    note = ""
    if state == "FAIL":
        note = t.user_attrs.get("error") or t.user_attrs.get("lost") or ""
    elif state == "PRUNED":
        last = max(t.intermediate_values) if t.intermediate_values else None
        note = f"pruned after {last + 1} evaluation(s)" if last is not None else "pruned"
    history = t.system_attrs.get("retry_history")
    if not note and history:
        note = f"retry of trial {history[-1]}"
    return note.splitlines()[0] if note else ""


def trial_row(k: int, t, spec: SearchSpec, stage_dir: Path) -> TrialRow:
    """Stage `k`'s trial `t` as a row; `stage_dir` is where this search keeps that stage's folders."""
    choices = {p.key: p.choices for p in spec.params if p.kind == "choice"}
    params = {key: decode_choice(v, choices[key]) if key in choices else v for key, v in t.params.items()}
    state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(t.state.name, t.state.name.lower())
    value = t.value if t.state.name == "COMPLETE" else t.user_attrs.get("value")
    stored = t.user_attrs.get("run_dir")
    folder = trial_folder(stage_dir, t.number, stored) if stored else None
    return TrialRow(stage=k + 1, number=t.number, state=state, value=value, params=params,
                    run_dir=str(folder) if folder is not None else stored, epochs=t.user_attrs.get("epochs"),
                    note=_note(t))


class Monitor:
    """Turns what the storage holds into event lines, once each (works for any number of workers),
    and counts the trials done for a progress handle (:mod:`nnrun.progress`) when given one."""

    def __init__(self, storage, plan: WorkerPlan, emit: Event):
        self.storage, self.plan, self.emit = storage, plan, emit
        self.seen: set[tuple[int, int]] = set()
        self.narrowed: set[int] = set()
        self.bar = None   # a progress handle advanced by the trials done, once set
        self.done = 0

    def studies(self):
        """(stage index, study) of every stage whose study exists yet, in order."""
        import optuna

        for k in range(len(self.plan.spec.stages)):
            name = self.plan.study_name(k)
            if not studies.study_exists(self.storage, name):
                return
            yield k, optuna.load_study(study_name=name, storage=self.storage)

    def count_done(self) -> int:
        """Trials finished that take a place in the budget, at most each stage's budget, all stages."""
        done = 0
        for k, study in self.studies():
            trials = study.get_trials(deepcopy=False)
            retried = retried_numbers(trials)
            finished = sum(1 for t in trials if t.state.is_finished() and studies.counts_toward_budget(t, retried))
            done += min(finished, self.plan.spec.stages[k].trials)
        return done

    def poll(self) -> None:
        for k, study in self.studies():
            if k not in self.narrowed and "narrowed" in study.user_attrs:
                self.narrowed.add(k)
                self.emit(f"stage {k + 1}: narrowed " + "; ".join(study.user_attrs["narrowed"]))
            for t in study.get_trials(deepcopy=False):
                if t.state.is_finished() and (k, t.number) not in self.seen and not t.user_attrs.get("surplus"):
                    self.seen.add((k, t.number))
                    self.emit(self._line(k, t))
        if self.bar is not None:
            done = self.count_done()
            self.bar.advance(max(done - self.done, 0))  # 0: a tick, so a display can redraw its ETA
            self.done = max(done, self.done)

    def _line(self, k: int, t) -> str:
        label = f"stage {k + 1} " if len(self.plan.spec.stages) > 1 else ""
        row = trial_row(k, t, self.plan.spec, self.plan.stage_dir(k))
        what = f"{self.plan.spec.metric}={row.value:.4f}" if row.value is not None else row.note
        params = ", ".join(f"{k}={format_value(v)}" for k, v in row.params.items())
        return f"{label}trial {t.number}: {row.state} {what} ({params})"


def collect(storage, plan: WorkerPlan, *, seconds: float = 0.0, failures: list[str] | None = None) -> SearchResult:
    """Read every stage's trials back from the storage into a :class:`SearchResult`."""
    import optuna

    spec, rows, narrowed = plan.spec, [], []
    for k in range(len(spec.stages)):
        name = plan.study_name(k)
        if not studies.study_exists(storage, name):
            break
        study = optuna.load_study(study_name=name, storage=storage)
        narrowed.append(list(study.user_attrs.get("narrowed", [])))
        rows += [trial_row(k, t, spec, plan.stage_dir(k)) for t in study.get_trials(deepcopy=False)
                 if not t.user_attrs.get("surplus")]
    last = max((r.stage for r in rows if r.state == "complete"), default=None)
    done = [r for r in rows if r.state == "complete" and r.stage == last and r.value is not None]
    best = (max if spec.mode == "max" else min)(done, key=lambda r: r.value) if done else None
    warnings = edge_warnings(best.params, spec.params) if best else []
    return SearchResult(out=Path(plan.out), study=plan.study, storage=plan.storage, metric=spec.metric,
                        mode=spec.mode, trials=rows, best=best, narrowed=narrowed, warnings=warnings,
                        worker_failures=list(failures or []), seconds=seconds)
