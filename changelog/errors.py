"""The project's error hierarchy: every failure is transient (retry with capped backoff),
permanent (stop and say why) or a lost lease (stop writing now)."""

from __future__ import annotations


class ChangelogError(Exception):
    """Base of every error this project raises on purpose."""


class TransientError(ChangelogError):
    """A failure that may pass: network, timeout, 5xx, a busy OSD. Retry with capped backoff."""


class PermanentError(ChangelogError):
    """A failure that will not pass by retrying: bad config, bad input, access denied."""


class ConfigError(PermanentError):
    """The configuration is invalid; the message names the key."""


class InvalidMutation(PermanentError):
    """A mutation that cannot be recorded faithfully (e.g. an unencodable key)."""


class LeaseLost(ChangelogError):
    """This process no longer holds a lease it relied on: stop writing now."""


class LockBusy(TransientError):
    """Another holder has the lock; try again later."""


class CompareFailed(ChangelogError):
    """A guarded write's omap comparison failed (ECANCELED); nothing was written."""


class ObjectMissing(ChangelogError):
    """The object addressed does not exist."""


def one_line(text: str) -> str:
    """An error message as the CLI and the status document print it: one line, never empty."""
    return " ".join(str(text).split()) or "(no message)"
