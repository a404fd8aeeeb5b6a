"""Checkpoint files: atomic writes, safe and checked loads, RNG capture, and top-k + last retention.

A checkpoint is a plain dict of tensors and primitives, so it loads with
``torch.load(..., weights_only=True)``: nothing in a file can run code. It is written to a
temporary file in the same folder, fsynced, then renamed over the target
(:func:`nnrun.files.write_atomic`), so a crash, Ctrl-C or a full disk never leaves a half-written
checkpoint behind (timm `checkpoint_saver.py` does the same). A loaded file is checked key by key
before anyone uses it, so a hand-edited or foreign `.pt` ends in one CheckpointError.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnrun.errors import CheckpointError, writing
from nnrun.files import crash_point, write_atomic, write_text_atomic

FORMAT = "nnrun-checkpoint"
FORMAT_VERSION = 2  # 2: `rng` is a list with one entry per process, `world_size`
WRITE_HINT = "free space or choose a writable folder with --run-dir (or log.run_dir=...)"


def save_atomic(payload: dict, path: Path, *, hint: str = WRITE_HINT) -> None:
    """Write `payload` to `path` via temp file + fsync + rename (never a partial file).

    Raises:
        OutputError: the folder cannot be written; `path` is unchanged.
    """
    path = Path(path)
    write_atomic(path, lambda f: torch.save(payload, f), what=f"checkpoints in {path.parent}", hint=hint)


# ---------------------------------------------------------------------------------------------
# loading


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run folder / its checkpoints folder -> its `last.pt`."""
    path = Path(path)
    for candidate in (path, path / "last.pt", path / "checkpoints" / "last.pt"):
        if candidate.is_file():
            return candidate
    if path.is_dir():
        newest = newest_checkpoint(path)
        if newest is not None:
            hint = f"resume from the newest checkpoint there: --resume {newest}"
        elif (path / "recipe.yaml").is_file():
            hint = (f"the run stopped before its first checkpoint: start it again with "
                    f"`nnrun train {path / 'recipe.yaml'} --run-dir {path}`")
        else:
            hint = "give a checkpoint file or a run folder that holds checkpoints/last.pt"
        raise CheckpointError(f"no last.pt in {path} or {path / 'checkpoints'}", hint=hint)
    raise CheckpointError(f"checkpoint {path} does not exist", hint="check the path")


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of a run folder (or checkpoints folder) that reached the furthest step, from
    the names the saver gives (`epoch012-...pt`): what is left when `last.pt` is missing."""
    folder = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    found = [(int(m.group(1)), p) for p in folder.glob("epoch*.pt") if (m := re.match(r"epoch(\d+)-", p.name))]
    return max(found)[1] if found else None


def _read(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}", hint="check the path and its permissions") from exc
    if magic != b"PK\x03\x04":  # torch.save's zip archive; anything else is not a checkpoint
        raise CheckpointError(f"{path} is not a checkpoint (not a PyTorch zip archive)",
                              hint="give a .pt file written by `nnrun train`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} holds objects that cannot be loaded safely; nnrun refuses to "
                              "unpickle arbitrary code", hint="use a checkpoint written by nnrun") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError,
            TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise CheckpointError(f"{path} is corrupt or truncated ({exc.__class__.__name__}: {first})",
                              hint="use another checkpoint, e.g. last.pt or a top-k file of the run") from exc


def load(path: str | Path, *, resume: bool = False) -> dict:
    """Load a checkpoint safely (`weights_only=True`, on CPU) and check its format and contents
    (with `resume`, also everything a resume needs: optimizer, schedule, RNG states, position)."""
    path = resolve(path)
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an nnrun checkpoint",
                              hint="give a .pt file written by `nnrun train`")
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path} has no valid format_version ({version!r})",
                              hint="give a .pt file written by `nnrun train`")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version}; this nnrun reads up to {FORMAT_VERSION} "
                              f"(the file was written by nnrun {payload.get('version')})", hint="upgrade nnrun")
    problem = payload_problem(payload, resume=resume)
    if problem:
        raise CheckpointError(f"{path} is damaged: {problem}", hint="use another checkpoint of the run "
                                                                    "(last.pt or a top-k file)")
    payload["path"] = str(path)
    return payload


_REQUIRED: dict[str, tuple[type, ...]] = {
    "model": (dict,), "recipe": (dict,), "normalization": (dict,), "data": (dict,), "epoch": (int,), "step": (int,),
}
_FOR_RESUME: dict[str, tuple[type, ...]] = {
    "batch": (int,), "history": (list,), "optimizer": (dict,), "schedule": (dict,), "rng": (dict, list),
    "epoch_examples": (int,), "bad_evals": (int,), "best": (dict, type(None)),
}
_DATA_KEYS = {"task": (str,), "num_outputs": (int,), "input_shape": (list, tuple)}


def _kind(mapping: dict, key: str) -> str:
    return type(mapping[key]).__name__ if key in mapping else "missing"


def payload_problem(payload: dict, *, resume: bool = False) -> str | None:
    """The first thing a payload lacks or holds in the wrong type (for prediction, or with
    `resume` for continuing the run), or None."""
    required = {**_REQUIRED, **(_FOR_RESUME if resume else {})}
    for key, types in required.items():
        if not isinstance(payload.get(key), types) or isinstance(payload.get(key), bool):
            return f"`{key}` is {_kind(payload, key)}"
    if not all(isinstance(v, torch.Tensor) for v in payload["model"].values()):
        return "`model` holds something other than tensors"
    for key, types in _DATA_KEYS.items():
        if not isinstance(payload["data"].get(key), types):
            return f"`data.{key}` is {_kind(payload['data'], key)}"
    return None


# ---------------------------------------------------------------------------------------------
# RNG states, as tensors and primitives so they survive weights_only loading


def capture_rng() -> dict[str, Any]:
    """Every RNG a training run draws from: Python, NumPy, torch CPU and CUDA."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states saved by :func:`capture_rng`."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# retention


