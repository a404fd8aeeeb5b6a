"""Property-based fuzzing of recipe documents and overrides (hypothesis, derandomized so CI is
reproducible).

The property: `nnrun check` ends with exit 0, or with one clean error and exit 2; never a traceback,
always in bounded time (each case has a deadline) and memory (bomb-like documents run in a
subprocess under an address-space cap). Generated inputs: structure mutations of the shipped
recipes with wrong types, non-finite and huge numbers, dates, bytes and text; YAML constructs
(tags, anchors, aliases, merge keys, duplicates, deep nesting, bombs); text and byte damage
(truncation, stray characters, other encodings); and `key=value` overrides. A sample of accepted
fuzzed recipes trains one optimizer step. Failing examples found while building this are kept as
`@example`s.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import resource
import subprocess
import sys
import typing
from datetime import timedelta

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nnrun import recipe as recipe_io
from nnrun.errors import RecipeError
from nnrun.recipe.schema import Recipe

FUZZ = settings(derandomize=True, database=None, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large], print_blob=True)
SHIPPED = {name: recipe_io.parse_text(recipe_io.locate(name)[0], recipe_io.Source(name))[0]
           for name in sorted(recipe_io.shipped_recipes())}
TAGS = ["!custom", "!!int", "!!float", "!!bool", "!!null", "!!str", "!!timestamp", "!!binary", "!!set", "!!omap",
        "!!pairs", "!!python/object:os.system", "!!python/name:os.getcwd", "!!merge", "!<tag:yaml.org,2002:int>"]
WORDS = ["", ".", "..", "a/b", "../../x", "~", "null", "on", "off", "yes", "no", "NaN", ".nan", "-.inf", "1e-3",
         "1e999", "0x1F", "1:30", "2020-13-45", "2020-01-01", "'quoted'", "*alias", "&anchor x", "[unclosed",
         "{a: 1, a: 2}", "a: b", "- item", "|", ">", "%YAML", "@", "`", "\t", "\\", '"', "#comment", "é", "日本"]


def leaf_keys(cls=Recipe, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f.metadata.get("key", f.name), hints[f.name]
        nested = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
        if nested:
            yield from leaf_keys(nested[0], f"{prefix}{key}.")
        else:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            yield f"{prefix}{key}", (args[0] if args and typing.get_origin(tp) is not list else tp, f.metadata)


KEYS = dict(leaf_keys())  # dotted key -> (type without None, metadata)

# ---------------------------------------------------------------------------------------------
# strategies

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, -1, 5e-324, 1e308, 2**31, 2**63, 2**64]),
    st.text(max_size=20), st.sampled_from(WORDS), st.dates(), st.binary(max_size=8))
trees = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6) | st.sampled_from(sorted(KEYS)), inner, max_size=4),
                     max_leaves=12)


def numbers_in(tp, lo, hi):
    """Numbers of type tp within [lo, hi] (capped so a drawn width or count stays cheap to build)."""
    if tp is int:
        lo = int(lo) if lo is not None else -(10**6)
        return st.integers(lo, max(lo, min(int(hi) if hi is not None else 10**6, 512)))
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


@st.composite
def schema_values(draw, key: str):
    """A value for a known key: mostly of its type and inside what it allows (to reach the cross-field
    rules and the dump), sometimes anything at all."""
    tp, meta = KEYS[key]
    if draw(st.integers(0, 3)) == 0:
        return draw(trees)
    if meta.get("choices"):
        return draw(st.sampled_from(meta["choices"]))
    if tp in (int, float):
        return draw(numbers_in(tp, meta.get("min"), meta.get("max")))
    if tp in (list[int], list[float]):
        item = numbers_in(typing.get_args(tp)[0], meta.get("item_min"), meta.get("item_max"))
        return draw(st.lists(item, max_size=4))
    if tp is bool:
        return draw(st.booleans())
    if tp == list[str]:
        return draw(st.lists(st.sampled_from(["*", "head.*", "body.*", "bias", "norm"]) | st.text(max_size=6),
                             max_size=3))
    return draw(st.sampled_from(WORDS) | st.text(max_size=12) | trees)


def paths_of(data, prefix=()):
    """Every key path of a nested mapping (lists of mappings included)."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield prefix + (k,)
            yield from paths_of(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from paths_of(v, prefix + (i,))


def place(data: dict, path: tuple, value) -> None:
    node = data
    for k in path[:-1]:
        node = node.setdefault(k, {}) if isinstance(node, dict) else node
        if not isinstance(node, (dict, list)):
            return
    if isinstance(node, dict):
        node[path[-1]] = value


@st.composite
def mutated_documents(draw):
    """A shipped recipe with one to four structural mutations, dumped to YAML text."""
    data = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "delete", "known", "unknown", "wrap"]))
        paths = list(paths_of(data)) or [("seed",)]
        path = draw(st.sampled_from(paths))
        if op == "set":
            place(data, path, draw(trees))
        elif op == "delete" and len(path) == 1:
            data.pop(path[0], None)
        elif op == "known":
            key = draw(st.sampled_from(sorted(KEYS)))
            place(data, tuple(key.split(".")), draw(schema_values(key)))
        elif op == "unknown":
            place(data, path[:-1] + (draw(st.text(min_size=1, max_size=8)),), draw(scalars))
        elif op == "wrap":
            place(data, path, [draw(trees)])
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()))


