"""The ``image-folder`` source: one subfolder per class, loaded one file per example.

Layouts: ``path/train/<class>/*`` (plus optional ``path/val/<class>/*`` and ``path/test/<class>/*``),
or directly ``path/<class>/*`` (train only). Files: ``.npy`` arrays (HxW -> 1xHxW; HxWxC with C in
1, 3, 4 -> CxHxW; CxHxW kept) and ``.png``/``.jpg``/``.jpeg``/``.bmp`` images read with Pillow when
it is installed. Values stay raw (0..255 for images). Every file's shape is checked when the
folder is scanned (headers only), so a mismatch is reported before training starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nnrun.data.splits import SourceData, StreamSplit
from nnrun.errors import DataError

NPY = (".npy",)
IMAGES = (".png", ".jpg", ".jpeg", ".bmp")
PIL_HINT = "pip install pillow  (or: pip install 'nnrun[images]')"
CHANNELS = {"L": 1, "I": 1, "F": 1, "I;16": 1, "RGB": 3, "RGBA": 4}


def _pil():
    """The PIL.Image module, or None when Pillow is not installed."""
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def _chw(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """The (C, H, W) shape an .npy array of ``shape`` becomes (1-D arrays stay as they are)."""
    if len(shape) in (1,):
        return shape
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return (shape[2], shape[0], shape[1])
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return shape
    raise DataError(f"array of shape {shape} is not an image: expected HxW, HxWxC or CxHxW with C in 1, 3, 4",
                    where=str(path), hint="save each example as a 2-D or 3-D array")


def file_shape(path: Path) -> tuple[int, ...]:
    """The (C, H, W) shape a file will load as, read from its header only."""
    try:
        if path.suffix.lower() in NPY:
            return _chw(tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape), path)
        image = _pil()
        with image.open(path) as im:
            mode = im.mode if im.mode in CHANNELS else "RGB"
            return (CHANNELS[mode], im.size[1], im.size[0])
    except DataError:
        raise
    except Exception as exc:  # numpy/Pillow raise many types for corrupt files
        raise DataError(f"cannot read this file ({type(exc).__name__}: {exc})", where=str(path),
                        hint="delete or replace the corrupt file") from exc


def load_file(path: Path) -> torch.Tensor:
    """One example as a float32 (C, H, W) tensor with raw values."""
    try:
        if path.suffix.lower() in NPY:
            arr = np.load(path, allow_pickle=False)
            shape = _chw(arr.shape, path)
            if arr.ndim == 3 and shape != arr.shape:
                arr = arr.transpose(2, 0, 1)
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).reshape(shape))
        with _pil().open(path) as im:
            im = im if im.mode in CHANNELS else im.convert("RGB")
            arr = np.asarray(im, dtype=np.float32)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read this file ({type(exc).__name__}: {exc})", where=str(path),
                        hint="delete or replace the corrupt file") from exc
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


class ImageFolderDataset(Dataset):
    """Files listed up front, loaded one per item as ``(x float32 [C,H,W], y int64)``.

    Args:
        files: the example files.
        labels: the class index of each file.
        shape: the shape every example must have.
    """

    def __init__(self, files: list[Path], labels: list[int], shape: tuple[int, ...]):
        self.files = files
        self.targets = torch.tensor(labels, dtype=torch.int64)
        self.shape = shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.files[i]
        x = load_file(path)
        if tuple(x.shape) != self.shape:
            raise DataError(f"shape {tuple(x.shape)} differs from the other examples' {self.shape}",
                            where=str(path), hint="resize every image to the same size")
        if not bool(torch.isfinite(x).all()):
            raise DataError("the example contains NaN/Inf values", where=str(path),
                            hint="fix or remove the file")
        return x, self.targets[i]


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted example files} for the class subfolders of ``folder``."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError("no class subfolders found", where=str(folder),
                        hint="put each class's files in its own subfolder: <folder>/<class>/<file>")
    found = {}
    for cls in classes:
        files = sorted(f for f in cls.iterdir() if f.is_file() and f.suffix.lower() in NPY + IMAGES)
        if not files:
            raise DataError(f"class folder `{cls.name}` holds no .npy/.png/.jpg/.jpeg/.bmp files",
                            where=str(cls), hint="add examples or remove the folder")
        found[cls.name] = files
    return found


def _dataset(folder: Path, class_names: list[str], shape: tuple[int, ...] | None) -> ImageFolderDataset:
    """Scan one split folder, check class names and every file's shape, build the dataset."""
    per_class = _class_files(folder)
    unknown = [c for c in per_class if c not in class_names]
    if unknown:
        raise DataError(f"class folder(s) {', '.join(unknown)} do not exist in the training folder "
                        f"(classes: {', '.join(class_names)})", where=str(folder),
                        hint="every class of val/test must also be a class of train")
    files, labels = [], []
    for name, paths in per_class.items():
        files += paths
        labels += [class_names.index(name)] * len(paths)
    if _pil() is None:
        image = next((f for f in files if f.suffix.lower() in IMAGES), None)
        if image is not None:
            raise DataError(f"Pillow is needed to read {image.suffix} images but is not installed",
                            where=str(image), hint=PIL_HINT)
    shape = shape or file_shape(files[0])
    for f in files:
        if file_shape(f) != shape:
            raise DataError(f"shape {file_shape(f)} differs from the other examples' {shape} "
                            f"(first file: {files[0]})", where=str(f),
                            hint="resize every image to the same size")
    return ImageFolderDataset(files, labels, shape)


def load_image_folder(cfg, path: Path | None, with_test: bool) -> SourceData:
    """Scan ``path`` (train/ [val/ test/] or class folders directly) into StreamSplits.

    Args:
        cfg: the recipe's DataConfig.
        path: the resolved folder.
        with_test: also scan ``test/`` when present.

    Returns:
        SourceData whose class count is the number of training class folders.
    """
    train_dir = path / "train" if (path / "train").is_dir() else path
    class_names = list(_class_files(train_dir))
    train = _dataset(train_dir, class_names, None)
    val = _dataset(path / "val", class_names, train.shape) if train_dir != path and (path / "val").is_dir() \
        else None
    has_test = train_dir != path and (path / "test").is_dir()
    test = _dataset(path / "test", class_names, train.shape) if with_test and has_test else None
    return SourceData(train=StreamSplit(train), val=None if val is None else StreamSplit(val),
                      test=None if test is None else StreamSplit(test), name=f"image-folder ({path})",
                      num_classes=len(class_names), class_names=class_names, where=str(path),
                      test_note=None if has_test else f"{path} has no test/ folder")
