"""Recipe values: finite floats, bounded integers, YAML booleans for word choices, names that stay
one folder, overrides located at the override, and values checked for what the run does with them."""

from __future__ import annotations

import math
import typing

import pytest

from nnrun import recipe as recipe_io
from nnrun.errors import RecipeError
from nnrun.recipe.fields import leaves
from nnrun.recipe.schema import Recipe

BOOL_WORDS = {"on", "off", "yes", "no", "true", "false"}


def leaf_fields():
    """(key path, type, metadata) of every plain key; `[]` in a path marks a list of sections."""
    return [(path, tp, f.metadata) for path, tp, f in leaves(Recipe)]


def override(path: tuple, value: str) -> str:
    """`a.b=value`, or `a.list=[{key: value}]` for a key inside a list of sections."""
    if "[]" in path:
        i = path.index("[]")
        return f"{'.'.join(path[:i])}=[{{{'.'.join(path[i + 1:])}: {value}}}]"
    return f"{'.'.join(path)}={value}"


def base_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args and typing.get_origin(tp) is not list else tp


FLOATS = [p for p, tp, _ in leaf_fields() if base_type(tp) in (float, list[float])]
INTS = [(p, m) for p, tp, m in leaf_fields() if base_type(tp) in (int, list[int])]


def problems(overrides, recipe="quickstart"):
    with pytest.raises(RecipeError) as info:
        recipe_io.load(recipe, overrides)
    return info.value.problems


# ---------------------------------------------------------------------------------------------
# D5: NaN, inf and huge numbers


def test_the_schema_has_float_and_integer_keys():  # the walks below must not be vacuous
    assert len(FLOATS) > 40 and len(INTS) >= 30


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_every_float_key_refuses_non_finite_values(value):
    for path in FLOATS:
        if value == ".inf" and path == ("clip", "norm_type"):
            continue  # documented: the infinity norm
        text = f"[{value}, 0.5]" if path in (("optimizer", "betas"), ("schedule", "milestones")) else value
        (p,) = problems([override(path, text)])
        assert "finite number" in p.message and p.where.startswith("override"), (path, p)


def test_nan_message_names_the_override_and_what_is_expected():
    (p,) = problems(["optimizer.lr=.nan"])
    assert str(p) == ("`optimizer.lr` (override `optimizer.lr=.nan`): got nan; expected a finite number > 0.0 "
                      "and <= 1e+30")


def test_infinity_norm_stays_allowed_for_clip_norm_type():
    assert recipe_io.load("quickstart", ["clip.norm_type=.inf"]).clip.norm_type == math.inf


def test_nan_val_fraction_is_not_reported_as_zero():
    (p,) = problems(["data.val_fraction=.nan"])
    assert "got nan" in p.message and "is 0" not in p.message


def test_every_integer_key_has_an_upper_bound_that_the_reference_shows():
    from nnrun.recipe.reference import reference

    text = reference()
    for path, meta in INTS:
        bound = meta.get("max") if meta.get("max") is not None else meta.get("item_max")
        assert bound is not None, path
        assert f"{bound}" in text


@pytest.mark.parametrize("path,meta", INTS, ids=[".".join(p) for p, _ in INTS])
def test_an_integer_one_past_its_bound_is_refused_and_the_bound_itself_is_not_out_of_range(path, meta):
    bound = meta.get("max") if meta.get("max") is not None else meta["item_max"]
    listed = meta.get("max") is None

    def value(n):
        return f"[{n}]" if listed else str(n)

    (p,) = problems([override(path, value(bound + 1))])
    assert "got" in p.message and str(bound) in p.message
    try:
        recipe_io.load("quickstart", [override(path, value(bound))])
    except RecipeError as exc:  # a cross-field rule may still object, never the range
        assert not any("expected an integer" in q.message or "every item" in q.message for q in exc.problems)


@pytest.mark.parametrize("key,limit", [("train.epochs", 1_000_000), ("schedule.cycle_len", 1_000_000_000),
                                       ("schedule.warmup", 1_000_000_000), ("schedule.step_size", 1_000_000_000),
                                       ("optimizer.momentum_schedule.epochs", 1_000_000),
                                       ("ensemble.swa_start", 1_000_000), ("schedule.cycle_mult", 100)])