@st.composite
def damaged(draw, documents):
    """YAML text with line-level damage: a tag, a duplicated or dropped line, a stray character, a cut."""
    lines = draw(documents).splitlines()
    for _ in range(draw(st.integers(0, 3))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["tag", "dup", "drop", "char", "cut", "anchor"]))
        if op == "tag" and ": " in lines[i]:
            head, _, tail = lines[i].partition(": ")
            lines[i] = f"{head}: {draw(st.sampled_from(TAGS))} {tail}"
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "drop":
            del lines[i]
        elif op == "char":
            j = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:j] + draw(st.characters(codec="utf-8")) + lines[i][j:]
        elif op == "cut":
            lines = lines[:i] + [lines[i][:draw(st.integers(0, len(lines[i])))]]
        elif op == "anchor" and lines[i].endswith(":"):
            lines[i] += " &a"
            lines.append(f"{lines[i].split(':')[0].strip()}2: *a")
    return "\n".join(lines) + "\n"


def nest(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@st.composite
def constructs(draw):
    """Documents built around one YAML construct a recipe might meet."""
    key = draw(st.sampled_from(sorted(KEYS)))
    section, _, leaf = key.rpartition(".")
    value = draw(st.sampled_from(WORDS[:20]) | st.text(alphabet="abc019.-_ e", max_size=8))
    kind = draw(st.sampled_from(["tag", "merge", "merge_list", "dup", "alias", "recursive", "deep", "bomb"]))
    if kind == "tag":
        body = f"{leaf}: {draw(st.sampled_from(TAGS))} {value}"
    elif kind == "merge":
        body = f"<<: {{{leaf}: {value}}}\nother: 1" if draw(st.booleans()) else f"<<: {value}"
    elif kind == "merge_list":
        body = f"<<: [{{{leaf}: {value}}}, {{{leaf}: 2}}]\n{leaf}: 3"
    elif kind == "dup":
        body = f"{leaf}: {value}\n{leaf}: {value}"
    elif kind == "alias":
        body = f"{leaf}: &v {value}\nx: *v" if draw(st.booleans()) else f"{leaf}: *undefined"
    elif kind == "recursive":
        body = f"{leaf}: &r [1, *r]" if draw(st.booleans()) else f"{leaf}: &r {{a: *r}}"
    elif kind == "deep":
        body = f"{leaf}: {nest(draw(st.sampled_from([1, 10, 63, 64, 65, 200, 5000])))}"
    else:
        levels, width = draw(st.integers(1, 9)), draw(st.integers(1, 12))
        anchors = ", ".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i else 'x'] * width)}]" for i in range(levels))
        body = f"{leaf}: {{{anchors}}}"
    if not section:
        return body + "\n"
    indent = "  " * len(section.split("."))
    header = "".join("  " * i + part + ":\n" for i, part in enumerate(section.split(".")))
    return header + "".join(indent + line + "\n" for line in body.splitlines())


