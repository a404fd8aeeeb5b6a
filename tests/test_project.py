"""The project keeps its promises about packaging, shipped recipes and documentation."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from nnrun import docs
from nnrun import recipe as recipe_io
from nnrun.recipe import shipped_recipes

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    mapped = config["tool"]["setuptools"]["package-dir"]
    on_disk = set()
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and rel.parts[0] in ("tests", "benchmarks", "build") or ".venv" in rel.parts:
            continue
        dotted = ".".join(rel.parts)
        dotted = next((pkg + dotted[len(src):] for pkg, src in mapped.items() if dotted.startswith(src)), dotted)
        on_disk.add(dotted)
    assert listed == on_disk


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_validates_and_builds_its_model(name):
    from nnrun.checks import KNOWN_SOURCES
    from nnrun.models import build_model

    r = recipe_io.load(name)
    shape = KNOWN_SOURCES[r.data.source][1]
    model = build_model(r.model, input_shape=shape, num_outputs=10)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_shipped_recipes_have_a_header_comment():
    for name, res in shipped_recipes().items():
        assert res.read_text().startswith("# "), name


def test_recipe_reference_is_current():
    page = (ROOT / "docs" / "recipe-reference.md").read_text()
    assert docs.BEGIN in page and docs.END in page, "docs/recipe-reference.md lost its reference markers"
    assert docs.splice(page) == page, "run: python -m nnrun.docs --write"


def test_readme_documents_every_command():
    from nnrun.cli import available

    readme = (ROOT / "README.md").read_text()
    for name in available():
        assert re.search(rf"^### `nnrun {name}\b", readme, re.M), name


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- ci:test -->" in readme and "ci:test" in ci
    cmd = readme.split("<!-- ci:test -->", 1)[1].split("\n")[2]
    assert "pip install torch==2.13.0" in cmd and cmd.endswith("pytest")


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    code = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert "test_acc" in capsys.readouterr().out
    assert list((tmp_path / "runs" / "api-demo" / "checkpoints").glob("epoch*.pt"))
