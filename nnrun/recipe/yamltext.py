"""Recipe YAML text -> plain data with the line of every key, refusing what could hurt.

PyYAML's own constructor is not used on a whole document: it would crash on tags it does not
know, expand aliases without limit and recurse without end on a recursive anchor. Instead the
document is composed to nodes (nesting refused past :data:`MAX_DEPTH`, which also keeps the
composer's recursion short) and built here:

- YAML 1.1 as PyYAML reads it (``off``/``no`` are booleans, ``1e-3`` is a float too);
- merge keys ``<<: *defaults`` (a mapping or a list of mappings; keys written next to the merge
  win, and earlier mappings in the list win over later ones) with each merged key's line;
- duplicate keys are problems naming both lines (YAML would silently keep the last one);
- every value built counts, aliases each time they are used, so an alias bomb stops at
  :data:`MAX_VALUES`; an anchor that contains its own alias is refused;
- tags: the standard scalar ones (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``,
  ``!!timestamp``, ``!!binary``); any other tag, and a scalar its tag cannot read, is a problem.

Keys are the text written (``on:`` is the key ``on``, not ``True``).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from nnrun.errors import Problem
from nnrun.recipe.values import shown

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists (a recipe needs 6; aliases count their own depth)."""
MAX_VALUES = 100_000
"""Most values a document may build, each alias counted every time it is used (a recipe has a few hundred)."""
MAX_BYTES = 1 << 20
"""Largest recipe file read (1 MiB; the shipped recipes are about 1 KB)."""
_MAX_INT_BITS = 14_000  # about 4,200 digits: Python refuses to print longer integers

