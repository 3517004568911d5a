"""The packaged configuration (packaging/rgw-changelog.toml): as shipped it is valid, and so are the
commented example sections of the consumers and of scale-out once uncommented (an operator's
first edit must not be a config error)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from changelog.config import parse_config

PACKAGED = Path(__file__).resolve().parents[2] / "packaging" / "rgw-changelog.toml"
# A commented TOML line: a [section], a [[table]] or a key = value (prose never looks like that).
TOML_LINE = re.compile(r"^# (\[\[?[a-z_.]+\]\]?|[a-z_]+ = .*)$")


def test_the_packaged_config_is_valid_as_shipped() -> None:
    parse_config(tomllib.loads(PACKAGED.read_text()))


def test_the_commented_sections_are_valid_once_uncommented() -> None:
    lines, block = [], False
    for line in PACKAGED.read_text().splitlines():
        if line in ("# [replication]", "# [usage]", "# [lifecycle]", "# [scale]"):
            block = True
        elif not line.startswith("#"):
            block = False
        lines.append(TOML_LINE.sub(r"\1", line) if block and TOML_LINE.match(line) else line)
    doc = tomllib.loads("\n".join(lines))
    for section in ("replication", "usage", "lifecycle", "scale"):
        assert section in doc, section
    cfg = parse_config(doc, env={"DR_SECRET_KEY": "its secret"})
    assert cfg.lifecycle.enabled and cfg.lifecycle.rules[0].storage_class == "COLD"
    assert cfg.scale.partitioned and cfg.scale.follower_partitions == 8
    assert cfg.usage.enabled
    site = cfg.replication.sites[0]
    assert site.name == "dr" and site.bucket_map == {"photos": "photos-replica"} and not site.two_way