def test_floats_with_a_natural_ceiling_have_one(key, limit):
    (p,) = problems([f"{key}={limit * 10}"])
    assert f"<= {limit}" in p.message or f"and {limit}" in p.message


@pytest.mark.parametrize("overrides", [
    ["optimizer.lr=.nan"], ["optimizer.lr=.inf"], ["init.bias=.nan"], ["data.tanh_scale=.nan"],
    ["clip.norm_type=.nan"], ["optimizer.groups=[{lr_mult: .nan}]"], ["train.epochs=.inf"], ["train.epochs=.nan"],
    ["train.epochs=1e308"], ["schedule.warmup=.nan"], ["schedule.name=step", "schedule.step_size=1e-320"],
    ["schedule.name=cyclic", "schedule.step_size=1e-320"], ["seed=99999999999999999999999"],
    ["data.split_seed=99999999999999999999999"], ["train.threads=99999999999"],
    ["log.every_n_steps=99999999999999999999"], ["model.hidden=[2000000000]"],
    ["clip.policy=autoclip", "clip.window=99999999999999"], ["ensemble.strategy=ema", "ensemble.decay=.nan"],
    ["model.dropout=.nan"], ["train.label_smoothing=.nan"], ["clip.max_norm=.nan"],
    ["train.explosion_factor=.nan"], ["schedule.name=sgdr", "schedule.cycle_len=1e-9"],
    ["train.epochs=1" + "0" * 400], ["name=../../escape"], ["name=a/b"], ["name=."],
])
def test_the_probes_absurd_overrides_are_refused_with_exit_2(cli, overrides):
    res = cli("check", "quickstart", "train.epochs=1", *overrides)
    assert res.exit_code == 2 and "problem(s) in recipe" in res.stderr, res.output


def test_a_huge_integer_for_a_float_key_is_a_problem_not_a_crash():
    (p,) = problems(["optimizer.lr=1" + "0" * 400])
    assert "expected a finite number" in p.message and len(p.message) < 200


# ---------------------------------------------------------------------------------------------
# YAML booleans for keys whose documented values are words


@pytest.mark.parametrize("typed,word", [("off", "off"), ("no", "off"), ("false", "off"), ("on", "on"),
                                        ("yes", "on"), ("true", "on"), ("'off'", "off")])
def test_optimizer_fused_takes_what_a_user_types(typed, word, write_recipe):
    assert recipe_io.load("quickstart", [f"optimizer.fused={typed}"]).optimizer.fused == word
    path = write_recipe(f"optimizer:\n  fused: {typed}\n")
    assert recipe_io.load(path).optimizer.fused == word


def test_every_choice_key_with_boolean_words_takes_yaml_booleans():
    worded = [(p, m["choices"]) for p, _, m in leaf_fields() if set(m.get("choices") or ()) & BOOL_WORDS]
    assert worded  # optimizer.fused at least
    for path, choices in worded:
        for typed in ("off", "on", "no", "yes"):
            word = {"off": "off", "no": "off", "on": "on", "yes": "on"}[typed]
            if word not in choices:
                continue
            r = recipe_io.load("quickstart", [override(path, typed)])
            assert recipe_io.to_dict(r)[path[0]][path[1]] == word


def test_a_boolean_where_text_is_wanted_says_how_to_quote_it():
    (p,) = problems(["model.norm=no"])
    assert "quote" in p.message and "did you mean `none`" in p.message
    (p,) = problems(["name=yes"])
    assert "quote" in p.message


def test_resolved_recipe_round_trips_the_word():
    r = recipe_io.load("quickstart", ["optimizer.fused=off"])
    text = recipe_io.dump(r)
    again = recipe_io.validate(recipe_io.parse_text(text, recipe_io.Source("dump"))[0], source=recipe_io.Source("x"))
    assert again.optimizer.fused == "off"


# ---------------------------------------------------------------------------------------------
# D18: names, overrides located where they were written, init.from


@pytest.mark.parametrize("name", ["a/b", "../../escape", ".", "..", "a\\b", "tab\tname", "x" * 300])
def test_a_name_that_is_not_one_folder_is_refused(name):
    (p,) = problems([f"name='{name}'"])
    assert p.path == ("name",) and "one folder name" in p.message


