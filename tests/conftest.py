"""Shared fixtures: tiny, fast recipes on the built-in digits data, the CLI, a training helper, writers
of tiny IDX and CIFAR-10 files, and a local HTTP server."""

from __future__ import annotations

import gzip
import pickle
import textwrap
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from nnrun.data.idx import IMAGES_MAGIC, LABELS_MAGIC

TINY = """\
seed: 3
data:
  source: digits
  batch_size: 64
  val_fraction: 0.2
model:
  arch: mlp
  hidden: [32]
  dropout: 0.1
optimizer:
  name: adam
  lr: 3e-3
train:
  epochs: 2
  save_top_k: 2
log:
  every_n_steps: 5
  progress: none
"""


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """A two-epoch digits MLP recipe file (with dropout, so RNG state matters for resume)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write recipe text (dedented) to a file and return its path."""

    def write(text: str, name: str = "r.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def cli():
    """Run the real `nnrun` command line in-process: `cli("train", path, "k=v")` -> click Result
    (exit_code, stdout, stderr separately; exceptions other than SystemExit propagate)."""
    from click.testing import CliRunner

    from nnrun.cli import main

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def train_tiny(tiny_recipe: Path, tmp_path: Path):
    """Train the tiny recipe with overrides into `tmp_path/<name>` (no signal handlers, no TensorBoard):
    `train_tiny(["train.epochs=3"], name="a", **run_kwargs)` -> TrainResult."""
    from nnrun import recipe as recipe_io
    from nnrun.workflows import train as train_wf

    def train(overrides=(), name: str = "run", **kw):
        r = recipe_io.load(tiny_recipe, ["log.tensorboard=false", *overrides])
        return train_wf.run(r, run_dir=tmp_path / name, handle_signals=False, **kw)

    return train


@pytest.fixture
def one_step(monkeypatch):
    """The train workflow stops every run after its first optimizer step (saving last.pt as usual)."""
    from nnrun.training.callbacks import Callback
    from nnrun.workflows import train as wf

    class OneStep(Callback):
        def on_step_end(self, trainer):
            trainer.request_stop("one step (test)")

    real = wf.run

    def run(recipe, **kw):
        return real(recipe, **{**kw, "callbacks": [*kw.get("callbacks", ()), OneStep()]})

    monkeypatch.setattr(wf, "run", run)


# Tiny data files for the sources that read them (IDX for mnist/fashion-mnist, CIFAR-10 batches), and
# a local HTTP server: plain functions, and fixtures of the same name that return them (under
# `--import-mode=importlib` a test module cannot import a conftest).

def write_idx(path: Path, arr: np.ndarray, magic: int, *, gz: bool = False) -> Path:
    """One IDX file (uint8 values), gzipped to `<path>.gz` when `gz`."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return path


def make_mnist(folder: Path, n_train: int = 30, n_test: int = 10, *, gz: bool = False) -> Path:
    """The four MNIST IDX files with random 28x28 images and labels 0..9 in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), IMAGES_MAGIC, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, LABELS_MAGIC, gz=gz)
    return folder


def make_cifar(folder: Path, per_batch: int = 4) -> Path:
    """The six CIFAR-10 python batches (protocol-2 pickles, bytes keys) with `per_batch` random images each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)], b"batch_label": b"x"}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return folder


@pytest.fixture(name="write_idx")
def write_idx_fixture():
    return write_idx


@pytest.fixture(name="make_mnist")
def make_mnist_fixture():
    return make_mnist


@pytest.fixture(name="make_cifar")
def make_cifar_fixture():
    return make_cifar


class Served:
    """What the server holds (URL path -> bytes), how often each path was asked for, and how many
    more times each path is cut short (a Content-Length larger than the bytes sent, then close)."""

    def __init__(self, base: str):
        self.base, self.blobs, self.hits, self.cut = base, {}, Counter(), Counter()


@pytest.fixture
def server():
    served = Served("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            served.hits[self.path] += 1
            blob = served.blobs.get(self.path)
            if blob is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            if served.cut[self.path] > 0:
                served.cut[self.path] -= 1
                self.wfile.write(blob[: len(blob) // 2])
                self.close_connection = True
                return
            self.wfile.write(blob)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served
    httpd.shutdown()
    httpd.server_close()
