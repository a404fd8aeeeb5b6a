"""`nnrun report`'s library: finding run folders, reading them (old folders included), the differing
recipe keys, the summary file a run writes, and the PNG and HTML it produces from real runs."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from nnrun import recipe as recipe_io
from nnrun.errors import NnrunError
from nnrun.tools.report import diff
from nnrun.tools.report.render import figure_size, html_page, png_bytes
from nnrun.tools.report.runs import find_runs, labels, read_run
from nnrun.workflows import report as wf

TINY = """\
seed: 1
data: {source: digits, limit: 400, val_fraction: 0.25, batch_size: 50}
model: {hidden: [16]}
optimizer: {lr: 0.003}
train: {epochs: 2, save_top_k: 1}
log: {progress: none, every_n_steps: 2}
"""
LRS = ("0.001", "0.01", "0.03")


def fake_run(folder: Path, *, recipe: str = "name: r\noptimizer: {lr: 0.001}\n", records=(), summary=None,
             metrics_text: str | None = None) -> Path:
    """A run folder as an older nnrun left it: recipe.yaml and metrics.jsonl (no training)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(recipe)
    text = metrics_text if metrics_text is not None else "".join(json.dumps(r) + "\n" for r in records)
    (folder / "metrics.jsonl").write_text(text)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three tiny digits runs that differ only in optimizer.lr, with TensorBoard events."""
    from nnrun.workflows import train as train_wf

    root = tmp_path_factory.mktemp("runs")
    (root / "tiny.yaml").write_text(TINY)
    results = []
    for i, lr in enumerate(LRS):
        recipe = recipe_io.load(root / "tiny.yaml", [f"optimizer.lr={lr}"])
        results.append(train_wf.run(recipe, run_dir=root / "runs" / f"lr-{i}", handle_signals=False))
    return root / "runs", results


# ---------------------------------------------------------------------------------------------
# differing keys


def test_differing_keys_are_the_leaves_whose_values_differ():
    a = {"name": "q", "optimizer": {"lr": 0.001, "betas": [0.9, 0.999]}, "train": {"epochs": 2, "threads": 1},
         "model": {"hidden": [32], "kwargs": {}}, "log": {"run_dir": "runs/a", "progress": "bar"}, "search": {}}
    b = {"name": "q", "optimizer": {"lr": 0.01, "betas": [0.9, 0.999]}, "train": {"epochs": 2.0, "threads": 4},
         "model": {"hidden": [64, 32], "kwargs": {}}, "log": {"run_dir": "runs/b", "progress": "none"},
         "search": {"space": {"optimizer.lr": {"log_uniform": [1e-4, 1e-1]}}}}
    assert diff.differing_keys([a, b]) == ["optimizer.lr", "model.hidden"]  # 2 == 2.0; log, search, threads left out
    assert diff.values(b, ["optimizer.lr", "model.hidden", "seed"]) == \
        {"optimizer.lr": "0.01", "model.hidden": "[64, 32]", "seed": "-"}
    assert diff.differing_keys([a, dict(a, seed=3)]) == ["seed"]  # a key only one recipe has differs
    assert diff.differing_keys([a, dict(a, name="other")]) == ["name"]  # runs of different recipes
    assert diff.differing_keys([a]) == []


# ---------------------------------------------------------------------------------------------
# finding and reading runs


def test_find_runs_walks_folders_sorted_and_once(tmp_path):
    for name in ("seed-10", "seed-2", "seed-1"):
        fake_run(tmp_path / "ens" / name)
    fake_run(tmp_path / "a")
    fake_run(tmp_path / "a" / "checkpoints" / "not-a-run")   # inside a run: never a separate run
    fake_run(tmp_path / ".hidden" / "x")
    (tmp_path / "lr-find").mkdir()
    (tmp_path / "lr-find" / "recipe.yaml").write_text("name: r\n")  # no metrics.jsonl: not a run
    (tmp_path / "a" / "tb").mkdir()
    found = find_runs([tmp_path / "a", tmp_path, tmp_path / "a" / "metrics.jsonl", tmp_path / "a" / "tb"])
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == ["a", "ens/seed-1", "ens/seed-2", "ens/seed-10"]
    assert labels(found) == names
    assert labels(found[:1]) == ["a"]


@pytest.mark.parametrize("make, expected", [
    (lambda root: root / "nope", "does not exist"),
    (lambda root: root, "no run folders in"),
    (lambda root: (root / "f.txt", (root / "f.txt").write_text("x"))[0], "is a file, not a run folder"),
])
def test_find_runs_refuses_what_holds_no_run(tmp_path, make, expected):
    with pytest.raises(NnrunError, match=expected) as info:
        find_runs([make(tmp_path)])
    assert "run folder" in info.value.hint


def test_an_older_folder_reads_with_dashes_and_a_damaged_line_is_skipped(tmp_path):
    records = [{"epoch": 1, "step": 5, "train_loss": 2.0, "val_loss": 1.5, "val_acc": 0.5, "lr/default": 0.1},
               {"epoch": 2, "step": 10, "train_loss": 1.0, "val_loss": None, "val_acc": 0.7, "lr/default": 0.1}]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 3, "st'
    run = read_run(fake_run(tmp_path / "old", metrics_text=text), "old")
    assert (run.steps, run.seconds, run.stop_reason) == (10, None, None)
    assert run.monitor == "val_acc" and run.mode == "max"
    assert run.best("val_acc", "max") == {"value": 0.7, "epoch": 2, "step": 10}
    assert run.best("val_loss", "min") == {"value": 1.5, "epoch": 1, "step": 5}  # null is not a value
    assert run.last() == {"train_loss": 1.0, "val_loss": None, "val_acc": 0.7}
    assert any("skipped line(s) 3" in n for n in run.notes)


def test_the_monitor_comes_from_the_checkpoint_index_of_an_older_folder(tmp_path):
    folder = fake_run(tmp_path / "r", records=[{"epoch": 1, "step": 3, "val_loss": 0.4, "val_acc": 0.9}])
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "index.json").write_text(json.dumps({"monitor": "val_loss", "mode": "min"}))
    run = read_run(folder, "r")
    assert (run.monitor, run.mode) == ("val_loss", "min")


def test_a_metric_no_run_recorded_is_refused_with_the_closest(tmp_path):
    fake_run(tmp_path / "r", records=[{"epoch": 1, "step": 3, "val_loss": 0.4, "val_acc": 0.9}])
    with pytest.raises(NnrunError, match="no run recorded `val_ac` .*did you mean `val_acc`") as info:
        wf.collect([tmp_path], metric="val_ac")
    assert info.value.where == "--metric" and "val_loss" in info.value.hint


def test_different_monitors_are_compared_by_the_most_common_with_a_note(tmp_path):
    rec = [{"epoch": 1, "step": 3, "val_loss": 0.4, "val_acc": 0.9}]
    fake_run(tmp_path / "a", records=rec, summary={"monitor": "val_loss", "mode": "min"})
    fake_run(tmp_path / "b", records=rec, summary={"monitor": "val_acc", "mode": "max"})
    fake_run(tmp_path / "c", records=rec, summary={"monitor": "val_acc", "mode": "max"})
    report = wf.collect([tmp_path])
    assert (report.metric, report.mode) == ("val_acc", "max")
    assert any("monitor different metrics" in n and "--metric" in n for n in report.notes)


# ---------------------------------------------------------------------------------------------
# the summary file a run writes


def test_a_run_writes_its_summary_and_a_resume_adds_its_time(train_tiny, tmp_path, cli):
    result = train_tiny(["train.epochs=1", "data.limit=300"], name="s")
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["stop_reason"] == "finished" and summary["steps"] == result.steps > 0
    assert summary["monitor"] == "val_acc" and summary["mode"] == "max"
    assert summary["best"]["value"] == result.best["value"]
    assert 0 < summary["seconds"] < 60
    res = cli("train", "--resume", tmp_path / "s", "train.epochs=2", "data.limit=300")
    assert res.exit_code == 0, res.stderr
    again = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert again["steps"] == 2 * summary["steps"] and again["seconds"] > summary["seconds"]
    assert not list((tmp_path / "s").glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# real runs: table data, PNG, HTML


def test_three_runs_differ_in_the_learning_rate_only(three_runs):
    folder, results = three_runs
    report = wf.collect([folder])
    assert [r.label for r in report.runs] == ["lr-0", "lr-1", "lr-2"]
    assert report.keys == ["optimizer.lr"] and [v["optimizer.lr"] for v in report.values] == list(LRS)
    assert report.metric == "val_acc" and len({r.color for r in report.runs}) == 3
    for run, result in zip(report.runs, results):
        assert run.stop_reason == "finished" and run.steps == result.steps and run.seconds > 0
        assert run.best("val_acc", "max")["value"] == pytest.approx(result.best["value"])
        assert run.curves.source == "tensorboard"  # per-step loss: more points than evaluations
        assert len(run.curves.train_loss.steps) > len(run.history) == 2
        assert [c.values[0] for c in run.curves.lrs.values()] == [pytest.approx(float(run.recipe["optimizer"]["lr"]))]
    assert report.best_run().best("val_acc", "max")["value"] == max(r.best["value"] for r in results)


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


def test_the_png_has_its_size_and_every_run_drawn_in_the_panels(three_runs):
    report = wf.collect([three_runs[0]])
    image = Image.open(io.BytesIO(png_bytes(report))).convert("RGB")
    assert image.size == figure_size(3) == (1200, 800 + 2 * 22 + 16)
    panels = image.crop((0, 0, 1200, 780))  # above the legend: only the curves carry the runs' colours
    counts = {c: n for n, c in panels.getcolors(maxcolors=1 << 20)}
    for run in report.runs:
        assert counts.get(_rgb(run.color), 0) > 200, f"{run.label}'s curves are missing"


class Page(HTMLParser):
    """The parts of the report page the tests look at."""

    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.stack, self.pre, self.rows = [], [], [], [], {}

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        self.stack.append((tag, dict(attrs)))
        if tag == "pre":
            self.pre.append("")
        if tag == "tr" and any(t == "tbody" for t, _ in self.stack):
            table = next(a.get("id") for t, a in reversed(self.stack) if t == "table")
            self.rows[table] = self.rows.get(table, 0) + 1

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if self.stack and self.stack[-1][0] == "pre":
            self.pre[-1] += data


def test_the_html_page_is_self_contained_and_escapes_what_it_shows(three_runs, tmp_path):
    folder, _ = three_runs
    odd = fake_run(tmp_path / "odd", recipe="# <script>alert('x')</script> & \"quotes\"\nname: odd\n",
                   records=[{"epoch": 1, "step": 2, "val_loss": 1.0, "val_acc": 0.5}])
    report = wf.collect([folder, odd])
    page = Page()
    page.feed(html_page(report, png_bytes(report), generated="now"))
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert not [a for a in page.attrs if a[1] in ("src", "href") and not a[2].startswith("data:")]
    (src,) = [v for tag, k, v in page.attrs if tag == "img" and k == "src"]
    assert src.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size == figure_size(4)
    assert page.tags.count("details") == 4 and page.rows == {"runs": 4, "last": 4}
    assert page.pre == [r.recipe_text for r in report.runs]  # the recipes, exactly, after unescaping
    assert "<script>alert('x')</script>" in page.pre[-1]


def test_writing_the_files_is_atomic_and_names_an_unwritable_path(three_runs, tmp_path):
    folder, _ = three_runs
    result = wf.run([folder], out=tmp_path / "out" / "r.png", html=tmp_path / "out" / "r.html")
    assert Image.open(result.png).format == "PNG" and result.html.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r.html", "r.png"]  # no temporary files
    (tmp_path / "blocked").write_text("a file where a folder should be")
    with pytest.raises(NnrunError, match=f"cannot write the report image {tmp_path / 'blocked'}/r.png"):
        wf.run([folder], out=tmp_path / "blocked" / "r.png")


def test_terminal_curves_share_the_step_axis_and_the_value_scale():
    from nnrun.cli.charts import BLOCKS, overlay

    rows, lo, hi, x0, x1 = overlay([([0, 10, 20], [4.0, 2.0, 1.0]), ([0, 10], [2.0, None])], width=21)
    assert (lo, hi, x0, x1) == (1.0, 4.0, 0, 20)
    assert rows[0][0] == BLOCKS[8] and rows[0][-1] == BLOCKS[1]  # the top and the bottom of the shared scale
    assert rows[0][5] == BLOCKS[1 + round((3.0 - 1) / 3 * 7)]    # interpolated between the points at 0 and 10
    assert rows[1][0] == BLOCKS[1 + round((2.0 - 1) / 3 * 7)] and rows[1][1:] == " " * 20  # ends after step 0
    log_rows, lo, hi, _, _ = overlay([([0, 1], [1e-3, 1e-1]), ([0, 1], [1e-2, 0.0])], width=2, log=True)
    assert (lo, hi) == pytest.approx((1e-3, 1e-1)) and log_rows == [BLOCKS[1] + BLOCKS[8], BLOCKS[5] + " "]
    assert overlay([([0], [None])]) is None
