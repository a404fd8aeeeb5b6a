"""The tabular sources: ``csv`` (a header row, one example per line) and ``npz`` (arrays ``x``,
``y`` and optionally ``x_test``, ``y_test``).

csv labels: a column of integers is a classification label; a column of other numbers a
regression target; a column of text is mapped to class indices in sorted order (``class_names``).
Only the stdlib ``csv`` module and numpy are used.
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import torch

from nnrun.data.splits import SourceData, TensorSplit, check_pair, tensor_split
from nnrun.errors import DataError, Problem, RecipeError, did_you_mean

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, cells) of every non-blank row."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the csv file ({exc})", where=str(path),
                        hint="save it as UTF-8 text with comma-separated values") from exc
    if not header:
        raise DataError("the csv file is empty (no header row)", where=str(path),
                        hint="the first line must name the columns, e.g. `x1,x2,label`")
    return [h.strip() for h in header], rows


def _columns(cfg, header: list[str], path: Path) -> tuple[int, list[int]]:
    """Indices of the label column and the feature columns, with did-you-mean errors."""
    def index(name: str, key: str) -> int:
        if name not in header:
            raise DataError(f"{key} `{name}` is not a column{did_you_mean(name, header)}; the columns are: "
                            f"{', '.join(header)}", where=str(path),
                            hint=f"set data.{key} to one of the columns above")
        return header.index(name)

    _check_unique(cfg, header, path)
    label = index(cfg.label_column, "label_column")
    if cfg.feature_columns is None:
        features = [i for i in range(len(header)) if i != label]
    else:
        features = [index(name, "feature_columns") for name in cfg.feature_columns]
    if not features:
        raise DataError("no feature columns (the file has only the label column)", where=str(path),
                        hint="add input columns or set data.feature_columns")
    if label in features:
        raise DataError(f"the label column `{cfg.label_column}` is also listed in feature_columns",
                        where=str(path), hint="remove it from data.feature_columns")
    return label, features


def _check_unique(cfg, header: list[str], path: Path) -> None:
    """Columns are picked by name: refuse a repeated entry of data.feature_columns, and a header name
    that two columns share when that name is used (every column is, without data.feature_columns)."""
    listed = cfg.feature_columns or []
    twice = next((name for i, name in enumerate(listed) if name in listed[:i]), None)
    if twice is not None:
        raise RecipeError([Problem(("data", "feature_columns"), f"lists `{twice}` twice; a column is one input, "
                                                                "so list each column once")])
    used = set(header) if cfg.feature_columns is None else {cfg.label_column, *listed}
    shared = next((name for i, name in enumerate(header) if name in header[:i] and name in used), None)
    if shared is not None:
        where = ", ".join(str(i + 1) for i, name in enumerate(header) if name == shared)
        raise DataError(f"the header names {header.count(shared)} columns `{shared}` (columns {where}); "
                        "columns are picked by name", where=str(path),
                        hint="give every column a unique name in the header row")


def _parse_features(rows, features: list[int], header: list[str], width: int, path: Path) -> np.ndarray:
    """Feature cells as float32 [N, F]; DataError naming the line and column of a bad cell."""
    for line, row in rows:
        if len(row) != width:
            raise DataError(f"line {line} has {len(row)} fields, the header has {width}", where=str(path),
                            hint="every row needs one value per column (quote fields holding commas)")
    cells = [[row[i] for i in features] for _, row in rows]
    try:
        return np.asarray(cells, dtype=np.float64).astype(np.float32).reshape(len(rows), len(features))
    except ValueError:
        pass
    for (line, row) in rows:  # slow path only to locate the offending cell
        for i in features:
            try:
                float(row[i])
            except ValueError:
                raise DataError(f"line {line}, column `{header[i]}`: {row[i]!r} is not a number",
                                where=str(path),
                                hint="feature columns must be numeric: encode categories as numbers, fill "
                                     "empty cells, or leave the column out via data.feature_columns") from None
    raise DataError("feature values could not be parsed as numbers", where=str(path))


def _parse_labels(cells: list[str], lines: list[int], cfg, path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels (int64), float targets (float32) or text mapped to sorted class indices.

    An integer beyond int64 is refused as a class label (DataError naming its line), and read as
    a float when data.task is regression.
    """
    cells = [c.strip() for c in cells]
    try:
        ints = [int(c) for c in cells]
    except ValueError:
        ints = None
    if ints is not None:
        big = next((i for i, v in enumerate(ints) if not INT64_MIN <= v <= INT64_MAX), None)
        if big is not None and cfg.task != "regression":
            column = cfg.label_column
            raise DataError(f"line {lines[big]}, label column `{column}`: {cells[big]} is too large for a class label",
                            where=str(path), hint="class labels are indices 0..K-1: renumber them, write them "
                                                  "as text (text labels are numbered for you), or set data.task: "
                                                  "regression for a numeric target")
        if big is None:
            return np.asarray(ints, dtype=np.int64), None
    try:
        return np.asarray([float(c) for c in cells], dtype=np.float32), None
    except ValueError:
        pass
    names = sorted(set(cells))
    lookup = {n: i for i, n in enumerate(names)}
    return np.asarray([lookup[c] for c in cells], dtype=np.int64), names


