"""The change-log record schema (docs/record.schema.json) as the tests use it: one compiled
validator, a check of one committed line, and the session-wide guard that validates every line
``encode_raw_many`` produces while the suites run (installed by tests/conftest.py).

jsonschema takes about 0.3 ms a record, and the suites emit some 60k lines: every line is checked,
but through a cache keyed by its *shape*, which decides validity under this schema exactly (see
``Shapes``), so jsonschema runs once per shape.

``encode_raw_many`` is the only producer of committed lines (``encode_raw`` and the collector's
pass and recovery all go through it), so guarding it covers every line an in-process test writes.
Lines written by child processes (the CLI's console script, the fault harness) are not seen.
"""

from __future__ import annotations

import bisect
import functools
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "record.schema.json"

EncodeMany = Callable[[Iterable[tuple[int, bytes]]], list[bytes]]
# logformat.encode_index_entries(entries, *, time_start, time_end) -> (times, lines)
EncodeEntries = Callable[..., tuple[list[int], list[bytes]]]


class InvalidRecord(AssertionError):
    """A change-log line the code produced that docs/record.schema.json refuses."""


@functools.cache
def schema() -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(SCHEMA_PATH.read_bytes())
    return doc


@functools.cache
def validator() -> Draft202012Validator:
    # No format checker: "format" stays an annotation (2020-12's default); the patterns are the
    # contract, and the shape cache relies on only them deciding.
    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema())


def problems(doc: object) -> list[str]:
    """Why ``doc`` is not a valid v1 record (empty: it is one)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(record)'}: {e.message}" for e in validator().iter_errors(doc)]


# Keywords whose outcome on a value depends only on what ``Shapes`` records of it. A schema using
# any other one is refused by ``Shapes`` (the cache would no longer be exact), not misjudged.
_SHAPE_KEYWORDS = frozenset(
    "$schema $id $defs $ref title description format type properties required additionalProperties "
    "allOf oneOf anyOf not if then else const enum pattern minLength maxLength minimum maximum "
    "minProperties".split()
)
_JSON_TYPE: dict[type, str] = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    dict: "object",
    list: "array",
}


@dataclass
class _Constraints:
    """What the schema tests of one property, gathered from everywhere it is named."""

    patterns: list[re.Pattern[str]] = field(default_factory=list)
    lengths: set[int] = field(default_factory=set)  # a string's length is compared to these
    bounds: set[int | float] = field(default_factory=set)  # a number is compared to these
    consts: list[object] = field(default_factory=list)  # a value is compared to these

    def add(self, sub: Mapping[str, Any], defs: Mapping[str, Any]) -> None:
        ref = sub.get("$ref")
        if isinstance(ref, str):
            self.add(defs[ref.removeprefix("#/$defs/")], defs)
        if "pattern" in sub:
            self.patterns.append(re.compile(sub["pattern"]))
        for key, shift in (("minLength", 0), ("maxLength", 1), ("minProperties", 0)):
            if key in sub:
                self.lengths.add(sub[key] + shift)
        for key in ("minimum", "maximum"):
            if key in sub:
                self.bounds.add(sub[key])
        if "const" in sub:
            self.consts.append(sub["const"])
        self.consts.extend(sub.get("enum", ()))
        if "not" in sub:
            self.add(sub["not"], defs)
        for key in ("oneOf", "anyOf", "allOf"):
            for part in sub.get(key, ()):
                self.add(part, defs)


    def frozen(self) -> _Field:
        strs = frozenset(k for k in self.consts if isinstance(k, str))
        nums = frozenset(k for k in self.consts if isinstance(k, int | float) and not isinstance(k, bool))
        return _Field(tuple(self.patterns), tuple(sorted(self.lengths)), tuple(sorted(self.bounds)), strs, nums)


def _kind(v: object) -> str:
    return _JSON_TYPE.get(type(v), "other")


@dataclass(frozen=True)
class _Field:
    """One field's constraints, ready to give a value's shape (see ``Shapes``)."""

    patterns: tuple[re.Pattern[str], ...]
    lengths: tuple[int, ...]
    bounds: tuple[int | float, ...]
    str_consts: frozenset[str]
    num_consts: frozenset[int | float]

    def shape(self, v: object) -> object:
        # bisect against the sorted bounds: how many a length or number reaches (>=) and passes
        # (>), which is every comparison minimum/maximum/minLength/maxLength can make.
        if isinstance(v, str):
            n = len(v)
            return (
                "string",
                tuple([p.search(v) is not None for p in self.patterns]),
                bisect.bisect_right(self.lengths, n),
                v if v in self.str_consts else None,
            )
        if isinstance(v, bool) or v is None:
            return v  # both bools and null are one value each: their own shape
        if isinstance(v, int | float):
            return (
                _kind(v),
                float(v).is_integer(),
                bisect.bisect_left(self.bounds, v),
                bisect.bisect_right(self.bounds, v),
                v if v in self.num_consts else None,
            )
        if isinstance(v, dict):
            return "object", bisect.bisect_right(self.lengths, len(v)), frozenset(map(_kind, v.values()))
        return _kind(v)


class Shapes:
    """Validity of records by shape. A record's shape is, per field in order: its JSON type,
    and for a string its match of every pattern the schema sets on that field, its length
    against every length bound, which const/enum value it equals; for a number whether it is
    integral, against every bound, which const it equals; for an object (metadata) its size
    against the bounds and the set of its values' types; a bool or null is its own shape. The schema's keywords (``_SHAPE_KEYWORDS``) look at nothing
    else, so two records of one shape are both valid or both not: jsonschema decides once per
    shape, and each line costs a few regex matches."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self._check_keywords(doc)
        defs: Mapping[str, Any] = doc.get("$defs", {})
        gathered: dict[str, _Constraints] = {}
        self._gather(doc, defs, gathered)
        self.fields = {name: c.frozen() for name, c in gathered.items()}
        self.valid: dict[tuple[object, ...], bool] = {}

    def _check_keywords(self, node: object) -> None:
        if isinstance(node, list):
            for item in node:
                self._check_keywords(item)
        if not isinstance(node, Mapping):
            return
        unknown = set(node) - _SHAPE_KEYWORDS
        if unknown:
            raise ValueError(f"record schema keyword(s) the shape cache does not handle: {sorted(unknown)}")
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for sub in value.values():
                    self._check_keywords(sub)
            elif key not in ("const", "enum", "required", "description", "title"):
                self._check_keywords(value)

    def _gather(self, node: object, defs: Mapping[str, Any], into: dict[str, _Constraints]) -> None:
        if isinstance(node, list):
            for item in node:
                self._gather(item, defs, into)
        if not isinstance(node, Mapping):
            return
        for name, sub in (node.get("properties") or {}).items():
            into.setdefault(name, _Constraints()).add(sub, defs)
        for key in ("allOf", "oneOf", "anyOf", "not", "if", "then", "else"):
            if key in node:
                self._gather(node[key], defs, into)

    def of(self, doc: Mapping[str, object]) -> tuple[object, ...]:
        fields = self.fields
        return tuple((name, fields[name].shape(v) if name in fields else _kind(v)) for name, v in doc.items())

    def is_valid(self, doc: Mapping[str, object]) -> bool:
        shape = self.of(doc)
        known = self.valid.get(shape)
        if known is None:
            known = self.valid[shape] = validator().is_valid(doc)
        return known


