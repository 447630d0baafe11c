"""``dr``, the console script: for ``dr redis backup`` the snapshot starts before the rest of dr
is imported, then flows/cli.py runs the command as always.

Importing typer, rich, pydantic and redis-py takes 0.3 s, a third of what a server with a million
keys needs to fork and stream its RDB; started first, the server works while Python imports.
``snapshot()`` takes the transfer over when it is for the same URL; a command that ends without
it (bad input, an unwritable backup dir) closes it. Nothing here prints: a URL that cannot be
read or a server that cannot be reached is left to the command, which says why as it always did.
This module imports the standard library and redis_sync only (tests/flows/test_entry.py).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Mapping, Sequence

from tasks.core.engines import redis_sync


def main() -> None:
    url = redis_backup_url(sys.argv[1:], os.environ)
    if url:
        redis_sync.start_early(url)
    try:
        from flows.cli import main as run_command

        run_command()
    finally:
        redis_sync.discard_early()
        # the exit then skips the last garbage collection: 0.1 s over everything imported;
        # nothing of dr relies on it (files are closed, clean-ups are atexit hooks, which run)
        gc.freeze()


def redis_backup_url(args: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The URL ``dr redis backup`` will snapshot, when the command line and the environment
    say it (``--redis-url``, the last one as for the parser, else $REDIS_URL); None for other
    commands, ``--help``, or a URL that only the config gives."""
    if list(args[:2]) != ["redis", "backup"] or "--help" in args:
        return None
    url = None
    rest = list(args[2:])
    for i, arg in enumerate(rest):
        if arg == "--":
            break
        if arg == "--redis-url":
            url = rest[i + 1] if i + 1 < len(rest) else ""
        elif arg.startswith("--redis-url="):
            url = arg.partition("=")[2]
    return (env.get("REDIS_URL") if url is None else url) or None
