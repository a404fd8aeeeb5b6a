"""The ``mnist`` and ``fashion-mnist`` sources: the four standard IDX files in one folder.

IDX layout (LeCun's MNIST page): a 4-byte magic ``0x00 0x00 <type> <ndim>`` (2051 for ubyte
images with 3 dims, 2049 for ubyte labels with 1 dim), then ``ndim`` big-endian uint32 sizes, then
the values. Every file may be gzip-compressed (``.gz``). Inputs come out as float32
[N, 1, 28, 28] with the raw 0..255 values.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from nnrun.data.splits import SourceData, TensorSplit, check_pair
from nnrun.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]
DOWNLOAD_HINT = {"mnist": "download the four files from https://yann.lecun.com/exdb/mnist/ "
                          "(or a mirror) into this folder",
                 "fashion-mnist": "download the four files from "
                                  "https://github.com/zalandoresearch/fashion-mnist into this folder"}


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into a uint8 array, checking it thoroughly.

    Args:
        path: the file.
        magic: the expected magic number (2051 images, 2049 labels).

    Returns:
        The array with the declared dimensions.

    Raises:
        DataError: unreadable or corrupt gzip, wrong magic, or a size that does not match the header.
    """
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read the file ({exc})", where=str(path),
                        hint="the download is probably truncated or corrupt: download it again") from exc
    if len(data) < 4 or int.from_bytes(data[:4], "big") != magic:
        found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        raise DataError(f"not an IDX {'image' if magic == IMAGES_MAGIC else 'label'} file: magic number "
                        f"{found} (expected {magic})", where=str(path),
                        hint="check the file is the right one (images vs labels) and not an HTML error page")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"truncated IDX header: {len(data)} bytes, expected at least {header}",
                        where=str(path), hint="download the file again")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header declares"
        raise DataError(f"file is {state}: header declares dims {dims} = {expected} bytes, found {len(data)}",
                        where=str(path), hint="download the file again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def find_file(folder: Path, name: str, source: str) -> Path:
    """``folder/name`` or ``folder/name.gz``, else a DataError listing the expected files."""
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    expected = ", ".join(f"{n}[.gz]" for pair in FILES.values() for n in pair)
    raise DataError(f"missing {name} (or {name}.gz); the {source} source expects: {expected}",
                    where=str(folder), hint=DOWNLOAD_HINT[source])


def load_pair(folder: Path, split: str, source: str) -> TensorSplit:
    """Load the images and labels of one split and check they agree."""
    img_path = find_file(folder, FILES[split][0], source)
    lbl_path = find_file(folder, FILES[split][1], source)
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lbl_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path.name} holds {images.shape[0]} images but {lbl_path.name} holds "
                        f"{labels.shape[0]} labels", where=str(folder),
                        hint="the two files come from different downloads: download both again")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # [N, 1, H, W] uint8 (frombuffer is read-only)
    y = torch.from_numpy(labels.astype(np.int64))
    check_pair(x, y, where=str(img_path), split=split)
    return TensorSplit(x.float(), y)


def load_idx(cfg, path: Path | None, with_test: bool) -> SourceData:
    """Load mnist or fashion-mnist (``cfg.source``) from the IDX files in ``path``.

    Args:
        cfg: the recipe's DataConfig.
        path: the resolved folder.
        with_test: also load the t10k files.

    Returns:
        SourceData with 10 known classes.
    """
    source = cfg.source
    train = load_pair(path, "train", source)
    test = load_pair(path, "test", source) if with_test else None
    names = FASHION_NAMES if source == "fashion-mnist" else [str(i) for i in range(10)]
    return SourceData(train=train, test=test, name=f"{source} ({path})", num_classes=10,
                      class_names=list(names), where=str(path))