# what PyYAML's scalar constructors raise on text their tag cannot read (`!!int abc`, `!!int ''`,
# `!!bool maybe`, `!!timestamp x`, `!!binary !!!`)
_UNREADABLE = (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError, KeyError, IndexError)
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t: word for t, word in (("str", "text"), ("int", "an integer"), ("float", "a number"),
                                               ("bool", "true or false"), ("null", "null"),
                                               ("timestamp", "a date"), ("binary", "base64 data"))}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 needs a dot: `1.0e-3`) and refuses
    nesting deeper than :data:`MAX_DEPTH` while composing (the composer recurses per level)."""

    depth = 0

    def compose_node(self, parent, index):  # noqa: D102 - PyYAML's hook
        if self.depth >= MAX_DEPTH:
            raise YamlProblem(self.peek_event().start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class YamlProblem(Exception):
    """Text that cannot become a recipe value: the line (None for a command-line value) and why."""

    def __init__(self, line: int | None, message: str, *, syntax: bool = False):
        super().__init__(message)
        self.line, self.message, self.syntax = line, message, syntax


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def syntax_problem(exc: yaml.YAMLError, text: str) -> YamlProblem:
    """A PyYAML error as (line, `not valid YAML (...)`), with its context when it has one."""
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow; no mark
        line = text.count("\n", 0, exc.position) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
        return YamlProblem(line, f"not valid YAML (the character {ascii(char)} is not allowed in YAML text)",
                           syntax=True)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        where = f" at line {cmark.line + 1}" if cmark is not None and cmark.line + 1 != line else ""
        problem = f"{problem}; {context}{where}"
    return YamlProblem(line, f"not valid YAML ({problem})", syntax=True)


class _Builder:
    """Nodes -> plain values, counting every value built and recording each key's line."""

    def __init__(self) -> None:
        self.constructor = _Loader("")  # only its scalar constructors are used
        self.lines: dict[tuple, int] = {}
        self.duplicates: dict[tuple, Problem] = {}  # (key, line, line): an aliased mapping reports once
        self.count = 0
        self.open: set[int] = set()  # ids of the collections being built (a cycle shows up here)

    def value(self, node: yaml.Node, path: tuple, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise YamlProblem(_line(node), f"the document expands to more than {MAX_VALUES:,} values (aliases "
                                           "count each time they are used); a recipe needs a few hundred")
        if depth > MAX_DEPTH:
            raise YamlProblem(_line(node), f"nested deeper than {MAX_DEPTH} levels (counting aliases)")
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if id(node) in self.open:
            raise YamlProblem(_line(node), "an anchor contains its own alias (a recursive structure); "
                                           "a recipe value must be finite")
        expected = _TAG + ("map" if isinstance(node, yaml.MappingNode) else "seq")
        if node.tag != expected:
            raise YamlProblem(_line(node), f"the tag {_short(node.tag)} is not supported in a recipe; "
                                           "remove it (plain mappings and lists need none)")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path, depth)
            return [self.value(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(id(node))

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == _TAG + "value":  # YAML 1.1's `=` (the "default value" key): no constructor, so text
            return node.value
        if node.tag not in _SCALAR_TAGS:
            raise YamlProblem(_line(node), f"unknown tag {_short(node.tag)} on `{shown(node.value, 40)}`; "
                                           "recipes use plain values (quote text: 'like this')")
        try:
            value = self.constructor.yaml_constructors[node.tag](self.constructor, node)
        except _UNREADABLE as exc:
            why = (getattr(exc, "problem", None) or (str(exc) if type(exc) is ValueError else "")).strip()
            why = "" if not why or why.startswith(("invalid literal", "could not convert")) else \
                f": {why.splitlines()[0]}"
            raise YamlProblem(_line(node), f"not valid YAML (cannot read `{shown(node.value, 40)}` as "
                                           f"{_SCALAR_TAGS[node.tag]}{why})") from exc
        if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            raise YamlProblem(_line(node), f"not valid YAML (the number `{shown(node.value, 40)}` is too large)")
        return value

    def key(self, node: yaml.Node) -> str:
        """The key as written; a list or mapping is not a key."""
        if not isinstance(node, yaml.ScalarNode):
            kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
            raise YamlProblem(_line(node), f"a key must be a name, not a {kind}")
        self.scalar(node)  # a tag it cannot read is still an error
        return node.value

    def mapping(self, node: yaml.MappingNode, path: tuple, depth: int) -> dict:
        merged = self.merged(node, path, depth)
        out: dict[str, Any] = {}
        written: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                continue
            key, line = self.key(key_node), _line(key_node)
            if key in written:
                self.duplicate(path + (key,), written[key], line)
            written[key] = line
            self.lines[path + (key,)] = line
            out[key] = self.value(value_node, path + (key,), depth + 1)
        return {**{k: v for k, v in merged.items() if k not in out}, **out}

    def merged(self, node: yaml.MappingNode, path: tuple, depth: int) -> dict:
        """The values of the node's `<<` keys (earlier mappings win), their lines recorded."""
        sources = []
        for key_node, value_node in node.value:
            if key_node.tag != _TAG + "merge":
                continue
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            if not all(isinstance(n, yaml.MappingNode) for n in items):
                raise YamlProblem(_line(key_node), "a merge key `<<` takes a mapping or a list of mappings, "
                                                   "e.g. `<<: *defaults`")
            sources += items
        out: dict[str, Any] = {}
        for source in reversed(sources):  # built last, an earlier mapping wins
            out.update(self.value(source, path, depth))
        return out

    def duplicate(self, path: tuple, first: int, second: int) -> None:
        name = path[-1]
        self.duplicates[(name, first, second)] = Problem(
            path, f"duplicate key: `{name}` is also written at line {first}, and YAML would silently keep only "
                  "the last one; write it once (merge the two into one)", f"line {second}")


def _short(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


def parse_document(text: str) -> tuple[Any, dict[tuple, int], list[Problem]]:
    """YAML text -> (value, {key path: line}, duplicate-key problems).

    Raises:
        YamlProblem: text that is not YAML, or YAML a recipe cannot hold (tags, bombs, cycles, depth).
    """
    try:
        loader = _Loader(text)  # the reader refuses characters YAML does not allow right here
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise syntax_problem(exc, text) from exc
    if node is None:
        return None, {}, []
    builder = _Builder()
    value = builder.value(node, (), 0)
    return value, builder.lines, list(builder.duplicates.values())


def parse_value(text: str) -> Any:
    """A command-line value as YAML (`3e-4`, `[64, 32]`, `off`); text YAML cannot parse is kept as
    the string itself (`a,b]`), but a tag it cannot read or a bomb is a problem.

    Raises:
        YamlProblem: with line None.
    """
    try:
        value, _, duplicates = parse_document(text)
    except YamlProblem as exc:
        if exc.syntax:
            return text
        raise YamlProblem(None, exc.message) from exc
    if duplicates:
        raise YamlProblem(None, duplicates[0].message)
    return value


def dump(data: Any) -> str:
    """YAML text of plain data (block style for mappings, flow style for short lists)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
