"""`nnrun recipes NAME` prints a shipped recipe verbatim; `--copy PATH` writes it for editing, refusing to
overwrite without --force; every mistake is exit 2 with one message."""

from __future__ import annotations

import os

import pytest

from nnrun.recipe import shipped_recipes


def shipped(name: str) -> str:
    return shipped_recipes()[name].read_text(encoding="utf-8")


def test_name_prints_the_file_with_its_comments(cli):
    res = cli("recipes", "quickstart")
    assert res.exit_code == 0
    assert res.stdout == shipped("quickstart") and res.stdout.startswith("# ")


def test_list_still_shows_every_recipe(cli):
    res = cli("recipes")
    assert res.exit_code == 0 and all(name in res.stdout for name in shipped_recipes())


def test_unknown_name_suggests_the_closest_and_lists_them(cli):
    res = cli("recipes", "quickstrat")
    assert res.exit_code == 2 and res.stdout == ""
    assert "no shipped recipe `quickstrat` (did you mean `quickstart`?)" in res.stderr
    assert "mnist-mlp" in res.stderr and "Traceback" not in res.stderr


def test_copy_writes_an_editable_file_that_trains_by_path(cli, tmp_path):
    dest = tmp_path / "my.yaml"
    res = cli("recipes", "mnist-mlp", "--copy", dest)
    assert res.exit_code == 0, res.stderr
    assert dest.read_text() == shipped("mnist-mlp")
    assert f"nnrun train {dest}" in res.stderr and res.stdout.strip() == str(dest)
    assert cli("check", dest).exit_code == 0


def test_copy_adds_yaml_and_copies_into_a_folder_under_its_own_name(cli, tmp_path):
    assert cli("recipes", "quickstart", "--copy", tmp_path / "mine").exit_code == 0
    assert (tmp_path / "mine.yaml").read_text() == shipped("quickstart")
    (tmp_path / "into").mkdir()
    assert cli("recipes", "quickstart", "--copy", tmp_path / "into").exit_code == 0
    assert (tmp_path / "into" / "quickstart.yaml").is_file()


def test_copy_refuses_to_overwrite_without_force(cli, tmp_path):
    dest = tmp_path / "my.yaml"
    dest.write_text("seed: 1\n")
    res = cli("recipes", "quickstart", "--copy", dest)
    assert res.exit_code == 2 and dest.read_text() == "seed: 1\n"
    assert str(dest) in res.stderr and "--force" in res.stderr and "Traceback" not in res.stderr
    assert cli("recipes", "quickstart", "--copy", dest, "--force").exit_code == 0
    assert dest.read_text() == shipped("quickstart")


def test_copy_refuses_a_missing_folder(cli, tmp_path):
    res = cli("recipes", "quickstart", "--copy", tmp_path / "no" / "my.yaml")
    assert res.exit_code == 2 and f"the folder {tmp_path / 'no'} does not exist" in res.stderr
    assert "mkdir -p" in res.stderr
    res = cli("recipes", "quickstart", "--copy", f"{tmp_path}/nodir/")
    assert res.exit_code == 2 and "no such folder" in res.stderr
    assert not (tmp_path / "no").exists() and not (tmp_path / "nodir").exists()


def test_copy_refuses_a_folder_in_the_way_and_a_file_as_folder(cli, tmp_path):
    (tmp_path / "into" / "quickstart.yaml").mkdir(parents=True)
    res = cli("recipes", "quickstart", "--copy", tmp_path / "into")
    assert res.exit_code == 2 and "a folder of that name is in the way" in res.stderr
    (tmp_path / "file").write_text("x")
    res = cli("recipes", "quickstart", "--copy", tmp_path / "file" / "my.yaml")
    assert res.exit_code == 2 and "is not a folder" in res.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc (not writable, even by root)")
def test_copy_refuses_an_unwritable_folder(cli):
    res = cli("recipes", "quickstart", "--copy", "/proc/nnrun-recipe.yaml")
    assert res.exit_code == 2 and "cannot write recipe quickstart" in res.stderr and "Traceback" not in res.stderr
    assert "--copy" in res.stderr


def test_option_misuse_is_a_usage_error(cli, tmp_path):
    res = cli("recipes", "--copy", tmp_path / "x.yaml")
    assert res.exit_code == 2 and "need a recipe NAME" in res.stderr
    res = cli("recipes", "quickstart", "--force")
    assert res.exit_code == 2 and "--force only applies with --copy" in res.stderr
