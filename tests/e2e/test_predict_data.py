"""`--data` on predict and ensemble: only a checkpoint of a file-based source has a data.path for
it to replace (D17); a file-based one predicts on the new file, even one that holds a single class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

NO_PATH = "`--data` needs a file-based source"


def write_csv(path: Path, labels: list[int], seed: int = 0) -> Path:
    x = np.random.default_rng(seed).normal(size=(len(labels), 2)).round(4)
    rows = [f"{a},{b},{y}" for (a, b), y in zip(x.tolist(), labels)]
    path.write_text("\n".join(["a,b,label", *rows]) + "\n")
    return path


@pytest.fixture
def digits_run(train_tiny):
    """A one-epoch digits run keeping 2 checkpoints (enough members for `ensemble --all`)."""
    return train_tiny(["train.epochs=2"], name="digits").run_dir


@pytest.fixture
def csv_file(tmp_path):
    return write_csv(tmp_path / "other.csv", [i % 3 for i in range(30)])


def test_predict_with_data_on_a_digits_checkpoint_is_refused(cli, digits_run, csv_file):
    res = cli("predict", digits_run, "--data", csv_file)
    assert res.exit_code == 2 and "Traceback" not in res.output and res.stdout == ""
    assert f"{NO_PATH}; this checkpoint was trained on `digits`" in res.stderr
    assert "drop --data" in res.stderr
    assert cli("predict", digits_run).exit_code == 0  # its own data still predicts


def test_predict_with_data_on_a_python_source_checkpoint_is_refused(cli, write_recipe, tmp_path, csv_file,
                                                                     monkeypatch):
    (tmp_path / "toy_factory.py").write_text(
        "import torch\n"
        "def make():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(40, 2, generator=g)\n"
        "    return (x, (x[:, 0] > 0).long()), None, None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = write_recipe("""\
        data: {source: python, factory: "toy_factory:make", batch_size: 8}
        model: {arch: mlp, hidden: [4]}
        train: {epochs: 1}
        log: {progress: none, tensorboard: false}
        """)
    assert cli("train", recipe, "--run-dir", tmp_path / "run").exit_code == 0
    res = cli("predict", tmp_path / "run", "--data", csv_file)
    assert res.exit_code == 2 and f"{NO_PATH}; this checkpoint was trained on `python`" in res.stderr


def test_ensemble_with_data_on_digits_members_is_refused(cli, digits_run, csv_file):
    res = cli("ensemble", digits_run, "--all", "--data", csv_file)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert NO_PATH in res.stderr and "was trained on `digits`" in res.stderr and "member " in res.stderr
    res = cli("ensemble", digits_run, "--all", "--mode", "weights", "--data", csv_file)
    assert res.exit_code == 2 and NO_PATH in res.stderr


def test_a_csv_checkpoint_predicts_on_another_file_even_with_a_single_class(cli, write_recipe, tmp_path):
    train = write_csv(tmp_path / "train.csv", [i % 3 for i in range(60)])
    recipe = write_recipe(f"""\
        data: {{source: csv, path: {train}, label_column: label, batch_size: 8, val_fraction: 0.25}}
        model: {{arch: mlp, hidden: [4]}}
        train: {{epochs: 1}}
        log: {{progress: none, tensorboard: false}}
        """)
    assert cli("train", recipe, "--run-dir", tmp_path / "run").exit_code == 0
    one_class = write_csv(tmp_path / "holdout.csv", [2] * 20, seed=1)
    res = cli("predict", tmp_path / "run", "--data", one_class, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].startswith("index,target,prediction,prob_0") and len(rows) - 1 == 5  # val: 25% of 20
    assert {row.split(",")[1] for row in rows[1:]} == {"2"}
