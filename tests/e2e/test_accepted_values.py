"""Anything `nnrun check` accepts, `nnrun train` can start.

The schema is walked: every key gets a few values inside what it documents (its edges, its
default, a middle value, every choice, true and false) on top of a tiny digits recipe, with the
keys it needs to matter (`schedule.cycle_len` under `schedule.name: sgdr`, ...). Each value the
loader accepts is trained through the real CLI for one optimizer step: it must start and either
finish or stop cleanly (exit 0, or 1 for a non-finite stop), never a traceback. One step is
enforced by a callback added to the train workflow, so `train.epochs: 1000000` costs one step too.
"""

from __future__ import annotations

import dataclasses
import functools
import typing

import pytest

from nnrun import recipe as recipe_io
from nnrun.errors import RecipeError
from nnrun.recipe.fields import leaves
from nnrun.recipe.schema import Recipe

BASE = """\
seed: 3
data: {source: digits, limit: 60, batch_size: 16, val_fraction: 0.2}
model: {hidden: [8]}
train: {epochs: 1, threads: 1}
log: {progress: none, tensorboard: false, every_n_steps: 1}
"""

CONTEXT = {  # what makes a key matter: (section, key prefix) -> overrides
    ("schedule", "step_size"): ["schedule.name=step"], ("schedule", "gamma"): ["schedule.name=step"],
    ("schedule", "milestones"): ["schedule.name=multistep"], ("schedule", "k"): ["schedule.name=exponential"],
    ("schedule", "min_lr"): ["schedule.name=cosine"],
    ("schedule", "cycle_"): ["schedule.name=sgdr", "schedule.unit=steps", "schedule.cycle_len=1"],
    ("schedule", "mode"): ["schedule.name=cyclic", "schedule.unit=steps", "schedule.step_size=1"],
    ("schedule", "base_lr"): ["schedule.name=cyclic", "schedule.unit=steps", "schedule.step_size=1"],
    ("schedule", "pct_start"): ["schedule.name=one_cycle"], ("schedule", "div_factor"): ["schedule.name=one_cycle"],
    ("schedule", "final_div"): ["schedule.name=one_cycle"], ("schedule", "anneal"): ["schedule.name=one_cycle"],
    ("schedule", "max_lr"): ["schedule.name=one_cycle"], ("schedule", "base_momentum"): ["schedule.name=one_cycle"],
    ("schedule", "max_momentum"): ["schedule.name=one_cycle"], ("schedule", "warmup_start"): ["schedule.warmup=0.5"],
    ("clip", "max_norm"): ["clip.policy=global_norm"], ("clip", "norm_type"): ["clip.policy=global_norm"],
    ("clip", "value"): ["clip.policy=value"], ("clip", "clipping"): ["clip.policy=agc"],
    ("clip", "eps"): ["clip.policy=agc"], ("clip", "agc_exclude"): ["clip.policy=agc"],
    ("clip", "percentile"): ["clip.policy=autoclip"], ("clip", "window"): ["clip.policy=autoclip"],
    ("ensemble", "every"): ["ensemble.strategy=checkpoints"], ("ensemble", "decay"): ["ensemble.strategy=ema"],
    ("ensemble", "ema_warmup"): ["ensemble.strategy=ema"], ("ensemble", "swa"): ["ensemble.strategy=swa"],
    ("init", "gain"): ["init.weights=xavier_uniform"], ("init", "std"): ["init.weights=normal"],
    ("init", "lsuv"): ["init.weights=lsuv"], ("optimizer", "momentum"): ["optimizer.name=sgd"],
    ("optimizer", "nesterov"): ["optimizer.name=sgd"], ("optimizer", "alpha"): ["optimizer.name=rmsprop"],
    ("optimizer", "centered"): ["optimizer.name=rmsprop"], ("model", "channels"): ["model.arch=cnn"],
    ("model", "kernel"): ["model.arch=cnn"], ("model", "pool"): ["model.arch=cnn"],
    ("model", "head_hidden"): ["model.arch=cnn"], ("model", "depth"): ["model.arch=resnet"],
    ("model", "width"): ["model.arch=resnet"], ("model", "groups"): ["model.norm=group", "model.hidden=[64]"],
    ("model", "unfreeze"): ["model.freeze=['body.*']"], ("train", "max_skips"): ["train.on_nonfinite=skip"],
    ("optimizer", "discriminative"): ["model.hidden=[8, 8]"], ("train", "rollback"): ["train.on_nonfinite=rollback"],
    ("train", "max_rollbacks"): ["train.on_nonfinite=rollback"],
    ("data", "source"): ["data.download=false"],  # public sets: the test's cache copy (`public_cache`), offline
}
EXTRA = {  # values for keys the type alone cannot draw (free text, globs) or the run's fit needs
    ("name",): ["x", "run.v2"], ("train", "monitor"): ["val_loss", "train_loss", "val_acc"],
    ("model", "freeze"): ["['head.*']"], ("optimizer", "no_decay"): ["[bias, norm]"],
    ("optimizer", "betas"): ["[0.0, 0.0]", "[0.5, 0.999999]"],
    ("clip", "agc_exclude"): ["[]", "['body.*']"], ("schedule", "cycle_len"): ["3", "1.5"],
    ("schedule", "cycle_mult"): ["2"], ("schedule", "warmup"): ["0.5"], ("schedule", "milestones"): ["[0.5, 0.75]"],
    ("optimizer", "groups", "[]", "match"): ["'head.*'"], ("model", "unfreeze", "[]", "match"): ["'body.*'"],
}
SKIP = {("data", "path"), ("data", "factory"), ("data", "feature_columns"), ("data", "label_column"),
        ("model", "factory"), ("model", "kwargs"), ("init", "from"), ("log", "run_dir"), ("search",)}
