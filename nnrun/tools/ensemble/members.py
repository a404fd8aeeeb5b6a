"""Prediction-time ensembles: find members, rank them by their stored metric, check that they fit
together, and average their predictions.

Discovery never loads a payload it does not need: each run's ``checkpoints/index.json`` (written
by :class:`nnrun.checkpoint.CheckpointSaver`) gives the metric of its top-k files. Every member is
rebuilt from the recipe stored in its own checkpoint and sees inputs whitened with its own
training statistics. Weight averaging lives in
:mod:`nnrun.tools.ensemble.soups`; rebuilding and predicting in :mod:`nnrun.inference`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nnrun import checkpoint
from nnrun.errors import CheckpointError, NnrunError
from nnrun.inference import rebuild_model, stored_recipe
from nnrun.recipe.schema import Recipe
from nnrun.recipe.tables import metric_info

MODES = ("mean", "logits", "vote", "weights")
_SKIP_DIRS = {"tb", "__pycache__"}
# Data-config keys that decide which examples land in each split.
_SPLIT_KEYS = {"val": ("source", "path", "seed", "val_fraction", "limit", "task", "label_column",
                       "feature_columns", "factory"),
               "test": ("source", "path", "task", "label_column", "feature_columns", "factory")}


@dataclass
class Candidate:
    """A checkpoint file that may become a member; metric from index.json when listed there."""

    path: Path
    monitor: str | None = None
    value: float | None = None
    payload: dict | None = field(default=None, repr=False)

    def load(self) -> dict:
        """The payload (loaded once, safely), without optimizer state and RNG."""
        if self.payload is None:
            payload = checkpoint.load(self.path)
            for key in ("optimizer", "rng", "schedule", "scaler"):
                payload.pop(key, None)
            self.payload = payload
        return self.payload

    def stored(self, metric: str) -> float | None:
        """The metric stored for this checkpoint: index.json, else the payload's last evaluation."""
        if self.monitor == metric and self.value is not None:
            return float(self.value)
        value = (self.load().get("metrics") or {}).get(metric)
        return None if value is None else float(value)

    def monitor_name(self) -> str | None:
        return self.monitor or self.load().get("monitor")


# ---------------------------------------------------------------------------------------------
# discovery


def _read_index(folder: Path) -> dict | None:
    try:
        index = json.loads((folder / "index.json").read_text())
        return index if isinstance(index.get("top_k"), list) else None
    except (OSError, ValueError, AttributeError):
        return None


def _checkpoints_folder(folder: Path, all_checkpoints: bool) -> list[Candidate]:
    """Members of one run's checkpoints folder.

    Default: the strategy members (the files under ``members/``: snapshots or every-N checkpoints)
    when there are any, else the best top-k file of index.json, else ``last.pt``.
    ``all_checkpoints``: the top-k files, the members and any other checkpoint of the folder
    (``last.pt`` only when nothing else is there). A file the index does not list (left by a
    crash between a save and the index update) is never taken for a strategy member, and the
    guard's diagnostic ``nonfinite-step*.pt`` files never join.
    """
    index = _read_index(folder) or {"top_k": []}
    monitor = index.get("monitor")
    top = [Candidate(folder / e["file"], monitor, e.get("value")) for e in index["top_k"]
           if isinstance(e, dict) and (folder / str(e.get("file"))).is_file()]
    listed = {c.path.name for c in top}
    members = [Candidate(p) for p in sorted((folder / "members").rglob("*.pt")) if not p.name.startswith(".")]
    unlisted = [Candidate(p) for p in sorted(folder.glob("*.pt"))
                if p.name not in listed and p.name != "last.pt" and not p.name.startswith((".", "nonfinite-"))]
    found = top + members + unlisted if all_checkpoints else members or top[:1]
    if not found and (folder / "last.pt").is_file():
        found = [Candidate(folder / "last.pt", monitor)]
    return found


def _scan(path: Path, all_checkpoints: bool) -> list[Candidate]:
    if path.is_file():
        index = _read_index(path.parent) or {"top_k": []}
        entry = next((e for e in index["top_k"] if isinstance(e, dict) and e.get("file") == path.name), None)
        return [Candidate(path, index.get("monitor"), entry.get("value") if entry else None)]
    if (path / "checkpoints").is_dir():
        return _checkpoints_folder(path / "checkpoints", all_checkpoints)
    if (path / "index.json").is_file() or (path / "last.pt").is_file():
        return _checkpoints_folder(path, all_checkpoints)
    found = [Candidate(p) for p in sorted(path.glob("*.pt")) if not p.name.startswith(".")]
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        if not sub.name.startswith(".") and sub.name not in _SKIP_DIRS:
            found += _scan(sub, all_checkpoints)
    return found


