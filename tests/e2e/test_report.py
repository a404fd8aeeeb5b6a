"""`nnrun report` end to end: three quickstart runs with different learning rates (the table, the
terminal curves, the PNG and the HTML page, the page rendered in a real headless browser when
Chromium is installed), a search folder shows every trial, and every user mistake is one message
with exit code 2."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from nnrun.cli import main

LRS = ("0.001", "0.003", "0.01")
QUICK = ["train.epochs=1", "data.limit=400", "log.progress=none", "log.every_n_steps=2"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """runs/lr-<value>/: the shipped quickstart recipe, one epoch on 400 digits, three learning rates."""
    root = tmp_path_factory.mktemp("report") / "runs"
    for lr in LRS:
        res = invoke("train", "quickstart", *QUICK, f"optimizer.lr={lr}", "--run-dir", root / f"lr-{lr}")
        assert res.exit_code == 0, res.stderr
    return root


def one_clean_error(res) -> str:
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and res.stderr.count("error:") == 1, res.stderr
    assert res.stdout == ""
    return res.stderr


def test_three_quickstart_runs_table_curves_png_and_html(runs, tmp_path):
    png, page = tmp_path / "report.png", tmp_path / "report.html"
    res = invoke("report", runs, "--out", png, "--html", page)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines() == [str(png), str(page)]
    err = res.stderr
    assert re.search(r"3 run\(s\) by val_acc \(higher is better\); differing recipe keys: optimizer\.lr\s*$", err,
                     re.MULTILINE), err
    header = next(line for line in err.splitlines() if "best val_acc" in line)
    assert header.split()[-2:] == ["optimizer.lr", "┃"]  # the one differing key is the last column
    for lr in LRS:
        row = next(line for line in err.splitlines() if f"lr-{lr} " in line)
        assert row.rstrip(" │").endswith(lr) and "finished" in row and re.search(r"\d+\.\d s", row), row
    for title in ("training loss:", "validation loss:", "val_acc:", "learning rate (log scale):"):
        assert title in err
    assert Image.open(png).size == (1200, 800 + 2 * 22 + 16)
    text = page.read_text()
    assert text.count("<details") == 3 and "data:image/png;base64," in text and "optimizer.lr" in text


def test_report_reads_runs_without_importing_torch(runs):
    code = ("import sys\nfrom nnrun.cli import main\ntry:\n    main(['report', sys.argv[1], '--no-curves'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\nprint(json.dumps(['torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json\n" + code, str(runs)], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out.splitlines()[-1]) == [False]


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.mark.skipif(_browser() is None, reason="no Chromium here (apt-get install chromium)")
def test_the_html_page_renders_in_a_headless_browser(runs, tmp_path):
    """A wrapper page loads the report in a same-folder iframe and writes what the browser made of
    it into its own DOM, which `--dump-dom` prints: the image decoded, the tables and the recipes."""
    assert invoke("report", runs, "--html", tmp_path / "report.html", "--no-curves").exit_code == 0
    (tmp_path / "probe.html").write_text("""<!DOCTYPE html><html><body>
<iframe id="f" src="report.html" width="1400" height="3000"></iframe><script>
window.addEventListener("load", () => {
  const d = document.getElementById("f").contentDocument, img = d.querySelector("img");
  const p = document.createElement("pre"); p.id = "probe";
  p.textContent = JSON.stringify({width: img.naturalWidth, height: img.naturalHeight,
    rows: d.querySelectorAll("#runs tbody tr").length, details: d.querySelectorAll("details pre").length,
    cells: [...d.querySelectorAll("#runs thead th")].map(th => th.textContent)});
  document.body.appendChild(p);
});
</script></body></html>""")
    dom = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                          (tmp_path / "probe.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    probe = json.loads(found.group(1))
    assert (probe["width"], probe["height"]) == (1200, 800 + 2 * 22 + 16)  # 0 when the image does not load
    assert probe["rows"] == 3 and probe["details"] == 3
    assert probe["cells"][:2] == ["run", "best val_acc"] and probe["cells"][-1] == "optimizer.lr"


def test_a_search_folder_shows_every_trial(tmp_path):
    recipe = tmp_path / "s.yaml"
    recipe.write_text("""\
seed: 2
data: {source: digits, limit: 240, val_fraction: 0.25, batch_size: 40}
model: {hidden: [16]}
train: {epochs: 1, save_top_k: 1}
log: {progress: none, tensorboard: false}
search:
  metric: val_loss
  trials: 3
  space:
    optimizer.lr: {log_uniform: [1e-3, 1e-1]}
""")
    res = invoke("search", recipe, "--out", tmp_path / "search")
    assert res.exit_code == 0, res.stderr
    trials = sorted(p.name for p in (tmp_path / "search").glob("trial-*"))
    assert len(trials) == 3
    res = invoke("report", tmp_path / "search", "--no-curves")
    assert res.exit_code == 0, res.stderr
    assert "3 run(s) by val_loss (lower is better); differing recipe keys: optimizer.lr" in res.stderr
    for name in trials:  # every trial, its learning rate and how it ended
        row = next(line for line in res.stderr.splitlines() if name in line)
        assert "finished" in row and re.search(r"│ \d\.\d+(e-\d+)?\s+│\s*$", row), row


def _broken_recipe(root: Path) -> Path:
    run = root / "broken"
    run.mkdir()
    (run / "recipe.yaml").write_text("data:\n  source: [digits\n")
    (run / "metrics.jsonl").write_text("")
    return run


@pytest.mark.parametrize("args, expected", [
    (lambda runs, tmp: [tmp / "missing"], "does not exist"),
    (lambda runs, tmp: [tmp], "no run folders in"),
    (lambda runs, tmp: [runs, "--out", tmp / "blocked" / "r.png"], "cannot write the report image"),
    (lambda runs, tmp: [runs, "--html", tmp / "blocked" / "r.html"], "cannot write the report page"),
    (lambda runs, tmp: [runs, "--out", tmp / "r.pdf"], "the report image is a PNG"),
    (lambda runs, tmp: [runs, "--metric", "val_accuracy"], "did you mean `val_acc`"),
    (lambda runs, tmp: [_broken_recipe(tmp)], "line 2"),
], ids=["missing", "no-runs", "blocked-png", "blocked-html", "not-png", "unknown-metric", "broken-recipe"])
def test_user_mistakes_are_one_message(runs, tmp_path, args, expected):
    (tmp_path / "blocked").write_text("a file where a folder should be")
    err = one_clean_error(invoke("report", *args(runs, tmp_path)))
    assert expected in err
    assert (tmp_path / "blocked").read_text() == "a file where a folder should be"


def test_without_matplotlib_the_png_is_one_message_with_the_install_command(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    err = one_clean_error(invoke("report", runs, "--out", tmp_path / "r.png"))
    assert "pip install 'nnrun[plot]'" in err and not (tmp_path / "r.png").exists()
    assert invoke("report", runs, "--no-curves").exit_code == 0  # the table needs no matplotlib