override_keys = st.one_of(st.sampled_from(sorted(KEYS)), st.text(alphabet="abcdemnopst._= ", max_size=14),
                          st.sampled_from(["data..source", ".seed", "seed.", "", "search.space.optimizer.lr", "-x",
                                           "--help", "optimizer.groups.0.lr_mult", "model.hidden.0"]))
override_values = st.one_of(
    st.sampled_from(WORDS), st.text(max_size=30), trees.map(lambda v: json.dumps(v, default=str)),
    st.builds(lambda t, v: f"{t} {v}", st.sampled_from(TAGS), st.sampled_from(WORDS)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: {"nan": ".nan", "inf": ".inf",
                                                                   "-inf": "-.inf"}.get(repr(f), repr(f))),
    st.integers(min_value=-(10**30), max_value=10**30).map(str), st.integers(1, 70).map(nest))


def flow(value) -> str:
    """A value as one line of YAML, as a user would type it after `key=`."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("\n...\n").strip().replace("\n", " ")


known_overrides = st.sampled_from(sorted(KEYS)).flatmap(lambda k: schema_values(k).map(lambda v: f"{k}={flow(v)}"))
garbage_overrides = st.builds(lambda k, v: f"{k}={v}", override_keys, override_values) | st.text(max_size=12)
overrides = st.lists(st.sampled_from([known_overrides] * 3 + [garbage_overrides]).flatmap(lambda s: s), max_size=4)

# ---------------------------------------------------------------------------------------------
# the property


def check_is_clean(cli, path, *args):
    """`nnrun check` in-process: exit 0 with the recipe printed, or exit 2 with one error; no traceback."""
    res = cli("check", path, *args)  # an exception other than SystemExit propagates: the failure
    assert res.exit_code in (0, 2), res.output
    assert "Traceback" not in res.output
    if res.exit_code == 2:
        assert res.stderr.startswith(("error:", "Error:", "Usage:")), res.output  # ours, or click's usage error
    return res


@settings(FUZZ, max_examples=400)
@given(text=damaged(mutated_documents()))
@example(text="optimizer: {fused: off}\n")
@example(text="name: =\n")  # YAML 1.1's value key `=` had no constructor
@example(text="name: 2020-13-45\n")
@example(text="model:\n  kwargs: {d: 2020-01-01, b: !!binary aGk=}\n  arch: python\n  factory: a:b\n")
@example(text="search:\n  space:\n    data.label_column: {choice: [2020-01-01, y]}\n")
@example(text="search:\n  space:\n    seed: {int: [0, 10000000000000000000000000000000000000000]}\n")
@example(text="schedule: {name: sgdr, cycle_len: 1.0e-300}\n")
def test_mutated_recipes_check_cleanly(cli, tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    check_is_clean(cli, path)


@settings(FUZZ, max_examples=300)
@given(text=constructs())
@example(text="seed: !!int ''\n")
@example(text="data:\n  shuffle: !!bool maybe\n")
@example(text="name: x\n\x00\n")
@example(text="optimizer: &o {<<: *o}\n")
def test_yaml_constructs_check_cleanly(cli, tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    check_is_clean(cli, path)


@settings(FUZZ, max_examples=150)
@given(raw=st.binary(max_size=200) | damaged(mutated_documents()).flatmap(
    lambda t: st.sampled_from(["utf-16", "utf-16-le", "latin-1", "utf-8-sig", "cp1252"]).map(
        lambda enc: t.encode(enc, errors="replace"))))
@example(raw=b"\xff\xfeb\x00")
@example(raw=b"name: caf\xe9\n")
def test_bytes_in_any_encoding_check_cleanly(cli, tmp_path, raw):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(raw)
    check_is_clean(cli, path)


@settings(FUZZ, max_examples=400)
@given(args=overrides)
@example(args=["data..source=csv"])
@example(args=["name=!!int abc"])
@example(args=["model.hidden=" + nest(50_000)])
@example(args=["train.epochs=1" + "0" * 400])
@example(args=["optimizer.groups=[{lr_mult: .nan}]"])
def test_fuzzed_overrides_check_cleanly(cli, args):
    check_is_clean(cli, "quickstart", *args)


def test_bomb_like_documents_stay_within_a_memory_cap(tmp_path):
    """Expanding documents, deep nesting and recursive anchors, all checked by one subprocess that
    cannot take more than 512 MiB: each must end in a RecipeError, and the whole batch in time."""
    docs = []
    for levels in range(1, 13):
        for width in (2, 5, 10):
            anchors = [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i else 'x'] * width)}]" for i in range(levels)]
            docs.append("model:\n  kwargs: {" + ", ".join(anchors) + "}\n")
    docs += [f"model:\n  kwargs: {nest(n)}\n" for n in (64, 65, 1000, 50_000, 200_000)]
    docs += ["search: &a {x: *a}\n", "model: {kwargs: &a [*a]}\n", "a: &a {<<: *a}\n"]
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.yaml").write_text(doc)
    code = ("import json, sys\nfrom nnrun import recipe\nfrom nnrun.errors import NnrunError\nout = []\n"
            "for p in sys.argv[1:]:\n    try:\n        recipe.load(p); out.append('ok')\n"
            "    except NnrunError as e:\n        out.append('refused')\nprint(json.dumps(out))\n")

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (512 * 2**20, 512 * 2**20))

    res = subprocess.run([sys.executable, "-c", code, *(str(tmp_path / f"{i}.yaml") for i in range(len(docs)))],
                         capture_output=True, text=True, timeout=120, preexec_fn=cap)
    assert res.returncode == 0, res.stderr[-2000:]
    outcomes = json.loads(res.stdout)
    assert len(outcomes) == len(docs) and outcomes.count("refused") >= 5


@pytest.mark.parametrize("args", [["{tmp}/bomb.yaml"], ["quickstart", "name=!custom x"], ["quickstart", "seed=.nan"]])
def test_a_few_through_a_real_process(tmp_path, args):
    (tmp_path / "bomb.yaml").write_text("a: &a [x, x]\n" + "".join(
        f"b{i}: &b{i} [{', '.join(['*' + ('a' if i == 0 else f'b{i - 1}')] * 10)}]\n" for i in range(8)))
    argv = [a.format(tmp=tmp_path) for a in args]
    res = subprocess.run([sys.executable, "-c", "from nnrun.cli import main; main()", "check", *argv],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


# ---------------------------------------------------------------------------------------------
# a sample of accepted fuzzed recipes trains one step

TINY = "seed: 3\ndata: {source: digits, limit: 60, batch_size: 16}\nmodel: {hidden: [8]}\n" \
       "train: {epochs: 1, threads: 1}\nlog: {progress: none, tensorboard: false}\n"



# Not drawn for training: files and factories (not there), `train.device` (cuda is refused by a machine
# without one) and `model.freeze` (its globs are matched against the built model's parameter names).
UNTRAINED = ("data.", "search", "init.from", "log.run_dir", "model.factory", "model.kwargs", "train.device",
             "model.freeze", "model.unfreeze")


@st.composite
def valid_ish_overrides(draw):
    keys = draw(st.lists(st.sampled_from([k for k in sorted(KEYS) if not k.startswith(UNTRAINED)]),
                         min_size=1, max_size=4, unique=True))
    return [f"{k}={flow(draw(schema_values(k)))}" for k in keys]


@settings(FUZZ, max_examples=40, deadline=timedelta(seconds=30))  # a run, not a check: a longer deadline
@given(args=valid_ish_overrides())
@example(args=["init.weights=xavier_uniform", "init.gain=1e29"])  # 1e300 crashed torch's float32 init
@example(args=["init.bias=-1e30"])
@example(args=["clip.policy=value", "clip.value=1e30", "clip.accumulate=1000000"])
@example(args=["schedule.name=cyclic", "schedule.mode=triangular2", "schedule.unit=steps", "schedule.step_size=1",
               "train.epochs=1000"])
def test_accepted_fuzzed_recipes_train_one_step(cli, tmp_path, one_step, args):
    base = tmp_path / "tiny.yaml"
    base.write_text(TINY)
    try:
        recipe_io.load(base, args)
    except RecipeError:
        return
    res = cli("train", base, f"log.run_dir={tmp_path / 'runs'}", *args)
    assert res.exit_code == 0 or (res.exit_code == 1 and "non-finite" in res.output), res.output[-600:]
    assert "Traceback" not in res.output