@pytest.mark.parametrize("name", ["my-run", "run.v2", "日本", "a b"])
def test_ordinary_names_stay_allowed(name):
    assert recipe_io.load("quickstart", [f"name='{name}'"]).name == name


def test_an_override_with_an_empty_key_part_is_not_placed_at_a_line_of_the_recipe():
    (p,) = problems(["data..source=csv"])
    assert "override `data..source=csv`" in str(p) and "line" not in str(p) and "empty part" in p.message


def test_a_problem_inside_an_overridden_list_is_located_at_the_override(write_recipe):
    path = write_recipe("seed: 1\noptimizer:\n  name: adam\n")
    (p,) = problems(["optimizer.groups=[{lr_mult: .nan}]"], recipe=path)
    assert p.where == "override `optimizer.groups=[{lr_mult: .nan}]`"


def test_init_from_a_folder_says_it_needs_a_file(tmp_path):
    from torch import nn

    from nnrun.build import load_pretrained
    from nnrun.errors import CheckpointError

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(nn.Linear(2, 2), str(tmp_path / "run"))
    assert "is a folder" in info.value.message and "does not exist" not in info.value.message
    assert "checkpoints/last.pt" in info.value.hint
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_pretrained(nn.Linear(2, 2), str(tmp_path / "run"))
    assert f"init.from={tmp_path / 'run' / 'checkpoints' / 'last.pt'}" in info.value.hint


# ---------------------------------------------------------------------------------------------
# the search section's values


def test_a_search_choice_that_is_no_command_line_value_is_refused(write_recipe):
    path = write_recipe("search:\n  space:\n    data.label_column: {choice: [2020-01-01, y]}\n")
    (p,) = problems([], recipe=path)
    assert "cannot be passed to a trial" in p.message


def test_search_budgets_and_huge_range_ends_are_bounded(write_recipe):
    path = write_recipe(f"search:\n  trials: 10000000\n  space:\n    seed: {{int: [0, 1{'0' * 40}]}}\n")
    text = "\n".join(str(p) for p in problems([], recipe=path))
    assert "search.trials" in text and "between 1 and 100000" in text and "search.space.seed" in text


# ---------------------------------------------------------------------------------------------
# D2: schedule durations checked for what the run does with them, in bounded work


def test_a_tiny_sgdr_cycle_is_refused_by_check_quickly(tmp_path):
    import resource
    import subprocess
    import sys

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (512 * 2**20, 512 * 2**20))

    res = subprocess.run([sys.executable, "-c", "from nnrun.cli import main; main()", "check", "quickstart",
                          "schedule.name=sgdr", "schedule.cycle_len=1e-9"],
                         capture_output=True, text=True, timeout=60, preexec_fn=cap)
    assert res.returncode == 2 and "shorter than one optimizer step" in res.stderr, res.stderr


@pytest.mark.parametrize("overrides,key", [
    (["schedule.name=sgdr", "schedule.unit=steps", "schedule.cycle_len=0.5"], "cycle_len"),
    (["schedule.name=step", "schedule.unit=steps", "schedule.step_size=0.25"], "step_size"),
    (["schedule.name=cyclic", "schedule.step_size=1e-6"], "step_size"),
])
def test_durations_shorter_than_one_step_are_refused(overrides, key):
    (p,) = problems(overrides)
    assert p.path == ("schedule", key) and "shorter than one optimizer step" in p.message


def test_in_epochs_an_unknown_size_source_is_checked_once_the_data_is_loaded(tmp_path):
    import numpy as np
    import torch

    from nnrun.build import build

    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(40, 3)).astype("float32"),
             y=np.arange(40) % 2)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: npz, path: d.npz, batch_size: 8}\ntrain: {epochs: 1}\n"
                      "schedule: {name: sgdr, cycle_len: 0.01}\n")
    r = recipe_io.load(recipe, ["schedule.cycle_len=1e-300"])  # the size is not known before loading
    with pytest.raises(RecipeError) as info:
        build(r, device=torch.device("cpu"))
    assert "shorter than one optimizer step" in str(info.value) and "an epoch has 5 here" in str(info.value)