def discover(paths: Iterable[str | Path], *, all_checkpoints: bool = False) -> list[Candidate]:
    """Checkpoints under ``paths``: files count as given; folders are searched recursively.

    A run folder (one holding ``checkpoints/``) contributes its strategy members if it has any,
    else its best checkpoint (see :func:`_checkpoints_folder`); ``all_checkpoints`` takes every
    checkpoint but ``last.pt``. A folder without runs (a study, an ensemble folder) is searched
    for run folders and loose ``.pt`` files.

    Raises:
        CheckpointError: a path that does not exist, or no checkpoint at all.
    """
    found: dict[Path, Candidate] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CheckpointError(f"{path} does not exist", hint="give checkpoint files, run folders or a "
                                                                  "folder of runs")
        cands = _scan(path, all_checkpoints)
        if not cands:
            raise CheckpointError(f"no checkpoint found in {path}", hint="give a run folder written by "
                                  "`nnrun train`, a folder of such runs, or .pt files")
        for c in cands:
            found.setdefault(c.path.resolve(), c)
    return list(found.values())


def rank(cands: Sequence[Candidate], *, by: str | None = None,
         top_k: int | None = None) -> tuple[list[Candidate], str, list[float | None]]:
    """The candidates best first by ``by`` (default: their shared monitor), cut to ``top_k``.

    Returns:
        (kept candidates, the metric name, their stored values); a missing value ranks last.
    """
    if top_k is not None and top_k < 1:
        raise NnrunError(f"--top-k must be at least 1, got {top_k}")
    if by is None:
        names = [m for m in (c.monitor_name() for c in cands) if m]
        if len(set(names)) > 1 and top_k is not None:
            raise NnrunError(f"the checkpoints monitor different metrics ({', '.join(sorted(set(names)))})",
                             hint="choose the ranking metric with --by")
        by = names[0] if names else "val_acc"
    mode = metric_info(by).mode
    values = [c.stored(by) for c in cands]
    if top_k is not None and all(v is None for v in values):
        raise NnrunError(f"no checkpoint stores `{by}`, so --top-k cannot rank them",
                         hint="rank by a metric the runs evaluated, e.g. --by val_loss")
    sign = -1.0 if mode == "max" else 1.0
    order = sorted(range(len(cands)), key=lambda i: (values[i] is None, sign * (values[i] or 0.0), i))
    order = order[:top_k] if top_k is not None else order
    return [cands[i] for i in order], by, [values[i] for i in order]


