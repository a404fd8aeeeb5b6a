"""YAML as users write it: merge keys, tags, malformed scalars, duplicates, aliases, deep nesting and
encodings end in one clean problem (exit 2, `line N`) or work; nothing raises a traceback or grows
without bound."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from nnrun import recipe as recipe_io
from nnrun.errors import RecipeError

MEMORY_CAP = 512 * 2**20  # address space for a bomb-like case in a subprocess


def problems_of(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        recipe_io.load(path, overrides)
    return info.value.problems


def check_capped(path, *overrides, timeout=60):
    """`nnrun check PATH` in a subprocess that cannot take more than MEMORY_CAP (a hang fails on the timeout)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    return subprocess.run([sys.executable, "-c", "from nnrun.cli import main; main()", "check", str(path), *overrides],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=cap)


def bomb_levels(levels=9, width=10):
    """`a0: &a0 [x, ...]`, `a1: &a1 [*a0, ...]`, ...: the last one expands to width**levels values."""
    out = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    return out + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]


def bomb(levels=9, width=10):
    return "\n".join(bomb_levels(levels, width)) + f"\nmodel:\n  kwargs: {{bomb: *a{levels - 1}}}\n"


# ---------------------------------------------------------------------------------------------
# merge keys


def test_merge_keys_work_and_written_keys_win(write_recipe):
    r = recipe_io.load(write_recipe("optimizer: {<<: {name: sgd, lr: 0.1}, momentum: 0.5, lr: 0.2}\n"))
    assert (r.optimizer.name, r.optimizer.lr, r.optimizer.momentum) == ("sgd", 0.2, 0.5)


def test_merging_a_list_of_mappings_earlier_ones_win(write_recipe):
    path = write_recipe("""\
        optimizer:
          groups:
            - &head {match: 'head.*', lr_mult: 2.0}
            - &body {match: 'body.*', lr_mult: 0.5, weight_decay: 0.01}
            - <<: [*head, *body]
              name: both
        """)
    g = recipe_io.load(path).optimizer.groups[2]
    assert (g.match, g.lr_mult, g.weight_decay, g.name) == ("head.*", 2.0, 0.01, "both")


def test_a_problem_in_a_merged_key_names_the_line_it_is_written_on(write_recipe):
    path = write_recipe("""\
        seed: 1
        optimizer:
          groups:
            - &g
              match: 'body.*'
              lr_mult: -0.1
            - <<: *g
              match: 'head.*'
        """)
    ps = problems_of(path)
    assert [(p.path, p.where) for p in ps] == [(("optimizer", "groups", 0, "lr_mult"), "line 6"),
                                               (("optimizer", "groups", 1, "lr_mult"), "line 6")]


def test_a_merge_of_something_else_than_mappings_is_refused(write_recipe):
    (p,) = problems_of(write_recipe("optimizer:\n  <<: 5\n"))
    assert p.where == "line 2" and "merge key" in p.message


# ---------------------------------------------------------------------------------------------
# tags and malformed scalars, in files and overrides


@pytest.mark.parametrize("text,line", [
    ("name: !custom thing\n", 1), ("seed: 1\nseed2: !!int abc\n", 2), ("seed: !!float xyz\n", 1),
    ("name: !!timestamp 'not a date'\n", 1), ("name: !!binary '!!!notbase64'\n", 1), ("seed: !!int ''\n", 1),
    ("data:\n  shuffle: !!bool maybe\n", 2), ("model: !!set {a, b}\n", 1), ("model: !!omap [a: 1]\n", 1),
    ("name: !!python/object:os.system ls\n", 1), ("x: !!python/name:os.system\n", 1), ("name: 2020-13-45\n", 1),
    ("seed: 1" + "0" * 5000 + "\n", 1), ("name: [unclosed\n", 2), ("a: b: c\n", 1), ("name: \"bad \\q\"\n", 1),
    ("? [a, b]\n: 1\n", 1), ("a: 1\n---\nb: 2\n", 2), ("name: x\n\x00\n", 2),
])
def test_yaml_a_recipe_cannot_hold_is_one_problem_with_its_line(cli, write_recipe, text, line):
    path = write_recipe(text)
    res = cli("check", path)
    assert res.exit_code == 2, res.output
    assert f"line {line}" in res.stderr and "Traceback" not in res.output