def test_counting_sgdr_cycles_takes_a_few_evaluations_whatever_the_values(monkeypatch):
    from nnrun.recipe import checks

    calls = []
    end = checks.sgdr_cycle_end
    monkeypatch.setattr(checks, "sgdr_cycle_end", lambda *a: calls.append(a) or end(*a))
    for cycle_len, mult, span in [(1e-15, 1.0, 20.0), (1e-300, 100.0, 1e6), (1.0, 1.0000001, 1e9), (3.0, 2.0, 45.0)]:
        calls.clear()
        k = checks.sgdr_cycles_within(cycle_len, mult, span)
        assert len(calls) <= 8 and k >= 0
    assert checks.sgdr_cycles_within(3.0, 2.0, 45.0) == 4  # 3 + 6 + 12 + 24 = 45


def test_snapshot_cycle_ends_are_listed_in_bounded_work():
    from nnrun.components.schedules import build_schedule
    from nnrun.recipe.schema import ScheduleConfig

    s = build_schedule(ScheduleConfig(name="sgdr", unit="steps", cycle_len=1.0), steps_per_epoch=1000,
                       total_steps=10**9)
    ends = s.cycle_end_steps()
    assert len(ends) == 1000 and ends[:3] == [1, 2, 3]
    c = build_schedule(ScheduleConfig(name="cyclic", unit="steps", step_size=1.0), steps_per_epoch=10,
                       total_steps=10**12)
    assert len(c.cycle_end_steps()) == 1000


def test_a_snapshot_ensemble_of_more_than_a_thousand_cycles_is_refused():
    (p,) = problems(["schedule.name=sgdr", "schedule.cycle_len=0.05", "train.epochs=60",
                     "ensemble.strategy=snapshots"])
    assert p.path == ("ensemble", "strategy") and "1,200 cycles" in p.message


def test_triangular2_after_thousands_of_cycles_does_not_overflow():
    from nnrun.components.schedules import build_schedule
    from nnrun.recipe.schema import ScheduleConfig

    s = build_schedule(ScheduleConfig(name="cyclic", mode="triangular2", unit="steps", step_size=1.0),
                       steps_per_epoch=10, total_steps=10_000, lr=0.1)
    assert 0.0 <= s.rate(5001) <= 0.1


@pytest.mark.parametrize("overrides", [[], ["data.limit=100"],
                                       ["data.val_fraction=0", "data.batch_size=7", "train.monitor=train_loss"],
                                       ["data.drop_last=true", "data.batch_size=50"], ["clip.accumulate=3"],
                                       ["data.limit=3", "data.val_fraction=0.5", "data.batch_size=1",
                                        "model.norm=none"],
                                       ["data.val_fraction=0", "data.batch_size=2", "train.monitor=train_loss",
                                        "model.norm=none"]])
def test_steps_per_epoch_known_before_loading_match_the_build(overrides):
    import torch

    from nnrun.build import build
    from nnrun.recipe.checks import known_steps_per_epoch

    r = recipe_io.load("quickstart", ["train.epochs=1", *overrides])
    c = build(r, device=torch.device("cpu"))
    assert known_steps_per_epoch(r) == c.total_steps


def test_steps_per_epoch_are_left_to_the_build_when_a_batch_of_one_may_be_folded():
    from nnrun.recipe.checks import known_steps_per_epoch

    # 1438 training examples without a validation split: 1438 = 3 * 479 + 1 (BatchNorm folds the last one)
    r = recipe_io.load("quickstart", ["data.val_fraction=0", "data.batch_size=3", "train.monitor=train_loss",
                                      "model.norm=batch"])
    assert known_steps_per_epoch(r) is None


@pytest.mark.parametrize("overrides", [["model.hidden=[8]"], ["model.hidden=[8, 8]", "model.norm=batch"],
                                       ["model.hidden=[16, 8, 8]", "model.norm=layer"], ["model.hidden=[]"]])
def test_discriminative_groups_are_checked_against_the_mlps_layers_before_building(overrides):
    import torch

    from nnrun.build import build
    from nnrun.components.optim import layer_blocks
    from nnrun.recipe.checks import mlp_parameter_layers

    r = recipe_io.load("quickstart", ["train.epochs=1", *overrides])
    layers = mlp_parameter_layers(r.model)
    assert layers == len(layer_blocks(build(r, device=torch.device("cpu")).model))
    (p,) = problems([*overrides, f"optimizer.discriminative.groups={layers + 1}"])
    assert p.path == ("optimizer", "discriminative", "groups") and f"at most {layers}" in p.message