def short_labels(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the members' common folder (unique and short for the table)."""
    resolved = [Path(p).resolve() for p in paths]
    if len(resolved) == 1:
        return [resolved[0].name]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    return [str(p.relative_to(common)) for p in resolved]


# ---------------------------------------------------------------------------------------------
# members


def ema_weights(payload: dict) -> dict | None:
    """The EMA model state dict stored in a payload (``ema: {"state_dict": ...}``), or None.

    Handles ``AveragedModel`` state dicts (keys prefixed ``module.``, an ``n_averaged`` counter).
    """
    ema = payload.get("ema")
    if not isinstance(ema, dict):
        return None
    state = ema.get("state_dict", ema)
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        return None
    state = {k: v for k, v in state.items() if k not in ("n_averaged", "module.n_averaged")}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state or None


@dataclass
class Member:
    """One ensemble member: where it came from and the weights it predicts with."""

    path: Path
    label: str
    payload: dict = field(repr=False)
    state_dict: dict = field(repr=False)
    weights: str            # "ema" or "raw"
    stored: float | None    # its stored ranking metric

    @property
    def data(self) -> dict:
        return self.payload["data"]

    def build(self, device) -> torch.nn.Module:
        """The network from this member's own stored recipe, with its weights, in eval mode."""
        return rebuild_model(self.payload, device=device, state_dict=self.state_dict,
                             label=f"{self.label} ({self.weights} weights)")

    def recipe(self) -> Recipe:
        return stored_recipe(self.payload)


def load_members(cands: Sequence[Candidate], values: Sequence[float | None], *, use_ema: bool = True) -> list[Member]:
    """Load the chosen candidates; EMA weights are used when stored and ``use_ema``."""
    labels = short_labels([c.path for c in cands])
    members = []
    for c, label, value in zip(cands, labels, values):
        payload = c.load()
        ema = ema_weights(payload) if use_ema else None
        members.append(Member(c.path, label, payload, ema if ema is not None else payload["model"],
                              "ema" if ema is not None else "raw", value))
    return members


def check_compatible(members: Sequence[Member], *, mode: str, split: str, data_path: str | None) -> None:
    """Refuse members that cannot be combined, naming the two members and what differs.

    All modes: same task, classes, outputs, input shape, class names, and the same examples in
    the split (data keys of :data:`_SPLIT_KEYS`; ``--data`` replaces ``path``). ``weights``: also
    the same architecture, parameter names and shapes, training split and input statistics.
    """
    if len(members) < 2:
        raise NnrunError(f"an ensemble needs at least 2 members, found {len(members)}",
                         hint="a run folder contributes its best checkpoint: give several runs, "
                              "use --all for every checkpoint of a run, or raise --top-k")
    if mode not in MODES:
        raise NnrunError(f"unknown mode `{mode}`", hint=f"use one of {', '.join(MODES)}")
    first = members[0]
    if mode == "vote" and first.data["task"] != "classification":
        raise NnrunError("vote needs a classification task", hint="use --mode mean for regression")
    keys = _SPLIT_KEYS["val" if mode == "weights" else split]
    for other in members[1:]:
        diffs = _data_diffs(first, other, keys, data_path)
        if mode == "weights":
            diffs += _weight_diffs(first, other)
        if diffs:
            raise CheckpointError(f"members {first.label} and {other.label} cannot be combined: "
                                  + "; ".join(diffs), hint=_hint(mode, split))


def _hint(mode: str, split: str) -> str:
    if mode == "weights":
        return "weight averaging needs checkpoints of one architecture trained on the same data split"
    if split == "val":
        return "members with different validation splits can be compared on --split test or --data"
    return "combine members trained on the same data"


def _data_diffs(a: Member, b: Member, keys: Sequence[str], data_path: str | None) -> list[str]:
    diffs = [f"{k} differs ({a.data.get(k)!r} vs {b.data.get(k)!r})"
             for k in ("task", "num_classes", "num_outputs", "input_shape", "class_names")
             if _norm(a.data.get(k)) != _norm(b.data.get(k))]
    ra, rb = a.payload["recipe"], b.payload["recipe"]
    for k in keys:
        if k == "path" and data_path is not None:
            continue
        va, vb = (_split_seed(ra), _split_seed(rb)) if k == "seed" else (ra.get("data", {}).get(k),
                                                                          rb.get("data", {}).get(k))
        if va != vb:
            diffs.append(f"{'seed (of the validation split)' if k == 'seed' else 'data.' + k} differs "
                         f"({va!r} vs {vb!r})")
    return diffs


def _split_seed(recipe: dict):
    """The seed that carved the validation split (nnrun.build.split_seed on the stored dict)."""
    split = recipe.get("data", {}).get("split_seed")
    return recipe.get("seed") if split is None else split


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _weight_diffs(a: Member, b: Member) -> list[str]:
    if a.payload["recipe"].get("model") != b.payload["recipe"].get("model"):
        ma, mb = a.payload["recipe"].get("model", {}), b.payload["recipe"].get("model", {})
        keys = [k for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)]
        return [f"architecture differs (model.{keys[0]}: {ma.get(keys[0])!r} vs {mb.get(keys[0])!r})"]
    sa, sb = a.state_dict, b.state_dict
    if sa.keys() != sb.keys():
        missing = sorted(set(sa) ^ set(sb))
        return [f"parameter names differ (e.g. {missing[0]})"]
    for k in sa:
        if sa[k].shape != sb[k].shape:
            return [f"parameter {k} has shape {tuple(sa[k].shape)} vs {tuple(sb[k].shape)}"]
    na, nb = a.payload["normalization"], b.payload["normalization"]
    for k in ("shift", "scale"):
        if torch.is_tensor(na.get(k)) and torch.is_tensor(nb.get(k)) and \
                not torch.allclose(na[k], nb[k], rtol=1e-5, atol=1e-6):
            return ["input normalization statistics differ"]
    return []


# ---------------------------------------------------------------------------------------------
# data and prediction


def majority_vote(votes: torch.Tensor, mean_probs: torch.Tensor) -> torch.Tensor:
    """The class with most votes; a tie goes to the tied class with the highest mean probability
    (then the lowest index). ``votes``: int [N, C] counts; ``mean_probs``: [N, C]."""
    best = votes.max(dim=1, keepdim=True).values
    tied = votes == best
    return torch.where(tied, mean_probs.double(), torch.full_like(mean_probs, -1.0, dtype=torch.float64)).argmax(1)


class Averager:
    """Streams members' outputs into running float64 sums (memory: a few [N, k] tensors)."""

    def __init__(self, task: str, mode: str):
        self.task, self.mode, self.n = task, mode, 0
        self.prob_sum = self.logit_sum = self.votes = None

    def add(self, outputs: torch.Tensor) -> None:
        out = outputs.double()
        if self.n == 0:
            self.logit_sum = torch.zeros_like(out)
            if self.task == "classification":
                self.prob_sum = torch.zeros_like(out)
                self.votes = torch.zeros(out.shape, dtype=torch.int64)
        self.logit_sum += out
        if self.task == "classification":
            self.prob_sum += torch.softmax(out, dim=1)
            self.votes[torch.arange(len(out)), out.argmax(1)] += 1
        self.n += 1

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(outputs whose softmax is the ensemble's probabilities [or the mean regression values],
        vote winners or None)."""
        if self.task != "classification" or self.mode == "logits":
            return (self.logit_sum / self.n).float(), None
        probs = self.prob_sum / self.n
        outputs = probs.clamp_min(1e-300).log().float()
        if self.mode == "vote":
            return outputs, majority_vote(self.votes, probs)
        return outputs, None