def weights_finite(payload: dict) -> bool:
    """True when every floating tensor of the model (and its EMA, if any) is finite (one host read)."""
    tensors = list(payload.get("model", {}).values())
    if payload.get("ema"):
        tensors += list(payload["ema"]["state_dict"].values())
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def checkpoint_name(epoch: int, monitor: str, value: float | None) -> str:
    """`epoch012-val_acc=0.9812.pt`: the epoch and the monitored metric in the name."""
    metric = f"{monitor}={value:.4f}" if value is not None else "nometric"
    return f"epoch{epoch:03d}-{metric}.pt"


def remove_temporary_files(folder: Path) -> list[Path]:
    """Delete the `.*.tmp` files an interrupted atomic write left in `folder` (and below)."""
    stray = [p for p in folder.rglob(".*.tmp") if p.is_file()] if folder.is_dir() else []
    for p in stray:
        p.unlink(missing_ok=True)
    return stray


class CheckpointSaver:
    """Keeps `last.pt` plus the best `top_k` checkpoints by the monitor, with an index file.

    `index.json` lists the kept files with their epoch, step and metric so that later tools
    (ensembles, search) can choose checkpoints without loading every payload. It is written
    (atomically) before a dropped file is deleted, so a crash leaves at most an extra file that
    :meth:`reconcile` accounts for on resume.
    """

    def __init__(self, folder: Path, *, monitor: str, mode: str, top_k: int):
        self.folder, self.monitor, self.mode, self.top_k = Path(folder), monitor, mode, top_k
        self.kept: list[dict] = []
        self.last_path: Path | None = None  # the last complete checkpoint this run wrote or resumed from

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def best(self) -> dict | None:
        """The index entry of the best kept checkpoint."""
        return self.kept[0] if self.kept else None

    def reconcile(self, *, upto_step: int) -> None:
        """On resume: take the index as the folder has it, drop entries whose file is gone, rank
        the top-k files the index missed (a crash between a save and the index update) and
        delete what falls out, and remove stray temporary files."""
        remove_temporary_files(self.folder)
        index = self.folder / "index.json"
        entries = []
        if index.is_file():
            try:
                entries = [e for e in json.loads(index.read_text())["top_k"] if (self.folder / e["file"]).is_file()]
            except (ValueError, KeyError, TypeError, OSError):
                entries = []
        listed = {e["file"] for e in entries}
        with writing(f"checkpoints in {self.folder}", hint=WRITE_HINT):
            for p in sorted(self.folder.glob("epoch*.pt")):
                if p.name not in listed and p.is_file():
                    entries += self._orphan_entry(p, upto_step)
            self.kept = sorted(entries, key=lambda e: e["value"], reverse=self.mode == "max")
            self._rotate()

    def _orphan_entry(self, path: Path, upto_step: int) -> list[dict]:
        """The index entry of a top-k file the index does not list, or [] after deleting it when
        it is unreadable, ranks another metric, or lies past the resumed step (it will be redone)."""
        try:
            payload = load(path)
        except CheckpointError:
            payload = None
        value = (payload or {}).get("metrics", {}).get(self.monitor) if payload else None
        if payload is None or payload.get("step", upto_step + 1) > upto_step or not isinstance(value, float):
            path.unlink(missing_ok=True)
            return []
        return [{"file": path.name, "epoch": payload["epoch"], "step": payload["step"], "value": value}]

    def save_last(self, payload: dict, *, finite: bool | None = None) -> Path:
        """Write last.pt, unless the weights are non-finite: then a `nonfinite-stepN.pt` beside it,
        so the last checkpoint with finite weights is never overwritten (peers.md: pocket-tts #262).
        `finite` is the caller's weights_finite(payload), when it already has it."""
        finite = weights_finite(payload) if finite is None else finite
        path = self.folder / "last.pt" if finite else self.folder / f"nonfinite-step{payload.get('step')}.pt"
        save_atomic(payload, path)
        if finite:
            self.last_path = path
        return path

    def save_ranked(self, payload: dict, *, epoch: int, step: int, value: float | None,
                    finite: bool | None = None) -> Path | None:
        """Save a top-k candidate if it ranks; drop the checkpoint that falls out of the top k.
        Non-finite weights and NaN metrics never rank."""
        if self.top_k == 0 or value is None or value != value:
            return None
        if not (weights_finite(payload) if finite is None else finite):
            return None
        ranked = len(self.kept) < self.top_k or self._better(value, self.kept[-1]["value"])
        if not ranked:
            return None
        name = checkpoint_name(epoch, self.monitor, value)
        save_atomic(payload, self.folder / name)
        crash_point("rotate:after-save")
        self.kept = [e for e in self.kept if e["file"] != name]
        self.kept.append({"file": name, "epoch": epoch, "step": step, "value": value})
        self.kept.sort(key=lambda e: e["value"], reverse=self.mode == "max")
        self._rotate()
        return self.folder / name

    def _rotate(self) -> None:
        """Write the index of the best `top_k`, then delete the files that fell out of it."""
        dropped, self.kept = self.kept[self.top_k:], self.kept[: self.top_k]
        self._write_index()
        crash_point("rotate:after-index")
        with writing(f"checkpoints in {self.folder}", hint=WRITE_HINT):
            for entry in dropped:
                (self.folder / entry["file"]).unlink(missing_ok=True)

    def _write_index(self) -> None:
        data = {"monitor": self.monitor, "mode": self.mode, "top_k": self.kept}
        write_text_atomic(self.folder / "index.json", json.dumps(data, indent=1), hint=WRITE_HINT,
                          what=f"the checkpoint index in {self.folder}")
