"""`nnrun check` and `nnrun recipes` (listing, printing and copying a recipe) answer without importing torch
(the layer table's promise; torch takes seconds to import). Each runs in a fresh interpreter under
`python -X importtime`, which logs every module imported, at start-up or later inside a function. `.ci/run`
checks `nnrun --help` the same way on the wheel."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_modules(argv: list[str], cwd) -> list[str]:
    """Every module the command imports, from `-X importtime`'s log on stderr."""
    code = f"import sys; sys.argv={['nnrun', *argv]!r}; from nnrun.cli import main; main()"
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         cwd=cwd)
    assert res.returncode == 0, res.stderr[-2000:]
    # lines read `import time:  self [us] | cumulative | <indent>module`
    return [line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2]


@pytest.mark.parametrize("argv", [["check", "quickstart"], ["recipes"], ["recipes", "quickstart"],
                                  ["recipes", "quickstart", "--copy", "my.yaml"]],
                         ids=["check", "recipes", "recipes-name", "recipes-copy"])
def test_command_imports_no_torch(argv, tmp_path):
    modules = imported_modules(argv, cwd=tmp_path)
    assert "nnrun.cli" in modules and "yaml" in modules  # the log was read: the command's own imports are in it
    torch = sorted({m for m in modules if m == "torch" or m.startswith("torch.")})
    assert not torch, f"`nnrun {' '.join(argv)}` imported {', '.join(torch[:5])}"
