"""PostgreSQL logical backups: ``pg_dump -Fc`` streamed, exact counts, roles, safe restore.

Backup: one REPEATABLE READ transaction exports its snapshot; ``pg_dump --snapshot`` dumps exactly
that snapshot while the same transaction counts every table, so the manifest's counts are the
counts of the data in the archive. ``-Z0``: compression is zstd in our process (measured faster
than pg_dump's zlib, docs/benchmarks.md).

Restore (safety rule 1): the archive is restored into a new side database, verified against the
manifest, and only then swapped in with two renames in one transaction. Until the swap the
current database is untouched; after it the previous one is kept unless asked to drop it.
Passwords reach pg_dump/pg_restore only through the environment (``PGPASSWORD``).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import hashlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from tasks.core.dburl import DatabaseURL, redact
from tasks.core.errors import (
    CommandFailed,
    ConfigError,
    PermanentError,
    TransientError,
)
from tasks.core.manifest import DatabaseProperties, Manifest, Role
from tasks.core.pipeline import prefetch
from tasks.core.storage import CHUNK

__all__ = ["DumpInfo", "PostgresEngine", "count_rows", "pg_errors"]

MAINTENANCE_DB = "postgres"
_SAFE_IDENT_MAX = 63
PIPE_SIZE = 1 << 20  # what an unprivileged process may ask for (/proc/sys/fs/pipe-max-size)
# Settings stored as a list of double-quoted elements (pg_dump's variable_is_guc_list_quote):
# given back as one literal they would become a single element named like the whole list.
_GUC_LIST_QUOTE = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)


@contextlib.contextmanager
def pg_errors(what: str) -> Iterator[None]:
    """Translate psycopg exceptions into the project's tree (the one place that does)."""
    try:
        yield
    except psycopg.OperationalError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        msg = redact(lines[0] if lines else repr(exc))  # the cause; libpq's hints follow it
        if "password authentication failed" in msg or "does not exist" in msg:
            raise ConfigError(f"cannot {what}: {msg}") from exc
        raise TransientError(f"cannot {what}: {msg}") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"cannot {what}: {redact(str(exc).splitlines()[0])} (the user needs "
            "the privileges listed in docs/cli.md)"
        ) from exc
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PermanentError(f"cannot {what}: {redact(first)}") from exc


@dataclass(frozen=True)
class DumpInfo:
    """What a dump learned about the source, for the manifest."""

    server_version: str
    dump_tool: str
    consistent_at: datetime  # the snapshot's time on the server: the recovery point
    counts: dict[str, int]
    large_objects: int
    roles: tuple[Role, ...]
    properties: DatabaseProperties


