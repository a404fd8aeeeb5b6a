"""Downloading public sets (nnrun/data/download.py) over real HTTP from a server in the test process:
download and cache hit, a corrupt file, a dead mirror, a transfer cut short, offline, the hook in
load_data, CIFAR-10's archive. Nothing here reaches the internet: every registry and mirror list points
at 127.0.0.1 (the built-in mirrors are replaced or come after a local one that answers)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
import tarfile
from pathlib import Path

import pytest

from nnrun.data import download as dl
from nnrun.data import load_data
from nnrun.data.datasets import DATASETS, MNIST, PublicSet, RemoteFile, human_size
from nnrun.errors import DataError
from nnrun.progress import reporting


@pytest.fixture
def dead_url() -> str:
    """A base URL on a port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture
def fake_mnist(tmp_path, server, make_mnist, monkeypatch) -> PublicSet:
    """Tiny MNIST .gz files served under /mnist/, a registry entry pinning their hashes (standing in for
    `mnist` in DATASETS, mirrors: only the local server) and an empty cache in NNRUN_DATA."""
    folder = make_mnist(tmp_path / "made", n_train=30, n_test=10, gz=True)
    files = []
    for path in sorted(folder.iterdir()):
        blob = path.read_bytes()
        server.blobs[f"/mnist/{path.name}"] = blob
        files.append(RemoteFile(path.name, len(blob), hashlib.sha256(blob).hexdigest()))
    public = dataclasses.replace(DATASETS["mnist"], files=tuple(files), mirrors=(server.base + "mnist/",))
    monkeypatch.setitem(DATASETS, "mnist", public)
    monkeypatch.setenv("NNRUN_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("NNRUN_DATA_MIRROR", raising=False)
    return public


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_then_cache_hit(fake_mnist, server, tmp_path):
    got = dl.ensure("mnist")
    folder = tmp_path / "cache" / "mnist"
    assert got.folder == folder and listing(folder) == sorted(f.name for f in fake_mnist.files)
    assert sum(server.hits.values()) == 4 and got.bytes == fake_mnist.size
    again = dl.ensure("mnist")
    assert sum(server.hits.values()) == 4 and again.downloaded == []  # verified in place: no request


def test_progress_says_what_where_and_how_big(fake_mnist, server):
    seen = []

    class Handle:
        def __init__(self, description, total):
            self.row = [description, total, 0]
            seen.append(self.row)

        def advance(self, n=1):
            self.row[2] += n

        def close(self):
            pass

    with reporting(Handle):
        dl.ensure("mnist")
    first = fake_mnist.files[0]
    url = f"{server.base}mnist/{first.name}"
    assert seen[0][0] == f"downloading mnist/{first.name} ({human_size(first.size)}) from {url}"
    assert [(total, done) for _, total, done in seen] == [(f.size, f.size) for f in fake_mnist.files]


def test_corrupt_file_is_refused_and_nothing_is_kept(fake_mnist, server, tmp_path):
    bad = fake_mnist.files[0]
    server.blobs[f"/mnist/{bad.name}"] = b"\x1f\x8b" + bytes(100)
    with pytest.raises(DataError) as err:
        dl.ensure("mnist")
    text = str(err.value)
    assert "checksum mismatch" in text and bad.sha256 in text
    assert hashlib.sha256(b"\x1f\x8b" + bytes(100)).hexdigest() in text and bad.name in text
    assert listing(tmp_path / "cache" / "mnist") == []  # no partial, no temporary file


def test_canonical_pins_refuse_other_bytes(fake_mnist, server, tmp_path):
    """The real registry (the published hashes) refuses files that are not the canonical downloads."""
    real = dataclasses.replace(MNIST, mirrors=(server.base + "mnist/",))
    with pytest.raises(DataError, match="checksum mismatch") as err:
        dl.ensure("mnist", tmp_path / "to", registry={"mnist": real})
    assert real.files[0].sha256 in str(err.value) and listing(tmp_path / "to") == []


def test_a_dead_mirror_falls_back_to_the_next(fake_mnist, server, dead_url, tmp_path):
    got = dl.ensure("mnist", tmp_path / "to", mirrors=[dead_url, server.base + "mnist/"])
    assert len(got.downloaded) == 4 and all(url.startswith(server.base) for _, url in got.downloaded)


def test_a_transfer_cut_short_is_tried_again(fake_mnist, server, tmp_path):
    path = f"/mnist/{fake_mnist.files[0].name}"
    server.cut[path] = 1
    dl.ensure("mnist")
    assert server.hits[path] == 2
    assert listing(tmp_path / "cache" / "mnist") == sorted(f.name for f in fake_mnist.files)


def test_a_transfer_always_cut_leaves_nothing_and_the_next_run_downloads(fake_mnist, server, tmp_path):
    path = f"/mnist/{fake_mnist.files[0].name}"
    server.cut[path] = 2
    with pytest.raises(DataError, match="cut short"):
        dl.ensure("mnist")
    assert listing(tmp_path / "cache" / "mnist") == []
    dl.ensure("mnist")
    assert len(listing(tmp_path / "cache" / "mnist")) == 4


def test_offline_is_one_message_saying_where_to_put_the_files(fake_mnist, dead_url, tmp_path):
    with pytest.raises(DataError) as err:
        dl.ensure("mnist", mirrors=[dead_url, dead_url.replace("/mnist/", "/other/")])
    text = str(err.value)
    assert "connection refused" in text and "data.path" in text and "nnrun data get mnist --to DIR" in text


def test_the_environment_moves_the_cache_and_puts_mirrors_first(monkeypatch, tmp_path):
    monkeypatch.setenv("NNRUN_DATA", str(tmp_path / "c"))
    monkeypatch.setenv("NNRUN_DATA_MIRROR", "http://a.example/data http://b.example/")
    assert dl.cache_root() == tmp_path / "c"
    mirrors = dl.mirror_list(DATASETS["mnist"])
    assert mirrors[:2] == ["http://a.example/data/mnist/", "http://b.example/mnist/"]
    assert mirrors[2] == "https://ossci-datasets.s3.amazonaws.com/mnist/"


def test_the_default_cache_follows_the_platform(monkeypatch):
    import pooch

    monkeypatch.delenv("NNRUN_DATA", raising=False)
    assert dl.cache_root() == Path(pooch.os_cache("nnrun"))


def test_load_data_downloads_a_public_set_without_a_path(fake_mnist, server, cfg, tmp_path):
    bundle = load_data(cfg(source="mnist", val_fraction=0.2), seed=0, with_test=True)
    assert bundle.train.num_examples + bundle.val.num_examples == 30 and bundle.test.num_examples == 10
    assert any("downloaded MNIST: 4 file(s)" in n for n in bundle.notes)
    assert sum(server.hits.values()) == 4


def test_a_missing_shipped_default_folder_means_the_cache(fake_mnist, server, cfg, tmp_path):
    missing = str(tmp_path / "data" / "mnist")
    bundle = load_data(cfg(source="mnist", path=missing), seed=0)
    assert any(f"data.path {missing} does not exist" in n for n in bundle.notes)
    assert str(tmp_path / "cache" / "mnist") in bundle.description


def test_an_explicit_missing_path_is_still_an_error_naming_data_get(fake_mnist, server, cfg, tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        load_data(cfg(source="mnist", path=str(tmp_path / "elsewhere")), seed=0)
    assert f"nnrun data get mnist --to {tmp_path / 'elsewhere'}" in str(err.value)
    assert sum(server.hits.values()) == 0


def test_download_false_never_downloads(fake_mnist, server, cfg):
    with pytest.raises(DataError, match="data.download is false") as err:
        load_data(cfg(source="mnist", download=False), seed=0)
    assert "nnrun data get mnist" in str(err.value) and sum(server.hits.values()) == 0
    dl.ensure("mnist")  # once cached, an offline run reads the cache
    assert load_data(cfg(source="mnist", download=False), seed=0).train.num_examples > 0


def test_cifar10_archive_is_verified_and_extracted_safely(server, tmp_path, cfg, make_cifar, monkeypatch):
    made = make_cifar(tmp_path / "made" / "cifar-10-batches-py", per_batch=4)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(made.iterdir()):
            tar.add(path, arcname=f"cifar-10-batches-py/{path.name}")
        evil = tarfile.TarInfo("../evil")
        tar.addfile(evil, io.BytesIO(b""))
    blob = buf.getvalue()
    server.blobs["/cifar10/cifar-10-python.tar.gz"] = blob
    names = tuple(p.name for p in sorted(made.iterdir()))
    public = dataclasses.replace(DATASETS["cifar10"], mirrors=(server.base + "cifar10/",), extracted=names,
                                 files=(RemoteFile("cifar-10-python.tar.gz", len(blob),
                                                   hashlib.sha256(blob).hexdigest()),))
    monkeypatch.setitem(DATASETS, "cifar10", public)
    monkeypatch.setenv("NNRUN_DATA", str(tmp_path / "cache"))
    bundle = load_data(cfg(source="cifar10", val_fraction=0.0), seed=0)
    assert bundle.train.num_examples == 20 and bundle.input_shape == (3, 32, 32)
    folder = tmp_path / "cache" / "cifar10"
    assert listing(folder) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert listing(folder / "cifar-10-batches-py") == sorted(names) and not (tmp_path / "cache" / "evil").exists()
    load_data(cfg(source="cifar10", val_fraction=0.0), seed=0)
    assert server.hits["/cifar10/cifar-10-python.tar.gz"] == 1  # extracted: the archive is not even hashed


def test_the_tables_agree():
    from nnrun.recipe.tables import SOURCES

    assert {name for name, facts in SOURCES.items() if facts.public} == set(DATASETS)
    for public in DATASETS.values():
        assert all(len(f.sha256) == 64 and f.size > 0 for f in public.files)
        assert public.mirrors and all(m.startswith(("https://", "http://")) and m.endswith("/")
                                      for m in public.mirrors)