def load_csv(cfg, path: Path | None, with_test: bool) -> SourceData:
    """Load a csv file with a header row (no test split).

    Args:
        cfg: the recipe's DataConfig (``label_column``, ``feature_columns``).
        path: the resolved file.
        with_test: ignored; csv has no test split.

    Returns:
        SourceData with a TensorSplit of inputs [N, F].
    """
    header, rows = _read_rows(path)
    label, features = _columns(cfg, header, path)
    if not rows:
        raise DataError("the csv file has a header but no data rows", where=str(path),
                        hint="add examples, one per line")
    x = _parse_features(rows, features, header, len(header), path)
    empty = next((line for line, row in rows if not row[label].strip()), None)
    if empty is not None:
        raise DataError(f"line {empty}: the label column `{cfg.label_column}` is empty", where=str(path),
                        hint="every example needs a label: fill it in or drop the row")
    y, names = _parse_labels([row[label] for _, row in rows], [line for line, _ in rows], cfg, path)
    if names is not None and cfg.task == "regression":
        raise DataError(f"label column `{cfg.label_column}` holds text (e.g. {names[0]!r}) but "
                        "data.task is regression", where=str(path),
                        hint="use numeric targets, or set data.task: classification")
    split = TensorSplit(torch.from_numpy(x), torch.from_numpy(y))
    check_pair(split.x, split.y, where=str(path), split="train")
    return SourceData(train=split, name=f"csv ({path.name}: {len(features)} features)",
                      class_names=names, num_classes=len(names) if names else None, where=str(path),
                      test_note=f"a csv file ({path.name}) has no test split")


def load_npz(cfg, path: Path | None, with_test: bool) -> SourceData:
    """Load ``x``/``y`` (and ``x_test``/``y_test``) from an npz file, never unpickling objects.

    Args:
        cfg: the recipe's DataConfig.
        path: the resolved file.
        with_test: also load ``x_test``/``y_test`` when present.

    Returns:
        SourceData with TensorSplits.
    """
    try:  # our own handle: np.load leaks its file when the zip is corrupt
        with path.open("rb") as fh:
            npz = np.load(fh, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DataError("this is a single .npy array, not an npz archive", where=str(path),
                                hint="save with np.savez(path, x=inputs, y=labels)")
            keys = list(npz.files)
            missing = [k for k in ("x", "y") if k not in keys]
            if missing:
                raise DataError(f"missing array(s) {', '.join(missing)}; the file holds: "
                                f"{', '.join(keys) or 'nothing'}", where=str(path),
                                hint="save with np.savez(path, x=inputs, y=labels[, x_test=..., y_test=...])")
            arrays = {k: npz[k] for k in ("x", "y", "x_test", "y_test") if k in keys}
            npz.close()
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"cannot read the npz file ({type(exc).__name__}: {exc})", where=str(path),
                        hint="the file is corrupt, not an npz, or holds object arrays (saved "
                             "with pickled objects): save plain numeric arrays with np.savez") from exc
    train = tensor_split(arrays["x"], arrays["y"], where=str(path), split="train")
    has_test = "x_test" in arrays and "y_test" in arrays
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError("the file has only one of x_test / y_test", where=str(path),
                        hint="save both x_test and y_test, or neither")
    test = tensor_split(arrays["x_test"], arrays["y_test"], where=str(path), split="test") \
        if with_test and has_test else None
    return SourceData(train=train, test=test, name=f"npz ({path.name})", where=str(path),
                      test_note=None if has_test else f"{path.name} has no x_test/y_test arrays")