# Every role an object of the current database references: owners, grantees, policy roles,
# default privileges; then, transitively, the roles those are members of.
# Every role an object of the current database references: owners, grantees, policy roles,
# default privileges; then, transitively, the roles those are members of. Built-in objects
# (OID below FirstNormalObjectId, 16384) are skipped, as pg_dump skips them, so that the
# bootstrap superuser is captured only when a user object really references it.
_ROLES_SQL = """
WITH RECURSIVE refs(oid) AS (
    SELECT datdba FROM pg_database WHERE datname = current_database()
    UNION SELECT (aclexplode(datacl)).grantee FROM pg_database
          WHERE datname = current_database() AND datacl IS NOT NULL
    UNION SELECT nspowner FROM pg_namespace WHERE oid >= 16384
    UNION SELECT (aclexplode(nspacl)).grantee FROM pg_namespace WHERE nspacl IS NOT NULL
          AND nspname NOT IN ('pg_catalog', 'information_schema')
    UNION SELECT relowner FROM pg_class WHERE oid >= 16384
    UNION SELECT (aclexplode(relacl)).grantee FROM pg_class
          WHERE relacl IS NOT NULL AND oid >= 16384
    UNION SELECT (aclexplode(attacl)).grantee FROM pg_attribute
          WHERE attacl IS NOT NULL AND attrelid >= 16384
    UNION SELECT proowner FROM pg_proc WHERE oid >= 16384
    UNION SELECT (aclexplode(proacl)).grantee FROM pg_proc
          WHERE proacl IS NOT NULL AND oid >= 16384
    UNION SELECT typowner FROM pg_type WHERE oid >= 16384
    UNION SELECT (aclexplode(typacl)).grantee FROM pg_type
          WHERE typacl IS NOT NULL AND oid >= 16384
    UNION SELECT lomowner FROM pg_largeobject_metadata
    UNION SELECT (aclexplode(lomacl)).grantee FROM pg_largeobject_metadata
          WHERE lomacl IS NOT NULL
    UNION SELECT unnest(polroles) FROM pg_policy
    UNION SELECT defaclrole FROM pg_default_acl
    UNION SELECT (aclexplode(defaclacl)).grantee FROM pg_default_acl
    UNION SELECT extowner FROM pg_extension WHERE oid >= 16384
    UNION SELECT collowner FROM pg_collation WHERE oid >= 16384
    UNION SELECT oprowner FROM pg_operator WHERE oid >= 16384
    UNION SELECT opcowner FROM pg_opclass WHERE oid >= 16384
    UNION SELECT opfowner FROM pg_opfamily WHERE oid >= 16384
    UNION SELECT conowner FROM pg_conversion WHERE oid >= 16384
    UNION SELECT stxowner FROM pg_statistic_ext
    UNION SELECT evtowner FROM pg_event_trigger
    UNION SELECT fdwowner FROM pg_foreign_data_wrapper
    UNION SELECT srvowner FROM pg_foreign_server
    UNION SELECT pubowner FROM pg_publication
), closure(oid) AS (
    SELECT oid FROM refs WHERE oid <> 0
    UNION SELECT m.roleid FROM pg_auth_members m JOIN closure c ON m.member = c.oid
)
SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
       r.rolreplication, r.rolbypassrls, r.rolconnlimit,
       coalesce((SELECT array_agg(g.rolname || ':' || m.admin_option ORDER BY g.rolname)
                 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                 WHERE m.member = r.oid AND g.rolname NOT LIKE 'pg\\_%'), '{}')
FROM pg_roles r JOIN closure c ON c.oid = r.oid
WHERE r.rolname NOT LIKE 'pg\\_%'
ORDER BY r.rolname
"""

_TABLES_SQL = """
SELECT format('%I.%I', n.nspname, c.relname), n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1
"""

_PROPS_SQL = """
SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                 WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}'),
       CASE WHEN d.datacl IS NULL THEN NULL ELSE
         (SELECT coalesce(array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                          ELSE pg_get_userbyid(a.grantee) END
                                     || ':' || a.privilege_type), '{}')
          FROM aclexplode(d.datacl) a) END
FROM pg_database d WHERE d.datname = current_database()
"""


def _count_query(tables: list[str]) -> sql.Composed:
    # tables are already quoted by format('%I.%I'); ONLY: partitions are counted as themselves
    parts = [sql.SQL("(SELECT count(*) FROM ONLY {})").format(sql.SQL(t)) for t in tables]
    return sql.SQL("SELECT ") + sql.SQL(", ").join(parts)


def count_rows(conn: psycopg.Connection[Any], tables: list[str] | None = None) -> dict[str, int]:
    """Exact row count of every user table (or of ``tables``) as this connection sees them."""
    cur = conn.cursor(row_factory=tuple_row)
    # JIT would compile the count of every big table first: ~60 ms per restore for nothing
    cur.execute("SET jit = off")
    if tables is None:
        tables = [r[0] for r in cur.execute(_TABLES_SQL).fetchall()]
    counts: dict[str, int] = {}
    for i in range(0, len(tables), 200):
        batch = tables[i : i + 200]
        row = cur.execute(_count_query(batch)).fetchone()
        assert row is not None
        counts.update(zip(batch, (int(n) for n in row), strict=True))
    return counts


def widen_pipe(fd: int) -> None:
    """Let the writer of a pipe get 1 MiB ahead of its reader instead of 64 KiB (Linux; best
    effort)."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setsize, PIPE_SIZE)


def _tool_version(tool: str) -> str:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or tool


def _ident_with_suffix(name: str, suffix: str) -> str:
    """``name + suffix`` cut to PostgreSQL's 63-byte identifier limit (suffix kept whole)."""
    room = _SAFE_IDENT_MAX - len(suffix.encode())
    raw = name.encode()[:room].decode(errors="ignore")
    return raw + suffix


SECTIONS = ("pre-data", "data", "post-data")


