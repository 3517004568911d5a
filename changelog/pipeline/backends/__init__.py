"""Implementations of ``changelog.pipeline.store.ObjectStore``: ``sqlite`` (embedded file) and ``rados``."""

from __future__ import annotations

from changelog.errors import PermanentError
from changelog.pipeline.store import Cmp, WriteOp

# The OSD implements only EQ, LT and GT for omap_cmp (NE, GTE and LTE answer EINVAL). LTE cannot
# be emulated exactly either ("< g + successor byte" needs a raw 0x80 byte, which the binding's
# str-only API cannot send). Both backends refuse them, so code tested on sqlite cannot use them.
UNSUPPORTED_CMP = frozenset({Cmp.NE, Cmp.GTE, Cmp.LTE})


def check_key(key: str) -> None:
    # RADOS truncates a key at its first NUL and cannot page to the empty key.
    if not key or "\x00" in key:
        raise PermanentError(f"invalid omap key {key!r}: keys must be non-empty and NUL-free")


def check_op(op: WriteOp) -> None:
    """Refuse, before anything is applied, what RADOS cannot do (see ``changelog.pipeline.store``)."""
    for key, cmp, _given in op.asserts:
        check_key(key)
        if cmp in UNSUPPORTED_CMP:
            raise PermanentError(f"omap assert {cmp.name} on {key!r}: RADOS supports EQ, LT and GT only")
    # The set of an index op holds ~1000 keys: check them at C speed, name the culprit if any.
    if op.set and ("" in op.set or "\x00" in "".join(op.set)):
        for key in op.set:
            check_key(key)
    if op.must_exist and op.create_exclusive:
        raise PermanentError("a write op cannot both require and exclusively create its object")
