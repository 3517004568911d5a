"""Types of the C encoder and record path (changelog/_speedups.c), for mypy."""

from collections.abc import Sequence
from types import EllipsisType
from typing import Any, overload

from changelog.pipeline.mutation import Mutation

def encode_raw_many(
    items: list[tuple[int, bytes]] | tuple[tuple[int, bytes], ...], version: int, /
) -> list[bytes] | None: ...
def event_id(data: bytes, /) -> str: ...
def encode_entries(
    entries: Sequence[tuple[str, bytes]], time_start: int, time_end: int, version: int, /
) -> tuple[list[int], list[bytes]] | None: ...
class Records(Sequence[tuple[Mutation, bytes, str]]):
    """One shard's records of a batch (``prepare_records``), values and tails in buffers."""

    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, i: int, /) -> tuple[Mutation, bytes, str]: ...
    @overload
    def __getitem__(self, i: slice, /) -> Sequence[tuple[Mutation, bytes, str]]: ...

def prepare_records(
    batch: Sequence[Mutation], shards: int, mutation_type: type, /
) -> tuple[dict[int, Records], dict[int, dict[str, tuple[str, str]] | None]] | None: ...
def record_rows(t: int, pending: Sequence[tuple[Mutation, bytes, str]], /) -> list[str | bytes] | None: ...
def map_bilog_page(
    entries: list[Any],
    start: int,
    facts: dict[str, Any] | None,
    observed_ns: int,
    consts: tuple[str, str, str, str],
    ops: tuple[Any, Any, Any],
    mutation_type: type,
    /,
) -> list[Any] | None: ...
def dir_entry(data: bytes, /) -> tuple[Any, ...] | None | EllipsisType: ...
def index_lookups(page: list[Any], lookup_type: type, consts: tuple[bytes, str], /) -> list[Any] | None: ...
def omap_get_keys(
    functions: tuple[int, int, int, int, int, int], ioctx: int, oid: bytes, keys: list[bytes], /
) -> tuple[int, int, dict[bytes, bytes] | None]: ...
def fast_marks(
    pending: list[tuple[Mutation, bytes, str]],
    streams: dict[tuple[int, str], str | None],
    shard: int,
    mutation_type: type,
    /,
) -> tuple[dict[str, str | None], dict[str, str]] | None: ...
def write_op_send(
    functions: tuple[int, ...],
    ioctx: int,
    oid: bytes,
    create: int,
    fence: bytes | None,
    asserts: list[tuple[str, int, str]],
    remove: list[str],
    ranges: list[tuple[str, str]],
    sets: dict[str, bytes],
    records: tuple[int, list[tuple[Mutation, bytes, str]]] | None,
    /,
) -> tuple[int, Any] | None: ...
def write_op_wait(functions: tuple[int, ...], pending: Any, /) -> int: ...
def index_facts(
    wanted: list[Any], values: dict[bytes, bytes], consts: tuple[type, bytes, int], /
) -> dict[str, Any] | None: ...
def untrack_plain(objs: list[Any], record_type: type, op_type: type, /) -> int: ...