HEAVY = {("model", "hidden"): 1024, ("model", "channels"): 1024, ("model", "head_hidden"): 1024,
         ("model", "width"): 64, ("model", "depth"): 56, ("ensemble", "seeds"): 2, ("train", "threads"): 2}


def leaf_fields():
    return leaves(Recipe)


def override(path: tuple, value: str) -> str:
    if "[]" in path:
        i = path.index("[]")
        return f"{'.'.join(path[:i])}=[{{{'.'.join(path[i + 1:])}: {value}}}]"
    return f"{'.'.join(path)}={value}"


def numbers(meta: dict, default, integer: bool, lo_key="min", hi_key="max") -> list:
    """The edges of a numeric range (just inside an exclusive one), its middle, and the default."""
    lo, hi = meta.get(lo_key), meta.get(hi_key)
    out = []
    if lo is not None:
        out.append(lo + (1 if integer else max(abs(lo), 1.0) * 1e-12) if meta.get("min_exclusive") else lo)
    out.append(hi if hi is not None else 1e300)
    if lo is not None and hi is not None:
        out.append((lo + hi) // 2 if integer else (lo + hi) / 2)
    if default not in (None, []) and not isinstance(default, list):
        out.append(default)
    return [int(v) if integer else float(v) for v in out]


def values_for(path: tuple, tp, f) -> list[str]:
    meta = f.metadata
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if args and typing.get_origin(tp) is not list else tp
    out = []
    if meta.get("choices"):
        out += list(meta["choices"])
    elif base is bool:
        out += ["true", "false"]
    elif base in (int, float):
        out += [repr(v) for v in numbers(meta, default, base is int)]
    elif base in (list[int], list[float]):
        out += [f"[{v!r}]" for v in numbers(meta, None, base == list[int], "item_min", "item_max")]
    if type(None) in typing.get_args(tp):
        out.append("null")
    return out + EXTRA.get(path, [])


def heavy(path: tuple, value: str) -> bool:
    limit = HEAVY.get(path)
    try:
        return limit is not None and max(float(v) for v in value.strip("[]").split(",")) > limit
    except ValueError:
        return False


@functools.cache
def accepted_values() -> list[tuple[tuple, list[str], bool]]:
    """(key, overrides, trained) of every drawn value the loader accepts; trained: unless too heavy
    for a test (a 65536-wide layer, 1000 seed runs, 1024 threads are validated only)."""
    import torch

    data, lines = recipe_io.parse_text(BASE, recipe_io.Source("base"))
    accepted = []
    for path, tp, f in leaf_fields():
        if path in SKIP or path[:1] in SKIP:
            continue
        context = next((v for (sec, pre), v in CONTEXT.items() if path[0] == sec and path[1:2]
                        and path[1].startswith(pre)), [])
        for value in values_for(path, tp, f):
            if path == ("train", "device") and value == "cuda" and not torch.cuda.is_available():
                continue  # refused by the machine, not the recipe
            overrides = [*context, override(path, value)]
            try:
                recipe_io.validate(data, source=recipe_io.Source("base"), lines=lines, overrides=overrides)
            except RecipeError:
                continue
            accepted.append((path, overrides, not heavy(path, value)))
    return accepted



def test_every_key_gets_accepted_and_trained_values():
    accepted = accepted_values()
    drawn = {p for p, tp, f in leaf_fields() if p not in SKIP and p[:1] not in SKIP}
    assert not drawn - {p for p, _, _ in accepted}, "a key with no accepted value: fix CONTEXT or EXTRA"
    assert not drawn - {p for p, _, train in accepted if train}, "a key with no trained value"
    assert len(accepted) > 300


@pytest.fixture
def public_cache(tmp_path, monkeypatch, make_mnist, make_cifar):
    """NNRUN_DATA holding tiny stand-ins of the public sets (mnist, fashion-mnist, cifar10), as
    `nnrun data get` leaves them, so `data.source=mnist` trains offline."""
    import pickle

    for name in ("mnist", "fashion-mnist"):
        make_mnist(tmp_path / "cache" / name, n_train=80, n_test=20, gz=True)
    cifar = make_cifar(tmp_path / "cache" / "cifar10" / "cifar-10-batches-py", per_batch=16)
    (cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    monkeypatch.setenv("NNRUN_DATA", str(tmp_path / "cache"))


def test_accepted_values_train_one_step_cleanly(tmp_path, cli, one_step, public_cache):
    base = tmp_path / "base.yaml"
    base.write_text(BASE)
    trained = [overrides for _, overrides, train in accepted_values() if train]
    assert len(trained) > 300
    failures = []
    for i, overrides in enumerate(trained):
        try:
            res = cli("train", base, f"log.run_dir={tmp_path / 'runs' / str(i)}", *overrides)
        except Exception as exc:  # noqa: BLE001 - a traceback is the failure this test looks for
            failures.append((overrides, "traceback", repr(exc)))
            continue
        clean = res.exit_code == 0 or (res.exit_code == 1 and "non-finite" in res.output)
        if not clean or "Traceback" in res.output:
            failures.append((overrides, res.exit_code, res.output[-400:]))
    assert not failures, failures
