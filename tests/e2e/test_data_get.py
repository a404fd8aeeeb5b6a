"""`nnrun data get|list` and `nnrun train` on a public set with no data folder, through the real CLI,
downloading over real HTTP from a server in the test process (never the internet: the registry entry's
mirrors are replaced by a closed port, and NNRUN_DATA_MIRROR puts the local server first)."""

from __future__ import annotations

import dataclasses
import hashlib
import socket

import pytest

from nnrun.data.datasets import DATASETS, RemoteFile

TRAIN_TINY_MNIST = """\
data:
  source: mnist
  path: data/mnist      # as in the shipped recipes; missing here, so the cache is used
  limit: 40
  batch_size: 16
model:
  arch: mlp
  hidden: [8]
train:
  epochs: 1
log:
  progress: none
  tensorboard: false
"""


@pytest.fixture
def mirror(monkeypatch, tmp_path, server, make_mnist):
    """The local server holding tiny MNIST files under /mnist/, pinned in a stand-in registry entry; an
    empty cache. Returns (blobs by URL path, request counts)."""
    made = make_mnist(tmp_path / "made", n_train=60, n_test=10, gz=True)
    for path in sorted(made.iterdir()):
        server.blobs[f"/mnist/{path.name}"] = path.read_bytes()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/mnist/"
    files = tuple(RemoteFile(p.rsplit("/", 1)[1], len(b), hashlib.sha256(b).hexdigest())
                  for p, b in server.blobs.items())
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], files=files, mirrors=(dead,)))
    monkeypatch.setenv("NNRUN_DATA_MIRROR", server.base)
    monkeypatch.setenv("NNRUN_DATA", str(tmp_path / "cache"))
    return server.blobs, server.hits


def test_data_get_to_a_folder_then_list(cli, mirror, tmp_path):
    blobs, hits = mirror
    res = cli("data", "get", "mnist", "--to", tmp_path / "here")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(tmp_path / "here")
    assert "MNIST: 4 file(s)" in res.stderr and "127.0.0.1" in res.stderr and "SHA-256 verified" in res.stderr
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == sorted(p.rsplit("/", 1)[1] for p in blobs)
    again = cli("data", "get", "mnist", "--to", tmp_path / "here")
    assert again.exit_code == 0 and "nothing downloaded" in again.stderr and sum(hits.values()) == 4
    listed = cli("data", "list")
    assert listed.exit_code == 0 and "mnist" in listed.stdout and "cifar10" in listed.stdout
    assert str(tmp_path / "cache" / "mnist") not in listed.stdout  # --to did not fill the cache


def test_data_get_refuses_a_corrupt_file_in_one_message(cli, mirror, tmp_path):
    blobs, _ = mirror
    blobs["/mnist/train-labels-idx1-ubyte.gz"] = b"not the file"
    res = cli("data", "get", "mnist")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.stderr.count("error:") == 1 and "checksum mismatch" in res.stderr
    assert "train-labels-idx1-ubyte.gz" not in [p.name for p in (tmp_path / "cache" / "mnist").iterdir()]


def test_data_get_unknown_name_is_one_message(cli, mirror):
    res = cli("data", "get", "mnits")
    assert res.exit_code == 2 and "did you mean `mnist`" in res.stderr


def test_train_downloads_then_trains_one_step(cli, mirror, write_recipe, tmp_path, one_step, monkeypatch):
    _, hits = mirror
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(TRAIN_TINY_MNIST)
    res = cli("train", recipe, "--run-dir", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "downloaded MNIST: 4 file(s)" in res.stderr and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert sum(hits.values()) == 4
    # what, how big and from where is said before the download starts (the note after loading says it again)
    said = res.stderr.index("downloading mnist: 4 file(s)")
    assert said < res.stderr.index("downloaded MNIST") and "SHA-256 verified" in res.stderr


def test_train_no_download_fails_in_one_message(cli, mirror, write_recipe, tmp_path, monkeypatch):
    _, hits = mirror
    monkeypatch.chdir(tmp_path)
    res = cli("train", write_recipe(TRAIN_TINY_MNIST), "--no-download", "--run-dir", tmp_path / "run")
    assert res.exit_code == 2 and "data.download is false" in res.stderr and "nnrun data get mnist" in res.stderr
    assert sum(hits.values()) == 0