@pytest.mark.parametrize("value", ["!!int abc", "!custom thing", "!!float xyz", "!!timestamp x", "!!binary '!!!'",
                                   "[" * 50_000, "{a: 1, a: 2}"])
def test_tags_and_nesting_in_overrides_are_clean_problems(cli, value):
    res = cli("check", "quickstart", f"name={value}")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "override `name=" in res.stderr


def test_an_override_tag_names_the_key_and_says_what_could_not_be_read():
    (p,) = problems_of("quickstart", ["name=!!int abc"])
    assert p.path == ("name",) and "cannot read `abc` as an integer" in p.message


# ---------------------------------------------------------------------------------------------
# duplicates


def test_a_duplicate_key_names_both_lines(write_recipe):
    (p,) = problems_of(write_recipe("optimizer:\n  lr: 0.003\n  name: sgd\n  lr: 123456\n"))
    assert p.path == ("optimizer", "lr") and p.where == "line 4" and "line 2" in p.message


def test_a_duplicate_section_names_both_lines(write_recipe):
    path = write_recipe("optimizer: {lr: 0.003}\ndata:\n  batch_size: 8\noptimizer:\n  name: sgd\n")
    (p,) = problems_of(path)
    assert p.path == ("optimizer",) and p.where == "line 4" and "line 1" in p.message


def test_keys_are_the_text_written_not_what_yaml_makes_of_it(write_recipe):
    (p,) = problems_of(write_recipe("optimizer:\n  on: 1\n"))
    assert p.path == ("optimizer", "on") and "unknown key" in p.message


# ---------------------------------------------------------------------------------------------
# aliases and depth: bounded time and memory


def test_an_alias_bomb_is_refused_quickly_in_bounded_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    res = check_capped(path)
    assert res.returncode == 2 and "expands to more than" in res.stderr and "Traceback" not in res.stderr


def test_an_alias_bomb_in_an_override_is_refused():
    (p,) = problems_of("quickstart", ["model.kwargs={" + ", ".join(bomb_levels()) + "}"])
    assert "expands to more than" in p.message and p.where.startswith("override")


def test_aliases_within_the_limit_still_work(write_recipe):
    r = recipe_io.load(write_recipe("model:\n  hidden: &w [16, 16]\n  channels: *w\n"))
    assert r.model.hidden == r.model.channels == [16, 16] and r.model.hidden is not r.model.channels


@pytest.mark.parametrize("text,line", [("search: &a {x: *a}\n", 1), ("model:\n  kwargs: &a [1, *a]\n", 2),
                                       ("optimizer: &o {<<: *o}\n", 1)])
def test_a_recursive_anchor_is_refused(write_recipe, text, line):
    try:
        (p,) = problems_of(write_recipe(text))
    except RecursionError:  # pragma: no cover - the failure this guards against
        pytest.fail("RecursionError")
    assert p.where == f"line {line}" and "contains its own alias" in p.message


def test_fifty_thousand_levels_of_nesting_are_refused_cleanly(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model:\n  kwargs: " + "[" * 50_000 + "]" * 50_000 + "\n")
    res = check_capped(path)
    assert res.returncode == 2 and "nested deeper than" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------------------------------------
# files and encodings


def test_a_huge_file_is_refused_without_parsing_it(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("seed: 1\n" + "# padding\n" * 200_000)
    (p,) = problems_of(path)
    assert "bytes" in p.message and "right file" in p.message


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 1\nname: caf\xe9\n".encode("latin-1"))
    (p,) = problems_of(path)
    assert p.where == "line 2" and "UTF-8" in p.message


def test_utf16_with_a_byte_order_mark_and_a_utf8_bom_are_read(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("seed: 5\n", encoding="utf-16")
    b.write_bytes(b"\xef\xbb\xbfseed: 6\n")
    assert recipe_io.load(a).seed == 5 and recipe_io.load(b).seed == 6


def test_a_nul_in_text_is_refused(write_recipe):
    (p,) = problems_of(write_recipe('data:\n  source: csv\n  path: "a\\0b.csv"\n'))
    assert p.path == ("data", "path") and "NUL" in p.message


def test_check_imports_no_torch(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("optimizer: &o {name: sgd, lr: 0.1}\nschedule: {name: step}\n")
    code = ("import sys\nfrom nnrun.cli import main\nfor args in (['check', 'quickstart', 'optimizer.fused=off'], "
            f"['check', {str(path)!r}]):\n    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
