"""Checkpoint files: atomic writes, safe loads, RNG capture, and top-k + last retention.

A checkpoint is a plain dict of tensors and primitives, so it loads with
``torch.load(..., weights_only=True)``: nothing in a file can run code. It is written to a
temporary file in the same folder, fsynced, then renamed over the target, so a crash or Ctrl-C
never leaves a half-written checkpoint behind (timm `checkpoint_saver.py` does the same).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnrun.errors import CheckpointError, OutputError

FORMAT = "nnrun-checkpoint"
FORMAT_VERSION = 1


def save_atomic(payload: dict, path: Path) -> None:
    """Write `payload` to `path` via temp file + fsync + rename (never a partial file)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write checkpoints in {path.parent}: {exc.strerror}",
                          hint="choose a writable folder with --run-dir or log.run_dir") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run folder / its checkpoints folder -> its `last.pt`."""
    path = Path(path)
    for candidate in (path, path / "last.pt", path / "checkpoints" / "last.pt"):
        if candidate.is_file():
            return candidate
    if path.is_dir():
        raise CheckpointError(f"no last.pt in {path} or {path / 'checkpoints'}",
                              hint="give a checkpoint file or a run folder that holds checkpoints/last.pt")
    raise CheckpointError(f"checkpoint {path} does not exist", hint="check the path")


def load(path: str | Path) -> dict:
    """Load a checkpoint safely (`weights_only=True`, on CPU) and check its format."""
    path = resolve(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} holds objects that cannot be loaded safely; nnrun refuses to "
                              "unpickle arbitrary code", hint="use a checkpoint written by nnrun") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})",
                              hint="use another checkpoint, e.g. last.pt or a top-k file of the run") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an nnrun checkpoint",
                              hint="give a .pt file written by `nnrun train`")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer nnrun ({payload.get('version')})",
                              hint="upgrade nnrun")
    payload["path"] = str(path)
    return payload


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


class CheckpointSaver:
    """Keeps `last.pt` plus the best `top_k` checkpoints by the monitor, with an index file.

    `index.json` lists the kept files with their epoch, step and metric so that later tools
    (ensembles, search) can choose checkpoints without loading every payload.
    """

    def __init__(self, folder: Path, *, monitor: str, mode: str, top_k: int):
        self.folder, self.monitor, self.mode, self.top_k = Path(folder), monitor, mode, top_k
        self.kept: list[dict] = []
        index = self.folder / "index.json"
        if index.is_file():
            try:
                self.kept = json.loads(index.read_text())["top_k"]
            except (ValueError, KeyError, TypeError):
                self.kept = []

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def best(self) -> dict | None:
        """The index entry of the best kept checkpoint."""
        return self.kept[0] if self.kept else None

    def save_last(self, payload: dict, *, finite: bool | None = None) -> Path:
        """Write last.pt, unless the weights are non-finite: then a `nonfinite-stepN.pt` beside it,
        so the last checkpoint with finite weights is never overwritten (peers.md: pocket-tts #262).
        `finite` is the caller's weights_finite(payload), when it already has it."""
        finite = weights_finite(payload) if finite is None else finite
        path = self.folder / "last.pt" if finite else self.folder / f"nonfinite-step{payload.get('step')}.pt"
        save_atomic(payload, path)
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
        self.kept = [e for e in self.kept if e["file"] != name]
        self.kept.append({"file": name, "epoch": epoch, "step": step, "value": value})
        self.kept.sort(key=lambda e: e["value"], reverse=self.mode == "max")
        for dropped in self.kept[self.top_k:]:
            (self.folder / dropped["file"]).unlink(missing_ok=True)
        self.kept = self.kept[: self.top_k]
        self._write_index()
        return self.folder / name

    def _write_index(self) -> None:
        data = {"monitor": self.monitor, "mode": self.mode, "top_k": self.kept}
        tmp = self.folder / ".index.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.folder / "index.json")