class PostgresEngine:
    """Backup and restore of one PostgreSQL database given by ``url``."""

    def __init__(self, url: DatabaseURL) -> None:
        if url.engine != "postgresql":
            raise ConfigError(f"not a PostgreSQL URL: {url}")
        self.url = url

    # ---- connections -------------------------------------------------------------------------

    def connect(
        self, dbname: str | None = None, *, autocommit: bool = True, what: str = ""
    ) -> psycopg.Connection[Any]:
        """A connection to ``dbname`` (default: the URL's); ``what`` names the purpose for the
        error message ("cannot connect to <url> to <what>: ...")."""
        target = self.url if dbname is None else self.url.with_dbname(dbname)
        with pg_errors(f"connect to {target}" + (f" to {what}" if what else "")):
            return psycopg.connect(
                target.conninfo,
                autocommit=autocommit,
                connect_timeout=15,
                application_name="dr-pipelines",
            )

    def child_env(self, dbname: str | None = None) -> dict[str, str]:
        target = self.url if dbname is None else self.url.with_dbname(dbname)
        return {**os.environ, **target.libpq_env()}

    # ---- backup ------------------------------------------------------------------------------

    def dump(
        self, write: Callable[[bytes], None], progress: Callable[[int], None] | None = None
    ) -> DumpInfo:
        """Stream a ``pg_dump -Fc -Z0`` archive of the database to ``write``."""
        conn = self.connect(autocommit=False, what="take a snapshot")
        try:
            with pg_errors(f"read the catalog of {self.url}"):
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                conn.execute("SET row_security = off")  # error rather than count filtered rows
                cur = conn.cursor(row_factory=tuple_row)
                snapshot_row = cur.execute(
                    "SELECT pg_export_snapshot(), current_setting('server_version'), now()"
                ).fetchone()
                assert snapshot_row is not None
                snapshot, server_version, consistent_at = snapshot_row
                roles = tuple(_role_from_row(r) for r in cur.execute(_ROLES_SQL).fetchall())
                properties = _properties(cur.execute(_PROPS_SQL).fetchone())
                tables = [r[0] for r in cur.execute(_TABLES_SQL).fetchall()]

            counted: dict[str, Any] = {}

            def count() -> None:
                try:
                    with pg_errors(f"count rows in {self.url}"):
                        counted["counts"] = count_rows(conn, tables)
                        row = conn.execute(
                            "SELECT count(*) FROM pg_largeobject_metadata"
                        ).fetchone()
                        counted["large_objects"] = int(row[0]) if row else 0
                except BaseException as exc:  # re-raised in the calling thread below
                    counted["error"] = exc

            counter = threading.Thread(target=count, name="dr-count-rows", daemon=True)
            args = [
                "pg_dump",
                "--format=custom",
                "--compress=0",
                f"--snapshot={snapshot}",
                "--no-password",
            ]
            try:
                self._run_streaming(args, write, progress, after_start=counter.start)
            except CommandFailed as exc:
                # a failed count aborts the snapshot's transaction, and pg_dump then fails on
                # the snapshot: the count's error is the one that says what went wrong
                if counter.is_alive() or counter.ident is not None:
                    counter.join()
                if "error" in counted:
                    raise counted["error"] from exc
                raise
            counter.join()
            if "error" in counted:
                raise counted["error"]
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.close()  # ends the snapshot transaction
        return DumpInfo(
            server_version=server_version,
            dump_tool=_tool_version("pg_dump"),
            consistent_at=consistent_at.astimezone(UTC),
            counts=counted["counts"],
            large_objects=counted["large_objects"],
            roles=roles,
            properties=properties,
        )

    def _run_streaming(
        self,
        args: list[str],
        write: Callable[[bytes], None],
        progress: Callable[[int], None] | None,
        after_start: Callable[[], None],
    ) -> None:
        with tempfile.TemporaryFile() as errf:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errf, env=self.child_env())
            assert proc.stdout is not None
            widen_pipe(proc.stdout.fileno())
            # the pipe is read on its own thread: pg_dump goes on writing while this thread
            # compresses, hashes and stores the chunks before (tasks/core/pipeline.py)
            chunks = prefetch(iter(functools.partial(proc.stdout.read, CHUNK), b""))
            try:
                after_start()
                for chunk in chunks:
                    write(chunk)
                    if progress:
                        progress(len(chunk))
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                chunks.close()  # after a kill the reader sees the end of the pipe at once
                proc.stdout.close()
            if proc.wait() != 0:
                errf.seek(0)
                raise CommandFailed(
                    f"{args[0]} failed (exit {proc.returncode}): {_last_line(errf.read())}"
                )

    # ---- restore -----------------------------------------------------------------------------

    def ensure_roles(self, roles: tuple[Role, ...]) -> list[str]:
        """Create the roles the backup references that the target cluster lacks, with their
        attributes and memberships but no password (set one with ALTER ROLE, or let the
        security-breach scenario rotate it). All or nothing, in one transaction. Roles that
        already exist are never altered, memberships included. Returns the names created."""
        created: list[str] = []
        with (
            self.connect(MAINTENANCE_DB, autocommit=False, what="create roles") as conn,
            pg_errors("create the backup's roles"),
        ):
            existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
            missing = [role for role in roles if role.name not in existing]
            for role in missing:
                opts = [
                    ("SUPERUSER" if role.superuser else "NOSUPERUSER"),
                    ("INHERIT" if role.inherit else "NOINHERIT"),
                    ("CREATEROLE" if role.createrole else "NOCREATEROLE"),
                    ("CREATEDB" if role.createdb else "NOCREATEDB"),
                    ("LOGIN" if role.login else "NOLOGIN"),
                    ("REPLICATION" if role.replication else "NOREPLICATION"),
                    ("BYPASSRLS" if role.bypassrls else "NOBYPASSRLS"),
                ]
                conn.execute(
                    sql.SQL("CREATE ROLE {} WITH {} CONNECTION LIMIT {}").format(
                        sql.Identifier(role.name),
                        sql.SQL(" ".join(opts)),
                        sql.Literal(role.connection_limit),
                    )
                )
                created.append(role.name)
            for role in missing:
                for group, admin in role.member_of:
                    conn.execute(
                        sql.SQL("GRANT {} TO {}{}").format(
                            sql.Identifier(group),
                            sql.Identifier(role.name),
                            sql.SQL(" WITH ADMIN OPTION" if admin else ""),
                        )
                    )
            conn.commit()
        return created

    def drop_roles(self, names: list[str]) -> None:
        """Undo ``ensure_roles`` after a failed restore (roles still owning something stay)."""
        if not names:
            return
        with self.connect(MAINTENANCE_DB, what="drop roles") as conn:
            for name in reversed(names):
                with contextlib.suppress(psycopg.Error):
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    def database_exists(self, name: str) -> bool:
        with (
            self.connect(MAINTENANCE_DB, what="look up databases") as conn,
            pg_errors("look up databases"),
        ):
            return (
                conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
                is not None
            )

    @contextlib.contextmanager
    def restore_lock(self) -> Iterator[None]:
        """Hold the restore lock of the target database for the block: a session-level
        advisory lock on the target cluster, keyed by the database name. A second restore of
        the same database raises PermanentError at once, having changed nothing; the lock goes
        with the session, so a crashed restore never leaves it behind."""
        name = self.url.dbname
        conn = self.connect(MAINTENANCE_DB, what="lock the restore target")
        try:
            with pg_errors(f"lock the restore of {name}"):
                key = _restore_lock_key(name)
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                holder = None
                if not (row and row[0]):
                    holder = conn.execute(
                        "SELECT a.pid, a.client_addr, a.backend_start FROM pg_locks l "
                        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                        "AND l.granted AND l.database = (SELECT oid FROM pg_database "
                        "WHERE datname = current_database()) "
                        "AND (l.classid::bigint << 32 | l.objid::bigint) = %s",
                        (key,),
                    ).fetchone()
            if not (row and row[0]):
                who = (
                    f"session {holder[0]} from {holder[1] or 'local socket'} since "
                    f"{holder[2].astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
                    if holder
                    else "by another session"
                )
                raise PermanentError(
                    f"another restore of database {name} is running ({who}): nothing was "
                    "changed; wait for it to finish, then check the result before restoring again"
                )
            yield
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.close()  # releases the lock

    def side_name(self, backup_id: str) -> str:
        return _ident_with_suffix(self.url.dbname, f"_restore_{backup_id.rsplit('-', 1)[-1]}")

    def kept_name(self, backup_id: str) -> str:
        return _ident_with_suffix(self.url.dbname, f"_pre_restore_{backup_id.rsplit('-', 1)[-1]}")

    def create_side(self, name: str, props: DatabaseProperties | None) -> None:
        """Create the empty side database with the source database's properties (its
        settings come after the restore: ``apply_settings``)."""
        with (
            self.connect(MAINTENANCE_DB, what="create a database") as conn,
            pg_errors(f"create side database {name}"),
        ):
            _terminate(conn, name)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            if props is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
                )
                return
            conn.execute(
                sql.SQL(
                    "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {} "
                    "OWNER {}"
                ).format(
                    sql.Identifier(name),
                    sql.Literal(props.encoding),
                    sql.Literal(props.collate),
                    sql.Literal(props.ctype),
                    sql.Identifier(props.owner),
                )
            )
            if props.privileges is not None:
                conn.execute(
                    sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
                )
                for grantee, priv in props.privileges:
                    who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
                    conn.execute(
                        sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                            sql.SQL(priv), sql.Identifier(name), who
                        )
                    )

    def apply_settings(self, name: str, props: DatabaseProperties | None) -> None:
        """The source database's ``ALTER DATABASE ... SET`` settings, applied once the data is
        in and verified: earlier, a setting such as ``default_transaction_read_only`` or
        ``statement_timeout`` would stop pg_restore or the verification."""
        if props is None or not props.settings:
            return
        with (
            self.connect(MAINTENANCE_DB, what="configure a database") as conn,
            pg_errors(f"apply the settings of database {name}"),
        ):
            for setting in props.settings:
                key, _, value = setting.partition("=")
                conn.execute(
                    sql.SQL("ALTER DATABASE {} SET {} TO {}").format(
                        sql.Identifier(name), sql.Identifier(key), _setting_value(key, value)
                    )
                )

    def pg_restore(self, archive: Path, dbname: str, jobs: int) -> None:
        """``pg_restore -j jobs`` of a custom-format archive into ``dbname``; stops at the first
        error (a partial restore is never called a success).

        In a parallel run a trigger on a partitioned table waits only for the parent (which has
        no data), so it can be created, and fire, while partitions are still being loaded. A
        superuser restores in one run with ``session_replication_role = replica`` (ordinary
        triggers do not fire, as in pg_dump's --disable-triggers); anyone else restores one
        section at a time, which costs the overlap of loading with index builds."""
        env = self.restore_env(dbname)
        runs = (None,) if "session_replication_role" in env.get("PGOPTIONS", "") else SECTIONS
        for section in runs:
            self.run_pg_restore(
                dbname, env, [f"--jobs={max(jobs, 1)}", str(archive)], section=section
            )

    def restore_env(self, dbname: str) -> dict[str, str]:
        """The environment of every pg_restore into ``dbname`` (see ``pg_restore``)."""
        env = self.child_env(dbname)
        if self._is_superuser():
            env["PGOPTIONS"] = env.get("PGOPTIONS", "") + " -c session_replication_role=replica"
        return env

    @staticmethod
    def run_pg_restore(
        dbname: str,
        env: dict[str, str],
        args: list[str],
        *,
        section: str | None = None,
        what: str | None = None,
        stdin: bytes | None = None,
    ) -> None:
        """One ``pg_restore --exit-on-error`` into ``dbname`` (the archive in ``args``, or
        ``stdin``); a non-zero exit raises CommandFailed naming ``section`` or ``what``."""
        cmd = pg_restore_command(dbname)
        if section:
            cmd.append(f"--section={section}")
        proc = subprocess.run([*cmd, *args], input=stdin, capture_output=True, env=env, check=False)
        if proc.returncode != 0:
            raise tool_failed("pg_restore", dbname, section or what, proc.returncode, proc.stderr)

    def _is_superuser(self) -> bool:
        with (
            self.connect(MAINTENANCE_DB, what="check privileges") as conn,
            pg_errors("check privileges"),
        ):
            row = conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
        return bool(row and row[0])

    @staticmethod
    def list_archive(chunks: Iterator[bytes]) -> int:
        """Feed an archive to ``pg_restore --list``; returns how many TOC entries it read."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                ["pg_restore", "--list"], stdin=subprocess.PIPE, stdout=out, stderr=err
            )
            stdin = proc.stdin
            assert stdin is not None
            reading = True
            try:
                for chunk in chunks:  # consumed to the end: the sha256 verdict comes last
                    if reading:
                        try:
                            stdin.write(chunk)
                        except BrokenPipeError:
                            reading = False  # pg_restore has read the TOC and left
            finally:
                with contextlib.suppress(BrokenPipeError, OSError):
                    stdin.close()
                proc.wait()
            if proc.returncode != 0:
                err.seek(0)
                raise CommandFailed(
                    f"pg_restore --list cannot read the archive: {_last_line(err.read())}"
                )
            out.seek(0)
            return sum(1 for line in out if line and not line.startswith(b";"))

    def verify_side(
        self, name: str, manifest: Manifest, copied: Mapping[tuple[str, str], int] | None = None
    ) -> dict[str, tuple[int, int | None, bool]]:
        """Count every table of the manifest in ``name``: table -> (expected, actual or None,
        whether ``actual`` is the row count the server reported for the ``COPY`` that loaded
        the table, given by (schema, name) in ``copied``, instead of a ``count(*)``)."""
        copied = copied or {}
        with self.connect(name, what="verify it") as conn, pg_errors(f"verify {name}"):
            conn.execute("SET row_security = off")
            cur = conn.cursor(row_factory=tuple_row)
            tables = cur.execute(_TABLES_SQL).fetchall()
            by_copy = {t: copied[(ns, rel)] for t, ns, rel in tables if (ns, rel) in copied}
            actual = count_rows(conn, [t for t, _, _ in tables if t not in by_copy])
            actual.update(by_copy)
            row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
            lobs = int(row[0]) if row else 0
        result: dict[str, tuple[int, int | None, bool]] = {
            t: (n, actual.get(t), t in by_copy) for t, n in manifest.counts.items()
        }
        for extra in sorted(set(actual) - set(manifest.counts)):
            result[extra] = (0, actual[extra], extra in by_copy)
        result["(large objects)"] = (manifest.large_objects, lobs, False)
        return result

    def drop_database(self, name: str) -> None:
        with (
            self.connect(MAINTENANCE_DB, what="drop a database") as conn,
            pg_errors(f"drop database {name}"),
        ):
            _terminate(conn, name)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))

    def switch(self, side: str, keep_as: str | None) -> None:
        """Make ``side`` the database named like the target, in one transaction.

        The current database (if any) is renamed to ``keep_as``; other sessions on both are
        terminated first; if some keep coming back, new connections to the current one are
        refused for the next attempts (and allowed again at the end, whatever happens)."""
        target = self.url.dbname
        with (
            self.connect(MAINTENANCE_DB, what="switch databases") as conn,
            pg_errors(f"switch {side} into place as {target}"),
        ):
            exists = (
                conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
                is not None
            )
            if exists and keep_as is None:
                raise ConfigError(
                    "internal: switching over an existing database needs a name to keep it under"
                )
            switched = closed = False
            try:
                for attempt in range(10):
                    if attempt and exists and not closed:
                        # sessions slip in between terminate and rename: refuse new ones. Not
                        # before: committed, it would outlive a crash of this process/server
                        conn.execute(
                            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                                sql.Identifier(target)
                            )
                        )
                        closed = True
                    _terminate(conn, target)
                    _terminate(conn, side)
                    try:
                        self._rename_in_one_transaction(
                            conn, side, target, keep_as if exists else None, closed
                        )
                        switched = True
                        break
                    except psycopg.errors.ObjectInUse:  # a session slipped in: try again
                        time.sleep(0.2 * (attempt + 1))
            finally:
                if closed and not conn.broken:
                    # also on failure: the current database must not stay closed to everyone;
                    # the kept copy stays connectable for inspection (or for switching back)
                    kept = keep_as if switched and keep_as else target
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                            sql.Identifier(kept)
                        )
                    )
            if not switched:
                raise TransientError(
                    f"cannot switch {side} into place: sessions keep "
                    f"reconnecting to {target}; stop the application first"
                )

    def _rename_in_one_transaction(
        self,
        conn: psycopg.Connection[Any],
        side: str,
        target: str,
        keep_as: str | None,
        closed: bool,
    ) -> None:
        """The switch itself: both renames commit together or not at all. If the server goes
        away meanwhile, the error says which database is live (before COMMIT was sent: the
        previous one, for sure; during COMMIT: the side copy's name tells)."""
        exists = keep_as is not None
        committing = False
        try:
            with conn.transaction():
                if exists:
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(target), sql.Identifier(keep_as or "")
                        )
                    )
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(side), sql.Identifier(target)
                    )
                )
                committing = True
        except psycopg.OperationalError as exc:
            if not conn.broken:
                raise
            cause = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
            live = f"the previous {target} is live" if exists else f"{target} does not exist yet"
            reopen = (
                f"; connections to {target} were turned off for the switch: turn them on with "
                f"ALTER DATABASE {target} WITH ALLOW_CONNECTIONS true"
                if closed
                else ""
            )
            if committing:
                raise PermanentError(
                    f"the connection to the server was lost while committing the switch-over "
                    f"({cause}): if database {side} still exists, the switch did not happen and "
                    f"{live}; if it does not, the restored copy is live as {target}"
                    + (f" and the previous database is {keep_as}" if exists else "")
                    + reopen
                ) from exc
            raise PermanentError(
                f"the connection to the server was lost during the switch-over, before it "
                f"committed ({cause}): nothing was renamed, {live}; the verified "
                f"restored copy is {side} (run the restore again once the server is back)" + reopen
            ) from exc


