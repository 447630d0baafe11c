"""The one exception tree of dr-pipelines.

    DRError                      every error this project raises on purpose
    ├── ConfigError              bad input: flags, URLs, config file (CLI exit 2)
    ├── ConsentRequired          a destructive step without --confirm / approval (CLI exit 2)
    ├── TransientError           may succeed if tried again: storage or cluster unreachable,
    │                            timeouts, connection resets (Prefect tasks retry these)
    └── PermanentError           trying again will not help (CLI exit 1)
        ├── BackupNotFound       no backup matches the selection
        ├── IntegrityError       checksum/size mismatch, unreadable archive, bad manifest
        │   └── UnsupportedFormat    a manifest from a newer version (intact, not readable here)
        ├── VerificationFailed   a restored copy does not match its manifest
        └── CommandFailed        an external tool (pg_dump, pg_restore, ...) exited non-zero

SDK exceptions (botocore, psycopg, ...) are translated once, at the adapter edge that calls the
SDK, with ``raise ... from exc``. Messages are one line, say what is wrong and what to do, and never
contain a secret (URLs are redacted with ``dburl.redact`` before they reach a message).
"""

from __future__ import annotations

__all__ = [
    "BackupNotFound",
    "CommandFailed",
    "ConfigError",
    "ConsentRequired",
    "DRError",
    "IntegrityError",
    "PermanentError",
    "TransientError",
    "UnsupportedFormat",
    "VerificationFailed",
]


class DRError(Exception):
    """Base class: every error raised on purpose by dr-pipelines."""


class ConfigError(DRError):
    """The input (a flag, a URL, the config file) is wrong; nothing was changed."""


class ConsentRequired(DRError):
    """A destructive step was requested without explicit consent; nothing was changed."""


class TransientError(DRError):
    """A failure that may go away on retry (network, storage or cluster unavailable)."""


class PermanentError(DRError):
    """A failure that retrying will not fix."""


class BackupNotFound(PermanentError):
    """No backup matches the selection."""


class IntegrityError(PermanentError):
    """Stored data does not match what its manifest promises."""


class UnsupportedFormat(IntegrityError):
    """An intact manifest written by a newer version of dr-pipelines."""


class VerificationFailed(PermanentError):
    """A restored copy does not match the manifest (counts, checks)."""


class CommandFailed(PermanentError):
    """An external command exited non-zero."""
