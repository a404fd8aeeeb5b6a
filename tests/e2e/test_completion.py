"""Shell completion through click's protocol, run for real in a fresh interpreter: `_NNRUN_COMPLETE=bash_complete`
(or zsh/fish) with COMP_WORDS/COMP_CWORD as the shell sets them. Recipe names and files, recipe keys and a key's
values come back, and completing imports no torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = ("import sys; sys.argv = ['nnrun']; from nnrun.cli import main\n"
        "try:\n    main()\nfinally:\n    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n")


def complete(shell: str, words: str, cword, cwd) -> list[str]:
    """The values the completion answers for the command line `words` (bash: `cword` is the index of the word
    being completed; fish: the word itself)."""
    env = {**os.environ, "_NNRUN_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, cwd=cwd)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.strip().endswith("NO-TORCH"), res.stderr[-2000:]
    lines = res.stdout.splitlines()
    if shell == "zsh":  # type, value, help: three lines each
        return [lines[i + 1] for i in range(0, len(lines), 3)]
    if shell == "fish":  # type,value<TAB>help
        return [line.split(",", 1)[1].split("\t")[0] for line in lines]
    return [line.split(",", 1)[1] for line in lines]


def test_first_word_completes_shipped_names_yaml_files_and_folders(tmp_path):
    (tmp_path / "mine.yaml").write_text("seed: 1\n")
    (tmp_path / "mnist-notes.txt").write_text("x")
    (tmp_path / "models").mkdir()
    got = complete("bash", "nnrun train m", 2, tmp_path)
    assert {"mnist-mlp", "mnist-cnn", "mine.yaml", "models/"} <= set(got)
    assert "mnist-notes.txt" not in got and not any("=" in g for g in got)


def test_later_words_complete_recipe_keys(tmp_path):
    got = complete("bash", "nnrun check quickstart optimizer.l", 3, tmp_path)
    assert got == ["optimizer.lr="]
    got = complete("zsh", "nnrun lr-find quickstart model.", 3, tmp_path)
    assert "model.norm=" in got and "model.hidden=" in got and all(g.startswith("model.") for g in got)


@pytest.mark.parametrize("command", ["train", "check", "lr-find", "overfit-one-batch", "search", "schedule"])
def test_every_recipe_command_completes_keys(command, tmp_path):
    assert complete("bash", f"nnrun {command} quickstart train.epo", 3, tmp_path) == ["train.epochs="]


def test_values_after_key_equals_in_each_shell(tmp_path):
    # bash splits at `=`: `model.norm`, `=`, then the value's start
    assert complete("bash", "nnrun train quickstart model.norm =", 4, tmp_path) == \
        ["batch", "group", "layer", "instance", "none"]
    assert complete("bash", "nnrun train quickstart log.tensorboard = f", 5, tmp_path) == ["false"]
    assert complete("zsh", "nnrun train quickstart train.loss=sm", 3, tmp_path) == ["train.loss=smooth_l1"]
    assert complete("fish", "nnrun check quickstart log.tensorboard=", "log.tensorboard=", tmp_path) == \
        ["log.tensorboard=true", "log.tensorboard=false"]


def test_earlier_overrides_do_not_count_as_the_recipe(tmp_path):
    # bash: `train.epochs`, `=`, `3` is one override; the recipe is still quickstart, so keys come next
    got = complete("bash", "nnrun train quickstart train.epochs = 3 seed", 6, tmp_path)
    assert got == ["seed="]


def test_recipes_name_and_options_complete(tmp_path):
    assert complete("bash", "nnrun recipes quick", 2, tmp_path) == ["quickstart"]
    assert "--copy" in complete("bash", "nnrun recipes quickstart --", 3, tmp_path)
    assert "recipes" in complete("bash", "nnrun rec", 1, tmp_path)


def test_the_source_scripts_are_click_s(tmp_path):
    for shell in ("bash", "zsh", "fish"):
        env = {**os.environ, "_NNRUN_COMPLETE": f"{shell}_source"}
        res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert res.returncode == 0 and "_NNRUN_COMPLETE" in res.stdout, res.stderr[-2000:]
