"""The operator CLI, ``rgw-changelog``: the group and its error boundary (``base``), and one
module per area of commands: ``records`` (config check, record), ``shards``, ``pipeline``
(collect, flush, serve, pause, resume, status), ``logs`` (logs, zone), ``backup``,
``replicate`` and ``usage``.

The CLI is a process edge: it imports the pipeline, the consumers and the service; nothing
imports it.
"""

from __future__ import annotations

from changelog.cli import backup, lifecycle, logs, pipeline, records, replicate, shards, usage  # noqa: F401 - they register their commands
from changelog.cli.base import cli, main, setup_logging, teardown_logging
from changelog.times import TIME_HELP, fmt_age, fmt_time, parse_time

__all__ = ["TIME_HELP", "cli", "fmt_age", "fmt_time", "main", "parse_time", "setup_logging", "teardown_logging"]
