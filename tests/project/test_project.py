"""The project keeps its promises about packaging, shipped recipes and documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

from nnrun import recipe as recipe_io
from nnrun.cli import available
from nnrun.recipe import reference as docs
from nnrun.recipe import shipped_recipes

ROOT = Path(__file__).resolve().parents[2]  # tests/project/<file> -> the repository root


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
    from nnrun.components.models import build_model
    from nnrun.recipe.tables import SOURCES

    r = recipe_io.load(name)
    shape = SOURCES[r.data.source].input_shape
    model = build_model(r.model, input_shape=shape, num_outputs=10)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_shipped_recipes_have_a_header_comment():
    for name, res in shipped_recipes().items():
        assert res.read_text().startswith("# "), name


DOCS = ROOT / "docs"
COMMAND_PAGES = DOCS / "commands"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def without_fences(text: str) -> str:
    """Markdown text with fenced code blocks blanked out."""
    return re.sub(r"^(```|~~~).*?^\1[ \t]*$", "", text, flags=re.M | re.S)


def without_code(text: str) -> str:
    """Markdown text with fenced code blocks and inline code spans blanked out."""
    return re.sub(r"(`+)(?!`).+?(?<!`)\1(?!`)", "", without_fences(text), flags=re.S)


def relative_links(text: str) -> list[str]:
    """Targets of inline Markdown links and images that are neither web addresses nor pure anchors."""
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", without_code(text))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def test_recipe_reference_is_current():
    page = (DOCS / "recipe-reference.md").read_text()
    assert docs.BEGIN in page and docs.END in page, "docs/recipe-reference.md lost its reference markers"
    assert docs.splice(page) == page, "run: python -m nnrun.recipe.reference --write"


@pytest.mark.parametrize("name", sorted(available()))
def test_every_command_has_a_current_page(name):
    from nnrun.cli import reference

    page = COMMAND_PAGES / f"{name}.md"
    assert page.is_file(), f"{page.relative_to(ROOT)} is missing: copy another command page and fill it in"
    text = page.read_text()
    assert text.splitlines()[0] == f"# nnrun {name}", "the title is `# nnrun <name>`"
    for heading in re.findall(r"^#+ .*$", without_fences(text), re.M):
        assert "[" not in heading and "--" not in heading, f"synopsis in a heading: {heading!r}"
    assert reference.splice(text, name) == text, "run: python -m nnrun.cli.reference --write"


def test_readme_table_links_every_command_page_with_its_summary():
    readme = (ROOT / "README.md").read_text()
    index = (DOCS / "index.md").read_text()
    for name, (_, summary) in available().items():
        row = next((line for line in readme.splitlines() if f"(docs/commands/{name}.md)" in line), None)
        assert row is not None, f"the README's command table has no link to docs/commands/{name}.md"
        assert summary in row, f"README row of {name} should read: {summary}"
        assert f"(commands/{name}.md)" in index, f"docs/index.md does not list docs/commands/{name}.md"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200): move detail into docs/"


def test_relative_links_point_to_existing_files():
    broken = []
    for md in markdown_files():
        for target in relative_links(md.read_text()):
            path = target.split("#", 1)[0]
            if not (md.parent / path).exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_pages_hold_no_html_but_the_markers():
    markers = {docs.BEGIN, docs.END, "<!-- ci:test -->", "<!-- options:begin -->", "<!-- options:end -->",
               "<!-- layers:begin -->", "<!-- layers:end -->", "<!-- packages:begin -->", "<!-- packages:end -->",
               "<!-- evidence:summary -->"}
    found = []
    for md in markdown_files():
        text = md.read_text()
        generated = text.partition(docs.BEGIN)[2].partition(docs.END)[0]  # schema text, see nnrun/recipe/schema.py
        text = without_code(text.replace(generated, "")) if generated else without_code(text)
        for tag in re.findall(r"<!--.*?-->|(?<!\\)</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>", text, re.S):
            if tag not in markers:
                found.append(f"{md.relative_to(ROOT)}: {tag}")
    assert not found, "raw HTML (GitHub drops unknown tags; escape as \\<name> or use code):\n" + "\n".join(found)


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
