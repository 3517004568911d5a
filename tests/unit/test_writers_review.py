"""Writers review: a write record's ``size`` is the object's size as S3 shows it (README's record
table: "what a write wrote, read from the bucket index").

radosgw's bucket index entry holds two sizes (``rgw_bucket_dir_entry_meta``): ``size``, what the
head and tail objects take in RADOS, and ``accounted_size``, the object's own length, the one
ListObjects answers as ``Size`` and HEAD as ``Content-Length``. They differ for an object of a
storage class with compression (``radosgw-admin zone placement add ... --compression=zlib``) and
for a Swift SLO manifest (``size`` 0; ``accounted_size`` the manifest's length, as listed). The
full sync takes its sizes from ListObjects, so a baseline record and a write record of the same
object disagree.

The entry below was captured on the Reef 18.2.7 lab (``rados getomapval`` of the index shard
object) after a PUT of 100,000 bytes of ``a`` with ``StorageClass=ZIPPED``, a class of the
default placement with ``compression_type`` zlib: HEAD and ListObjects say 100000, the entry's
``size`` is 116. tests/integration/test_writers_review_lab.py shows the SLO case on every
release.
"""

from __future__ import annotations

import base64

from rgw_module.bucket_index import decode_dir_entry
from rgw_module.mapping import BucketShard
from tests.unit.captured_index import bilog_write, captured_reader, replay_write

COMPRESSED_ENTRY = base64.b64decode(
    "CAPZAAAAAQAAAHoFAAAAAAAAAAEHA2QAAAABdAAAAAAAAACMpBZrTJ5QFSAAAAAxYWY2ZDZmMmY2ODJmNzZmODBlNjA2"
    "YWVhYWVlMTY4MAYAAAB0ZXN0ZXIGAAAAdGVzdGVyAAAAAKCGAQAAAAAAAAAAAAYAAABaSVBQRUQAAAAAAAAAAAABAQIA"
    "AAAHBQE+AAAANzBiMzcyYTItOTg5Mi00OTQzLTgxN2EtMmM0MDcxNDk0OTkyLjQzNjUuMTIyNDM1MTY5Njc4NDA1NjE1"
    "NjEAAAAAAAAAAAAAAAAAAA=="
)
WRITE = bilog_write("0#00000000001.64.6", "z", timestamp="2026-12-07T12:20:28.357604940Z", ver=(7, 5))
LENGTH = 100_000  # what was PUT; HEAD's Content-Length and ListObjects' Size
STORED = 116  # zlib's output for 100,000 equal bytes
ETAG = "1af6d6f2f682f76f80e606aeaaee1680"
BS = BucketShard("wr-zip-capture", "70b372a2-9892-4943-817a-2c4071494992.4367.2", 0)


def test_the_captured_entry_holds_the_stored_and_the_accounted_size() -> None:
    d = decode_dir_entry(COMPRESSED_ENTRY)
    assert (d.exists, d.etag, d.storage_class) == (True, ETAG, "ZIPPED")
    assert (d.size, d.accounted_size) == (STORED, LENGTH)


def test_a_compressed_objects_record_has_its_length_not_its_stored_size() -> None:
    _, m = replay_write(BS, captured_reader(BS, {b"z": COMPRESSED_ENTRY}), WRITE)
    assert (m.size, m.etag, m.storage_class) == (LENGTH, ETAG, "ZIPPED")
