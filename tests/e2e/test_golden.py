"""A golden loss curve: the seeded tiny digits run (tests/conftest.py TINY, 3 epochs, CPU, one thread) must
reproduce the per-epoch train_loss, val_loss and val_acc pinned in golden/tiny_digits.json to rtol 1e-4.

Two runs in one process (test_train.py) cannot catch a change that shifts every run the same way (a new
default, an init or data-order change); this can. The numbers hold for the CPU build of the torch that CI
pins (torch==2.13.0). When a change is meant to move them, regenerate the file, review its diff and commit it:

    NNRUN_REGENERATE_GOLDEN=1 pytest tests/e2e/test_golden.py

Regenerating writes the file and then fails on purpose, so a run with the variable set never passes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "tiny_digits.json"
OVERRIDES = ["train.epochs=3", "train.threads=1", "train.device=cpu"]  # on top of TINY, with TensorBoard off
KEYS = ("train_loss", "val_loss", "val_acc")
RTOL = 1e-4
REGENERATE = "NNRUN_REGENERATE_GOLDEN"


def curve(history: list[dict]) -> list[dict]:
    return [{"epoch": h["epoch"], **{k: h[k] for k in KEYS}} for h in history]


def test_tiny_digits_curve_matches_the_golden_file(train_tiny):
    got = curve(train_tiny(OVERRIDES).history)
    if os.environ.get(REGENERATE):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"recipe": "tests/conftest.py TINY", "overrides": OVERRIDES,
                                      "torch": torch.__version__, "rtol": RTOL, "epochs": got}, indent=2) + "\n")
        pytest.fail(f"regenerated {GOLDEN.name}: review its diff and commit the file, then run without {REGENERATE}")
    assert GOLDEN.is_file(), f"no golden file; create it with: {REGENERATE}=1 pytest tests/e2e/test_golden.py"
    golden = json.loads(GOLDEN.read_text())
    assert golden["overrides"] == OVERRIDES, "the golden file was made with other overrides: regenerate it"
    where = f"(golden made with torch {golden['torch']}, this is torch {torch.__version__})"
    assert [e["epoch"] for e in got] == [e["epoch"] for e in golden["epochs"]], where
    for mine, pinned in zip(got, golden["epochs"]):
        for key in KEYS:
            assert mine[key] == pytest.approx(pinned[key], rel=RTOL), f"epoch {mine['epoch']} {key} {where}"
