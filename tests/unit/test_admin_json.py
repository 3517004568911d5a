"""The admin API's JSON bodies: orjson first, the standard parser for what orjson refuses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from changelog.errors import TransientError
from rgw_module.admin import AdminClient


class Canned(AdminClient):
    """An ``AdminClient`` whose every GET answers ``body``."""

    def __init__(self, body: bytes) -> None:
        super().__init__("http://127.0.0.1:9", "AK", "SK")
        self.body = body

    def request(self, method: str, path: str, params: Sequence[tuple[str, Any]], **_: Any) -> Any:
        return 200, {}, self.body


def test_a_bilog_page_parses_to_the_same_values() -> None:
    body = (
        b'[{"op_id":"1#00000000001.1.5","op":"write","object":"k\\u00e9 \\"q\\"","instance":"",'
        b'"ver":{"pool":6,"epoch":18446744073709551615},"timestamp":"2026-12-07T02:19:20.149463Z"}]'
    )
    page = Canned(body)._get_json("/admin/log", [])
    assert page == [
        {
            "op_id": "1#00000000001.1.5",
            "op": "write",
            "object": 'k\u00e9 "q"',
            "instance": "",
            "ver": {"pool": 6, "epoch": 2**64 - 1},
            "timestamp": "2026-12-07T02:19:20.149463Z",
        }
    ]


def test_what_orjson_refuses_still_parses_as_before() -> None:
    """A lone surrogate's escape (a name radosgw escaped from bytes that are not UTF-8) is
    refused by orjson and read by the standard parser, as before orjson."""
    assert Canned(b'[{"object":"a\\udcff"}]')._get_json("/admin/log", []) == [{"object": "a\udcff"}]


def test_an_empty_body_is_none_and_garbage_is_a_transient_error_naming_the_path() -> None:
    assert Canned(b"")._get_json("/admin/log", []) is None
    with pytest.raises(TransientError, match=r"GET /admin/log at .*unreadable JSON"):
        Canned(b"<html>busy</html>")._get_json("/admin/log", [])
