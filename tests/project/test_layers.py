"""The layer table in docs/development.md holds: imports run downward, no workflow imports another,
packages stay in their layers, imports below cli/ are at module level, and there is no import cycle."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # tests/project/<file> -> the repository root
LAZY_OK = ("optuna", "matplotlib", "torch.utils.tensorboard", "PIL", "pooch", "requests")


@dataclass(frozen=True)
class Import:
    source: str      # importing module, e.g. nnrun.training.trainer
    target: str      # imported module, e.g. nnrun.checkpoint or torch
    line: int
    in_function: bool


def read_tables(text: str) -> tuple[dict[str, int], dict[str, tuple[str, ...]]]:
    """{module prefix: layer} and {package: prefixes allowed to import it} from the development page."""
    def rows(name: str) -> list[list[str]]:
        block = text.split(f"<!-- {name}:begin -->", 1)[1].split(f"<!-- {name}:end -->", 1)[0]
        return [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.strip().splitlines()[2:]]

    layers = {m: int(r[0]) for r in rows("layers") for m in re.findall(r"`([\w.]+)`", r[1])}
    only = {re.findall(r"`([\w.]+)`", r[0])[0]: tuple(re.findall(r"`([\w.]+)`", r[1])) for r in rows("packages")}
    return layers, only


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "cli":
        parts = ["nnrun", "cli", *parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def collect_imports(root: Path, known: set[str]) -> list[Import]:
    """Every import statement under root/nnrun and root/cli, module level and inside functions."""
    out = []
    files = sorted((root / "nnrun").rglob("*.py")) + sorted((root / "cli").glob("*.py"))
    for path in files:
        source = module_name(path, root)
        tree = ast.parse(path.read_text())
        in_fn = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(fn) if n is not fn}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from nnrun import recipe` imports the submodule nnrun.recipe, not the facade
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                           for a in node.names]
            else:
                continue
            out += [Import(source, t, node.lineno, id(node) in in_fn) for t in dict.fromkeys(targets)]
    return out


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of the longest matching prefix."""
    best = max((p for p in layers if module == p or module.startswith(p + ".")), key=len, default=None)
    return layers.get(best) if best else None


def within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(root: Path) -> list[str]:
    """Every broken rule of the layer table, as `source:line -> target (rule)`."""
    layers, only = read_tables((root / "docs" / "development.md").read_text())
    known = {module_name(p, root) for p in list((root / "nnrun").rglob("*.py")) + list((root / "cli").glob("*.py"))}
    bad = []
    for imp in collect_imports(root, known):
        src, tgt = imp.source, imp.target
        where = f"{src}:{imp.line} -> {tgt}"
        if tgt.startswith("nnrun"):
            ls, lt = layer_of(src, layers), layer_of(tgt, layers)
            if ls is None or lt is None:
                bad.append(f"{where} (module missing from the layer table)")
            elif lt > ls:
                bad.append(f"{where} (upward: layer {ls} imports layer {lt})")
            if within(src, ["nnrun.workflows"]) and within(tgt, ["nnrun.workflows"]) and src != tgt:
                if not tgt.split(".")[2].startswith("_") and tgt != "nnrun.workflows":
                    bad.append(f"{where} (a workflow imports another workflow)")
            if imp.in_function and ls is not None and ls < 6:
                bad.append(f"{where} (import inside a function below cli/)")
        else:
            for package, allowed in only.items():
                if within(tgt, [package]) and not within(src, allowed):
                    bad.append(f"{where} (`{package}` belongs to {', '.join(allowed)})")
                    break
            if imp.in_function and layer_of(src, layers) not in (6, 7, None) and not within(tgt, LAZY_OK) \
                    and not within(tgt, [*only]) and tgt.split(".")[0] in {"torch", "numpy"}:
                bad.append(f"{where} (import inside a function below cli/)")
    return bad + [f"import cycle: {' -> '.join(c)}" for c in cycles(root, known)]


def cycles(root: Path, known: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), module and function level."""
    graph: dict[str, set[str]] = {m: set() for m in known}
    for imp in collect_imports(root, known):
        if imp.target in known and imp.source != imp.target:
            graph[imp.source].add(imp.target)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_project_follows_its_layer_table():
    assert violations(ROOT) == []


def test_every_module_has_a_layer():
    layers, _ = read_tables((ROOT / "docs" / "development.md").read_text())
    modules = {module_name(p, ROOT) for p in (ROOT / "nnrun").rglob("*.py")} | {"nnrun.cli"}
    assert [m for m in modules if layer_of(m, layers) is None] == []


# -- the checker itself must catch each kind of break (a small synthetic tree) -------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "development.md").write_text((ROOT / "docs" / "development.md").read_text())
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "__init__.py").write_text("")
    for rel, text in {"nnrun/__init__.py": "", "nnrun/errors.py": "", "nnrun/recipe/__init__.py": "",
                      "nnrun/build.py": "", "nnrun/workflows/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_the_checker_catches_an_upward_import(tmp_path):
    root = _tree(tmp_path, {"nnrun/recipe/load.py": "from nnrun.build import build\n"})
    assert any("upward: layer 1 imports layer 3" in v for v in violations(root))


def test_the_checker_catches_upward_imports_inside_functions_and_from_the_facade(tmp_path):
    root = _tree(tmp_path, {"nnrun/errors.py": "def f():\n    from nnrun import build\n"})
    found = violations(root)
    assert any("upward" in v and "nnrun.build" in v for v in found)
    assert any("inside a function" in v for v in found)


def test_the_checker_catches_a_workflow_importing_a_workflow(tmp_path):
    root = _tree(tmp_path, {"nnrun/workflows/a.py": "from nnrun.workflows import b\n",
                            "nnrun/workflows/b.py": "", "nnrun/workflows/_shared.py": "",
                            "nnrun/workflows/c.py": "from nnrun.workflows import _shared\n"})
    found = violations(root)
    assert any("nnrun.workflows.a" in v and "another workflow" in v for v in found)
    assert not any("nnrun.workflows.c" in v for v in found)


def test_the_checker_catches_packages_outside_their_layer(tmp_path):
    root = _tree(tmp_path, {"nnrun/build.py": "import yaml\nimport click\n",
                            "nnrun/recipe/load.py": "import torch\n"})
    found = violations(root)
    assert any("yaml" in v and "belongs to nnrun.recipe" in v for v in found)
    assert any("click" in v for v in found) and any("torch" in v and "nnrun.recipe.load" in v for v in found)


def test_the_checker_catches_a_cycle(tmp_path):
    root = _tree(tmp_path, {"nnrun/recipe/a.py": "from nnrun.recipe import b\n",
                            "nnrun/recipe/b.py": "def f():\n    from nnrun.recipe import a\n"})
    assert any(v.startswith("import cycle: nnrun.recipe.a -> nnrun.recipe.b") for v in violations(root))
