"""Recipe loading: defaults, strict keys with did-you-mean, types and ranges with lines,
overrides, cross-field checks."""

from __future__ import annotations

import pytest

from nnrun import recipe as recipe_io
from nnrun.errors import RecipeError
from nnrun.recipe.schema import Recipe


def problems_of(path, overrides=()):
    """Each problem as printed: "`key.path` (line N): message"."""
    with pytest.raises(RecipeError) as info:
        recipe_io.load(path, overrides)
    return [str(p) for p in info.value.problems]


def test_empty_recipe_gets_every_default(write_recipe):
    r = recipe_io.load(write_recipe("{}\n", "empty.yaml"))
    assert r == Recipe(name="empty")
    assert r.data.batch_size == 64 and r.optimizer.lr == 1e-3 and r.schedule.name == "constant"


def test_unknown_key_names_line_and_closest_key(write_recipe):
    path = write_recipe("""\
        seed: 1
        optimizer:
          name: adam
          lrr: 0.1
        """)
    (p,) = problems_of(path)
    assert "`optimizer.lrr`" in p and "line 4" in p and "did you mean `optimizer.lr`" in p


def test_unknown_section_suggests_section(write_recipe):
    (p,) = problems_of(write_recipe("optimiser:\n  lr: 0.1\n"))
    assert "`optimiser`" in p and "`optimizer`" in p


def test_wrong_type_and_range_are_reported_together(write_recipe):
    path = write_recipe("""\
        data:
          batch_size: lots
        optimizer:
          lr: -1
        model:
          norm: batchnorm
        """)
    ps = problems_of(path)
    assert len(ps) == 3
    text = "\n".join(ps)
    assert "`data.batch_size` (line 2): got `lots`; expected an integer" in text
    assert "`optimizer.lr` (line 4): got -1" in text and "> 0" in text
    assert "`model.norm` (line 6)" in text and "did you mean `batch`" in text


def test_scientific_notation_without_dot_is_a_float(write_recipe):
    r = recipe_io.load(write_recipe("optimizer:\n  lr: 3e-4\n"))
    assert r.optimizer.lr == pytest.approx(3e-4)


def test_bool_is_not_an_integer(write_recipe):
    (p,) = problems_of(write_recipe("data:\n  batch_size: true\n"))
    assert "expected an integer" in p


def test_overrides_are_typed_and_validated(tiny_recipe):
    r = recipe_io.load(tiny_recipe, ["optimizer.lr=1e-2", "model.hidden=[8, 4]", "data.shuffle=false"])
    assert r.optimizer.lr == 0.01 and r.model.hidden == [8, 4] and r.data.shuffle is False
    (p,) = problems_of(tiny_recipe, ["optimizer.lrr=1"])
    assert "override `optimizer.lrr=1`" in p and "did you mean `optimizer.lr`" in p
    (p,) = problems_of(tiny_recipe, ["train.epochs=zero"])
    assert "train.epochs" in p and "expected a number" in p


def test_override_without_equals_is_explained(tiny_recipe):
    with pytest.raises(RecipeError) as info:
        recipe_io.load(tiny_recipe, ["optimizer.lr"])
    assert "expected key=value" in str(info.value)


def test_invalid_yaml_names_the_line(write_recipe):
    (p,) = problems_of(write_recipe("data:\n  source: digits\n   batch_size: 3\n"))
    assert "line 3" in p and "not valid YAML" in p


def test_groupnorm_groups_must_divide_widths(write_recipe):
    ps = problems_of(write_recipe("model:\n  norm: group\n  groups: 8\n  hidden: [64, 12]\n"))
    assert any("model.groups" in p and "12" in p for p in ps)


def test_monitor_must_be_a_metric_of_the_task(write_recipe):
    (p,) = problems_of(write_recipe("train:\n  monitor: val_mae\n"))
    assert "`train.monitor`" in p and "classification" in p


def test_nesterov_needs_momentum(write_recipe):
    (p,) = problems_of(write_recipe("optimizer:\n  name: sgd\n  momentum: 0\n  nesterov: true\n"))
    assert "optimizer.nesterov" in p and "momentum" in p


def test_zero_init_is_refused_with_the_reason(write_recipe):
    (p,) = problems_of(write_recipe("init:\n  weights: zeros\n"))
    assert "init.weights" in p and "symmetr" in p.lower()


def test_file_sources_need_a_path_but_public_sets_have_the_download_cache(write_recipe):
    (p,) = problems_of(write_recipe("data:\n  source: csv\n"))
    assert "`data.path`" in p
    assert recipe_io.load(write_recipe("data:\n  source: mnist\n")).data.path is None
    (p,) = problems_of(write_recipe("data:\n  source: mnist\n  download: off\n"))
    assert "`data.path`" in p and "download cache" in p


def test_relative_data_path_resolves_against_the_recipe_folder(write_recipe, tmp_path):
    r = recipe_io.load(write_recipe("data:\n  source: npz\n  path: d/x.npz\n  task: classification\n"))
    assert r.data.path == str(tmp_path / "d" / "x.npz")


def test_dump_round_trips(tiny_recipe):
    r = recipe_io.load(tiny_recipe)
    again = recipe_io.validate(recipe_io.to_dict(r), source=recipe_io.Source("copy"))
    assert again == r


def test_shipped_recipe_by_name():
    r = recipe_io.load("quickstart")
    assert r.name == "quickstart" and r.data.source == "digits"


def test_unknown_shipped_name_suggests(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as info:
        recipe_io.load("quickstrat")
    assert "did you mean `quickstart`" in str(info.value)


def test_a_recipe_built_from_a_dict_names_no_default_for_a_key_it_gave():
    with pytest.raises(RecipeError) as info:
        recipe_io.validate({"init": {"weights": "zeros"}}, source=recipe_io.Source("api"))
    (problem,) = info.value.problems
    assert problem.path == ("init", "weights") and problem.where is None
    assert str(problem).startswith("`init.weights`: zeros is refused")
