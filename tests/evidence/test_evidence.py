"""Every evidence experiment (benchmarks/evidence/) runs end to end on a tiny budget: it prints its
table and verdict and writes a PNG that decodes, a strict-JSON file of finite numbers and its Markdown
section. This checks the runner, not the claim (the claims need the full budget: docs/evidence.md)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of the repository, not an installed package

from benchmarks.evidence.__main__ import EXPERIMENTS, main  # noqa: E402

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")


def numbers(value):
    """Every number inside a JSON value."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)


@pytest.mark.parametrize("name", [n for n, m in EXPERIMENTS.items()
                                  if importlib.util.find_spec(f"benchmarks.evidence.{m}") is not None])
def test_each_experiment_runs_end_to_end_on_a_tiny_budget(name, tmp_path, capsys):
    assert main([name, "--quick", "--out", str(tmp_path), "--seeds", "1"]) == 0
    printed = capsys.readouterr().out
    raw = json.loads((tmp_path / f"{name}.json").read_text())
    assert raw["name"] == name and raw["quick"] is True and raw["rows"] and raw["columns"]
    assert raw["verdict"] in ("reproduced", "partly", "not reproduced")
    for column in raw["columns"][:2]:
        assert column in printed
    assert f"verdict: {raw['verdict']}" in printed
    values = list(numbers(raw["rows"]))
    assert values and all(math.isfinite(v) for v in values)
    with Image.open(tmp_path / f"{name}.png") as im:
        assert im.size[0] >= 600 and im.size[1] >= 300
        assert len(im.convert("RGB").getcolors(1 << 20) or []) > 20  # something was drawn
    section = (tmp_path / f"{name}.section").read_text()
    assert section.startswith("## ") and f"evidence/{name}.png" in section and "**Verdict:" in section