def _setting_value(key: str, value: str) -> sql.Composable:
    """The SQL for a value as pg_db_role_setting stores it (``"$user", public`` for a list)."""
    if key.lower() not in _GUC_LIST_QUOTE:
        return sql.Literal(value)
    # elements are separated by ", " and double-quoted with "" escapes: CSV with those rules
    elements = next(csv.reader([value], skipinitialspace=True))
    return sql.SQL(", ").join(sql.Literal(e) for e in elements)


def _restore_lock_key(dbname: str) -> int:
    """A stable signed 64-bit advisory lock key for restores of ``dbname``."""
    digest = hashlib.sha256(f"dr-pipelines restore {dbname}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _terminate(conn: psycopg.Connection[Any], dbname: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (dbname,),
    )


def _role_from_row(r: tuple[Any, ...]) -> Role:
    member_of = tuple((g.rsplit(":", 1)[0], g.rsplit(":", 1)[1] == "true") for g in r[9])
    return Role(
        name=r[0],
        superuser=r[1],
        inherit=r[2],
        createrole=r[3],
        createdb=r[4],
        login=r[5],
        replication=r[6],
        bypassrls=r[7],
        connection_limit=r[8],
        member_of=member_of,
    )


def _properties(r: tuple[Any, ...] | None) -> DatabaseProperties:
    assert r is not None, "current database missing from pg_database"
    privileges = (
        None if r[5] is None else tuple((p.rsplit(":", 1)[0], p.rsplit(":", 1)[1]) for p in r[5])
    )
    return DatabaseProperties(
        owner=r[0],
        encoding=r[1],
        collate=r[2],
        ctype=r[3],
        settings=tuple(r[4]),
        privileges=privileges,
    )


def pg_restore_command(dbname: str) -> list[str]:
    """``pg_restore`` into ``dbname``, stopping at the first error, never asking for a password."""
    return ["pg_restore", "--exit-on-error", "--no-password", f"--dbname={dbname}"]


def psql_command(dbname: str) -> list[str]:
    """``psql`` running a script into ``dbname``: no ~/.psqlrc, stop at the first error, never
    ask for a password; it prints each command's tag (``COPY 5000000``) on stdout."""
    return ["psql", "--no-psqlrc", "--no-password", "--set=ON_ERROR_STOP=1", f"--dbname={dbname}"]


def tool_failed(
    tool: str, dbname: str, what: str | None, code: int, stderr: bytes
) -> CommandFailed:
    """``pg_restore (data of public.t) into db failed (exit 1): <its error line>``."""
    where = f" ({what})" if what else ""
    return CommandFailed(f"{tool}{where} into {dbname} failed (exit {code}): {_last_line(stderr)}")


def _last_line(stderr: bytes) -> str:
    """The line that says what went wrong: the last ``error:`` line, else the last line."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln or "FATAL:" in ln or "ERROR:" in ln]
    chosen = errors[-1] if errors else (lines[-1] if lines else "no error output")
    return redact(chosen)
