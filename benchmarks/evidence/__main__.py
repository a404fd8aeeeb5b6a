"""Run one evidence experiment or all of them:

    python -m benchmarks.evidence NAME [--mnist /path/to/mnist] [--out docs/evidence] [--quick]
    python -m benchmarks.evidence all --mnist /path/to/mnist

NAME is one of: init, batchnorm, range-test, schedules, ensembles, random-search, whitening, clipping,
update-rules. Each prints its table and verdict and writes NAME.png, NAME.json (the raw numbers) and
NAME.section (its section of docs/evidence.md) into --out; `python -m benchmarks.evidence docs` rebuilds
docs/evidence.md from the sections in docs/evidence/.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import tempfile
from pathlib import Path

EXPERIMENTS = {"init": "init", "batchnorm": "batchnorm", "range-test": "range_test", "schedules": "schedules",
               "ensembles": "ensembles", "random-search": "random_search", "whitening": "whitening",
               "clipping": "clipping", "update-rules": "update_rules"}
ROOT = Path(__file__).resolve().parents[2]


def build_docs(folder: Path, target: Path) -> None:
    """docs/evidence.md: the header, a table of the verdicts, then every experiment's section found in
    `folder`, in order (each from its NAME.section and NAME.json, as the last full run wrote them)."""
    import json
    import re

    head = (target.read_text().split("<!-- evidence:summary -->")[0] if target.exists() else "# Evidence\n\n")
    names = [name for name in EXPERIMENTS if (folder / f"{name}.section").exists()]
    rows = ["| claim | verdict | run time |", "|---|---|---|"]
    for name in names:
        raw = json.loads((folder / f"{name}.json").read_text())
        title = (folder / f"{name}.section").read_text().splitlines()[0].removeprefix("## ")
        anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
        rows.append(f"| [{title}](#{anchor}) | {raw['verdict']} | {raw['seconds'] / 60:.1f} min |")
    parts = [(folder / f"{name}.section").read_text() for name in names]
    target.write_text(head + "<!-- evidence:summary -->\n\n" + "\n".join(rows) + "\n\n" + "\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.evidence.runner import Context, run_one

    parser = argparse.ArgumentParser(prog="python -m benchmarks.evidence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=[*EXPERIMENTS, "all", "docs"])
    parser.add_argument("--mnist", type=Path, help="folder with the MNIST IDX files (experiments that use MNIST)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "evidence")
    parser.add_argument("--quick", action="store_true", help="a tiny budget: checks the runner, not the claim")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.name == "docs":
        build_docs(args.out, ROOT / "docs" / "evidence.md")
        return 0
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            module = importlib.import_module(f"benchmarks.evidence.{EXPERIMENTS[name]}")
            ctx = Context(out=args.out, tmp=Path(tmp) / name, quick=args.quick,
                          mnist=args.mnist.resolve() if args.mnist else None, seeds=args.seeds)
            shown = ["python -m benchmarks.evidence", name] + (["--mnist", "/path/to/mnist"] if args.mnist else [])
            shown += ["--quick"] if args.quick else []
            shown += [f"--seeds {args.seeds}"] if args.seeds != 3 else []
            run_one(module, ctx, shlex.join(shown).replace("'", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
