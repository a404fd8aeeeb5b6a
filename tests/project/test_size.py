"""Size limits that keep the code readable: no function over 60 lines and no module over 400 lines in
nnrun/, cli/, tests/ and benchmarks/. A function's length runs from its `def` line to its last line (ast's
`end_lineno`), docstring and nested functions included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # tests/project/<file> -> the repository root
FOLDERS = ("nnrun", "cli", "tests", "benchmarks")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def python_files() -> list[Path]:
    return [path for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))]


def test_the_scan_sees_the_project():
    names = {p.relative_to(ROOT).as_posix() for p in python_files()}
    assert {"nnrun/training/trainer.py", "cli/train.py", "tests/conftest.py", "benchmarks/overhead.py"} <= names


def test_no_module_over_400_lines():
    long = []
    for path in python_files():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by topic):\n" + "\n".join(long)


def test_no_function_over_60_lines():
    long = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (extract helpers):\n" + "\n".join(long)