@functools.cache
def shapes() -> Shapes:
    return Shapes(schema())


def check_line(line: bytes) -> dict[str, Any]:
    """The record of one committed line (newline included), or ``InvalidRecord`` saying why not."""
    if not line.endswith(b"\n") or line.count(b"\n") != 1:
        raise InvalidRecord(f"a change-log line must end with its only newline: {line[:200]!r}")
    doc = orjson.loads(line)
    if not isinstance(doc, dict) or not shapes().is_valid(doc):
        found = "; ".join(problems(doc))
        raise InvalidRecord(f"record refused by {SCHEMA_PATH.name}: {found}: {line[:300]!r}")
    return doc


class Guard:
    """Wraps the producers of change-log lines (``encode_raw_many``, ``encode_index_entries``)
    wherever a module bound them, so that every line they return is validated; ``lines`` counts
    them (the session reports it, so a guard that sees nothing shows)."""

    def __init__(self, original: EncodeMany, original_entries: EncodeEntries) -> None:
        self.lines = 0
        self.seconds = 0.0  # spent validating (the guard's cost to the session)
        # What was refused, kept as well as raised: a caller that retries on any exception (a
        # collector pass) could swallow the raise, the per-test check cannot be swallowed.
        self.refused: list[str] = []

        @functools.wraps(original)
        def encode_raw_many(items: Iterable[tuple[int, bytes]]) -> list[bytes]:
            return self._checked(original(items))

        @functools.wraps(original_entries)
        def encode_index_entries(
            entries: Sequence[tuple[str, bytes]], *, time_start: int, time_end: int
        ) -> tuple[list[int], list[bytes]]:
            times, lines = original_entries(entries, time_start=time_start, time_end=time_end)
            return times, self._checked(lines)

        # name -> (the original, its wrapper)
        self.wrapped: dict[str, tuple[object, object]] = {
            "encode_raw_many": (original, encode_raw_many),
            "encode_index_entries": (original_entries, encode_index_entries),
        }

    def _checked(self, lines: list[bytes]) -> list[bytes]:
        started = time.perf_counter()
        for line in lines:
            try:
                check_line(line)
            except InvalidRecord as ex:
                self.refused.append(str(ex))
                raise
        self.lines += len(lines)
        self.seconds += time.perf_counter() - started
        return lines

    def _holders(self, name: str, fn: object) -> Iterator[Any]:
        # `from changelog.pipeline.logformat import encode_raw_many` binds the function in the
        # importing module at import time: every module already holding it must be patched too.
        for module in list(sys.modules.values()):
            if module is not None and getattr(module, name, None) is fn:
                yield module

    def install(self) -> None:
        for name, (original, wrapper) in self.wrapped.items():
            for module in self._holders(name, original):
                setattr(module, name, wrapper)

    def uninstall(self) -> None:
        for name, (original, wrapper) in self.wrapped.items():
            for module in self._holders(name, wrapper):
                setattr(module, name, original)
