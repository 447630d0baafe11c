"""PostgreSQL round trips through backup_database() and restore() against real clusters: what comes
back is what went in (data, schema, owners, grants, sequences, large objects, database settings),
and a restore that is refused or fails verification leaves the current database as it was."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tasks.core.backup import backup_database
from tasks.core.catalog import Catalog
from tasks.core.dburl import parse_database_url
from tasks.core.engines import pgstream
from tasks.core.engines.postgres import PostgresEngine
from tasks.core.errors import (
    ConsentRequired,
    IntegrityError,
    PermanentError,
    VerificationFailed,
)
from tasks.core.manifest import Manifest
from tasks.core.pgcluster import PgCluster
from tasks.core.restore import RestoreResult, plan_restore, restore
from tasks.core.storage.local import LocalStorage
from tests.conftest import psql


@dataclass(frozen=True)
class Roles:
    owner: str
    rw: str
    ro: str


@pytest.fixture
def roles(pg: PgCluster, dbname: str) -> Iterator[Roles]:
    """Role names unique to this test (roles are cluster-wide). Afterwards the test's databases
    are dropped first, since roles that own objects cannot be dropped."""
    names = Roles(f"app_owner_{dbname}", f"app_rw_{dbname}", f"app_ro_{dbname}")
    yield names
    with psycopg.connect(pg.url, autocommit=True) as conn:
        for (db,) in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (dbname,)
        ).fetchall():
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
        for role in astuple(names):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _rich_schema(db: str, r: Roles) -> str:
    """Every kind of object a restore has to get right, with data in all of them."""
    return f"""
CREATE ROLE {r.owner} NOLOGIN;
CREATE ROLE {r.ro} NOLOGIN;
CREATE ROLE {r.rw} LOGIN CONNECTION LIMIT 5 IN ROLE {r.ro};
ALTER DATABASE {db} OWNER TO {r.owner};
ALTER DATABASE {db} SET work_mem = '8MB';
ALTER DATABASE {db} SET search_path = "$user", public, "Sales";
REVOKE CONNECT ON DATABASE {db} FROM PUBLIC;
GRANT CONNECT ON DATABASE {db} TO {r.ro};
GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {r.rw};

CREATE EXTENSION citext;
CREATE EXTENSION pgcrypto;
CREATE SCHEMA "Sales" AUTHORIZATION {r.rw};
GRANT USAGE ON SCHEMA "Sales" TO {r.ro};

CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'très content');
REVOKE USAGE ON TYPE mood FROM PUBLIC;
GRANT USAGE ON TYPE mood TO {r.rw};
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN email AS citext CHECK (VALUE LIKE '%_@_%');
CREATE TYPE money_pair AS (amount numeric(30, 10), currency char(3));
CREATE SEQUENCE ticket_seq INCREMENT BY 7 START WITH 1000;
SELECT setval('ticket_seq', 9000000000000);
CREATE SEQUENCE countdown INCREMENT BY -3 MINVALUE -1000000 MAXVALUE 100 START 100 CYCLE;
SELECT nextval('countdown') FROM generate_series(1, 5);
CREATE SEQUENCE never_called;
SELECT setval('never_called', 42, false);

CREATE TABLE kitchen_sink (
    id bigint GENERATED ALWAYS AS IDENTITY (START WITH 100 INCREMENT BY 5) PRIMARY KEY,
    ticket bigint NOT NULL DEFAULT nextval('ticket_seq'),
    mood mood NOT NULL,
    moods mood[],
    qty posint,
    contact email,
    price money_pair,
    doc jsonb,
    tags text[],
    matrix int[][],
    big numeric,
    f8 double precision,
    f4 real,
    "MixedCase" text,
    total numeric GENERATED ALWAYS AS ((price).amount * qty) STORED,
    fingerprint bytea GENERATED ALWAYS AS (digest(coalesce("MixedCase", ''), 'sha256')) STORED
);
ALTER TABLE kitchen_sink OWNER TO {r.owner};
INSERT INTO kitchen_sink (mood, moods, qty, contact, price, doc, tags, matrix, big, f8, f4,
                          "MixedCase")
SELECT (enum_range(NULL::mood))[1 + g % 4], ARRAY['sad', 'très content']::mood[], g,
       'User' || g || '@Example.COM', ROW(g / 7.0, 'EUR')::money_pair,
       jsonb_build_object('n', g, 'nested', jsonb_build_object('a', ARRAY[g, -g], 'ü', 'é'),
                          'null', NULL, 'big', 1e30),
       ARRAY['a,b', 'q"uote', NULL, 'sp ace', ''], ARRAY[[g, 2], [3, NULL]],
       power(2::numeric, 200) + g / 3.0, g * 0.1, g / 3.0, 'Row ' || g
FROM generate_series(1, 200) g;
INSERT INTO kitchen_sink (mood, big, f8, f4, "MixedCase") VALUES
    ('ok', 'NaN', 'NaN', 'NaN', 'nan'),
    ('ok', 'Infinity', 'Infinity', '-Infinity', 'inf'),
    ('ok', '-Infinity', '-0', '1e-40', 'tiny'),
    ('ok', 123456789012345678901234567890.123456789012345678901234567890, 1e-310, 3.4e38, NULL);
ALTER TABLE kitchen_sink ALTER COLUMN id RESTART WITH 900000;
INSERT INTO kitchen_sink (mood) VALUES ('happy');

CREATE TABLE "Sales".orders (
    id bigint GENERATED BY DEFAULT AS IDENTITY,
    placed date NOT NULL,
    customer text,
    amount numeric(12, 2),
    PRIMARY KEY (id, placed)
) PARTITION BY RANGE (placed);
DO $$
BEGIN
    FOR m IN 0..23 LOOP
        EXECUTE format('CREATE TABLE "Sales".%I PARTITION OF "Sales".orders '
                       'FOR VALUES FROM (%L) TO (%L)',
                       to_char(DATE '2023-01-01' + m * interval '1 month', '"orders_"YYYY_MM'),
                       DATE '2023-01-01' + m * interval '1 month',
                       DATE '2023-01-01' + (m + 1) * interval '1 month');
    END LOOP;
END $$;
CREATE TABLE "Sales".orders_other PARTITION OF "Sales".orders DEFAULT;
CREATE TABLE "Sales".audit_log (
    id bigserial PRIMARY KEY, order_id bigint, at timestamptz DEFAULT now(), what text
);
CREATE FUNCTION "Sales".log_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO "Sales".audit_log (order_id, what) VALUES (NEW.id, TG_OP || ' ' || NEW.customer);
    RETURN NEW;
END $$;
REVOKE EXECUTE ON FUNCTION "Sales".log_order() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "Sales".log_order() TO {r.rw};
CREATE TRIGGER orders_audit AFTER INSERT ON "Sales".orders
    FOR EACH ROW EXECUTE FUNCTION "Sales".log_order();
CREATE FUNCTION "Sales".stamp_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.customer := NEW.customer || ' ✓';
    RETURN NEW;
END $$;
CREATE TRIGGER orders_stamp BEFORE INSERT ON "Sales".orders
    FOR EACH ROW EXECUTE FUNCTION "Sales".stamp_order();
INSERT INTO "Sales".orders (placed, customer, amount)
SELECT DATE '2022-12-01' + g, 'cust ' || g % 17, g * 1.25 FROM generate_series(1, 900) g;
ALTER TABLE "Sales".orders OWNER TO {r.rw};
ALTER TABLE "Sales".orders_2023_03 OWNER TO {r.rw};
ALTER TABLE "Sales".orders_2024_02 OWNER TO {r.ro};
ALTER TABLE "Sales".audit_log OWNER TO {r.rw};
CREATE VIEW "Sales".order_totals WITH (security_barrier) AS
    SELECT customer, sum(amount) AS total FROM "Sales".orders GROUP BY customer;
ALTER VIEW "Sales".order_totals OWNER TO {r.rw};
ALTER DEFAULT PRIVILEGES FOR ROLE {r.rw} IN SCHEMA "Sales" GRANT SELECT ON TABLES TO {r.ro};

CREATE TABLE accounts (id int PRIMARY KEY, owner_name name NOT NULL, balance numeric(20, 2));
INSERT INTO accounts SELECT g, CASE WHEN g % 2 = 0 THEN '{r.ro}' ELSE '{r.rw}' END, g * 10
FROM generate_series(1, 50) g;
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON accounts FOR SELECT TO {r.ro} USING (owner_name = current_user);
CREATE POLICY rw_all ON accounts TO {r.rw} USING (true) WITH CHECK (balance >= 0);

CREATE TABLE "Ünïcödé Tàble" ("MixedCase" text, "naïve column" int, "emoji 🎉" text);
COMMENT ON TABLE "Ünïcödé Tàble" IS 'ça marche, 日本語';
CREATE FUNCTION mark_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW."MixedCase" := NEW."MixedCase" || ' (seen)';
    RETURN NEW;
END $$;
CREATE TRIGGER mark BEFORE INSERT ON "Ünïcödé Tàble" FOR EACH ROW EXECUTE FUNCTION mark_seen();
INSERT INTO "Ünïcödé Tàble" SELECT 'Zeile ' || g || ' ß', g, repeat('🎉', g % 4)
FROM generate_series(1, 30) g;

CREATE TABLE empty_things (id int PRIMARY KEY, note text);
CREATE TABLE nocols ();
INSERT INTO nocols DEFAULT VALUES;
INSERT INTO nocols DEFAULT VALUES;
INSERT INTO nocols DEFAULT VALUES;
CREATE UNLOGGED TABLE cache_entries (k text PRIMARY KEY, v bytea);
INSERT INTO cache_entries SELECT 'k' || g, gen_random_bytes(32) FROM generate_series(1, 20) g;

GRANT SELECT ON ALL TABLES IN SCHEMA public, "Sales" TO {r.ro};
GRANT INSERT, UPDATE, DELETE ON "Sales".orders, accounts TO {r.rw};
GRANT SELECT (id, "MixedCase"), UPDATE ("MixedCase") ON kitchen_sink TO {r.rw};
GRANT USAGE ON SEQUENCE ticket_seq TO {r.rw};
CREATE MATERIALIZED VIEW mood_counts AS SELECT mood, count(*) AS n FROM kitchen_sink GROUP BY mood;
CREATE UNIQUE INDEX ON mood_counts (mood);
ALTER MATERIALIZED VIEW mood_counts OWNER TO {r.ro};

SELECT lo_from_bytea(0, convert_to(repeat('large object ✓ ', 20000), 'UTF8'));
SELECT lo_from_bytea(424242, string_agg(gen_random_bytes(1024), '')) FROM generate_series(1, 4);
ALTER LARGE OBJECT 424242 OWNER TO {r.rw};
GRANT SELECT ON LARGE OBJECT 424242 TO {r.ro};
"""


# ---- what a user would compare ---------------------------------------------------------------

_USER_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1
"""

_SEQUENCES = """
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' ORDER BY 1
"""


def _rows(url: str, query: str | sql.Composable, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def _content(url: str) -> dict[str, Any]:
    """Per table: row count and a digest of every row; large objects; sequence positions."""
    with psycopg.connect(url, autocommit=True) as conn:
        out: dict[str, Any] = {}
        for (table,) in conn.execute(_USER_TABLES).fetchall():
            out[table] = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                    " FROM ONLY {} t"
                ).format(sql.SQL(table))
            ).fetchone()
        out["(large objects)"] = conn.execute(
            "SELECT oid, pg_get_userbyid(lomowner), lomacl::text, md5(lo_get(oid)) "
            "FROM pg_largeobject_metadata ORDER BY oid"
        ).fetchall()
        for (seq,) in conn.execute(_SEQUENCES).fetchall():
            out[f"(sequence) {seq}"] = conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(seq))
            ).fetchone()
    return out


def _schema(url: str) -> str:
    """``pg_dump --schema-only`` with owners and grants, minus the per-run random lines."""
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-password", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "\n".join(ln for ln in out.splitlines() if not re.match(r"\\(un)?restrict ", ln))


_DATABASE = """
SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
       (SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setdatabase = d.oid AND s.setrole = 0),
       (SELECT array_agg(p ORDER BY p) FROM aclexplode(d.datacl) a,
               format('%s=%s/%s%s', CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                    ELSE pg_get_userbyid(a.grantee) END,
                      a.privilege_type, pg_get_userbyid(a.grantor),
                      CASE WHEN a.is_grantable THEN '*' ELSE '' END) p)
FROM pg_database d WHERE d.datname = current_database()
"""


def _database(url: str) -> tuple[Any, ...]:
    """The database's own properties: owner, encoding, locale, settings, privileges."""
    return _rows(url, _DATABASE)[0]


def _assert_same_database(source: str, restored: str) -> None:
    src, dst = _content(source), _content(restored)
    assert list(dst) == list(src)
    for key, value in src.items():
        assert dst[key] == value, key
    assert _schema(restored) == _schema(source)
    assert _database(restored) == _database(source)


# ---- helpers ---------------------------------------------------------------------------------


def _backup(url: str, root: Path) -> tuple[Catalog, Manifest]:
    catalog = Catalog([LocalStorage(root)])
    return catalog, backup_database(parse_database_url(url), catalog).manifest


def _restore(
    catalog: Catalog,
    backup_id: str,
    target: str,
    *,
    drop_existing: bool = False,
    jobs: int | None = None,
) -> RestoreResult:
    plan = plan_restore(
        parse_database_url(target), catalog.get(backup_id), drop_existing=drop_existing
    )
    return restore(plan, confirm=True, jobs=jobs)


def _seed(url: str, rows: int = 100) -> None:
    psql(
        url,
        "CREATE TABLE items (id int PRIMARY KEY, label text);"
        f"INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, {rows}) g;",
    )


def _items(url: str) -> str:
    return psql(url, "SELECT count(*) || ':' || sum(id) FROM items")


def _databases(pg: PgCluster, prefix: str) -> list[str]:
    return [
        r[0]
        for r in _rows(
            pg.url,
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1",
            (prefix,),
        )
    ]


@pytest.fixture(params=[False, True], ids=["after-fetch", "while-fetched"])
def while_fetched(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run the test twice: as it comes (tables under 32 MiB load after the fetch), and with
    every table loaded while the archive arrives (engines/pgstream.py)."""
    if request.param:
        monkeypatch.setattr(pgstream, "STREAM_MIN", 0)
    return bool(request.param)


# ---- tests -----------------------------------------------------------------------------------


def test_restore_reproduces_data_schema_owners_and_grants(
    pg: PgCluster,
    dbname: str,
    roles: Roles,
    tmp_path: Path,
    while_fetched: bool,
) -> None:
    """Also with every table loaded while the archive arrives (engines/pgstream.py; in
    production only tables over 32 MiB are): partitions, triggers, the materialized view and
    the large objects come out the same."""
    source, target = pg.url_for(dbname), pg.url_for(f"{dbname}_copy")
    psql(source, _rich_schema(dbname, roles))
    catalog, m = _backup(source, tmp_path / "backups")
    assert m.counts['public."Ünïcödé Tàble"'] == 30
    assert m.counts['"Sales".orders_2024_02'] == 29
    assert m.counts["public.nocols"] == 3
    assert m.large_objects == 2

    # 8 jobs: up to 7 tables load at once while the archive arrives
    result = _restore(catalog, m.backup_id, target, jobs=8 if while_fetched else None)

    if while_fetched:
        assert len(result.loaded_during_fetch) >= 3
    else:
        assert result.loaded_during_fetch == []  # all of it under 32 MiB
    assert result.kept_as is None
    assert all(c.ok for c in result.counts)
    # a table loaded during the fetch is verified by the server's row count of its COPY,
    # the others by count(*): mixed-case, non-ASCII and partition names matched either way
    by_copy = {c.table.replace('"', "") for c in result.counts if c.by_copy}
    assert by_copy == set(result.loaded_during_fetch)
    _assert_same_database(source, target)
    # triggers must not fire again while the data is loaded
    assert (
        psql(
            target,
            """SELECT count(*) FROM "Ünïcödé Tàble" WHERE "MixedCase" LIKE '%(seen)%(seen)'""",
        )
        == "0"
    )
    assert psql(target, 'SELECT count(*) FROM "Sales".audit_log') == "900"


def test_restore_into_a_new_cluster_recreates_roles_and_database_properties(
    pg: PgCluster, dbname: str, roles: Roles, tmp_path: Path
) -> None:
    source = pg.url_for(dbname)
    psql(source, _rich_schema(dbname, roles))
    catalog, m = _backup(source, tmp_path / "backups")

    with PgCluster() as fresh:
        target = fresh.url_for(dbname)
        result = _restore(catalog, m.backup_id, target)

        assert sorted(result.roles_created) == sorted(astuple(roles))
        attrs = (
            "SELECT rolname, rolcanlogin, rolconnlimit, rolinherit, rolsuper, "
            "ARRAY(SELECT b.rolname FROM pg_auth_members am JOIN pg_roles b ON b.oid = am.roleid "
            "WHERE am.member = r.oid) FROM pg_roles r WHERE rolname = ANY(%s) ORDER BY 1"
        )
        assert _rows(target, attrs, (list(astuple(roles)),)) == _rows(
            source, attrs, (list(astuple(roles)),)
        )
        _assert_same_database(source, target)
        owner, *_, settings, privileges = _database(target)
        assert owner == roles.owner
        assert "work_mem=8MB" in settings
        assert f"PUBLIC=CONNECT/{roles.owner}" not in privileges
        assert f"{roles.ro}=CONNECT/{roles.owner}" in privileges


def test_a_corrupt_backup_leaves_a_new_cluster_without_the_roles_made_while_it_was_read(
    pg: PgCluster, dbname: str, roles: Roles, tmp_path: Path
) -> None:
    """The roles and the side database are made while the artefact is read; when it then
    fails its checksum, both are removed: the cluster is left as it was found."""
    source = pg.url_for(dbname)
    psql(source, _rich_schema(dbname, roles))
    catalog, m = _backup(source, tmp_path / "backups")
    stored = tmp_path / "backups" / m.artefacts[0].key
    data = bytearray(stored.read_bytes())
    data[-1000] ^= 0x01
    stored.write_bytes(bytes(data))

    with PgCluster() as fresh:
        before = (
            psql(fresh.url, "SELECT string_agg(rolname, ',' ORDER BY 1) FROM pg_roles"),
            psql(fresh.url, "SELECT string_agg(datname, ',' ORDER BY 1) FROM pg_database"),
        )
        plan = plan_restore(
            parse_database_url(fresh.url_for(dbname)),
            catalog.get(m.backup_id),
            drop_existing=False,
        )
        with pytest.raises(IntegrityError, match="sha256 mismatch"):
            restore(plan, confirm=True)
        after = (
            psql(fresh.url, "SELECT string_agg(rolname, ',' ORDER BY 1) FROM pg_roles"),
            psql(fresh.url, "SELECT string_agg(datname, ',' ORDER BY 1) FROM pg_database"),
        )
        assert roles.owner not in before[0]
        assert after == before


def test_the_database_owner_without_superuser_restores_it_and_no_trigger_fires_twice(
    pg: PgCluster,
    dbname: str,
    tmp_path: Path,
    while_fetched: bool,
) -> None:
    """A non-superuser cannot turn triggers off (session_replication_role): the restore must
    create them only after the data is in, also when tables load during the fetch."""
    owner = f"{dbname}_owner"
    psql(pg.url, f"CREATE ROLE {owner} LOGIN CREATEDB; ALTER DATABASE {dbname} OWNER TO {owner}")
    source, target = pg.url_for(dbname, owner), pg.url_for(f"{dbname}_copy", owner)
    try:
        psql(
            source,
            """
CREATE TABLE parent (id int PRIMARY KEY, name text);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent, note text);
CREATE TABLE audit (n int);
CREATE FUNCTION count_it() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN INSERT INTO audit VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER counted AFTER INSERT ON child FOR EACH ROW EXECUTE FUNCTION count_it();
INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 2000) g;
INSERT INTO child SELECT g, 1 + g % 2000, repeat('x', 50) FROM generate_series(1, 20000) g;
CREATE INDEX ON child (parent_id);
CREATE MATERIALIZED VIEW per_parent AS SELECT parent_id, count(*) AS n FROM child GROUP BY 1;
""",
        )
        catalog, m = _backup(source, tmp_path / "backups")

        result = _restore(catalog, m.backup_id, target, jobs=4)

        assert all(c.ok for c in result.counts)
        assert bool(result.loaded_during_fetch) == while_fetched
        _assert_same_database(source, target)
        assert psql(target, "SELECT count(*) FROM audit") == "20000"  # as backed up, no more
        assert psql(target, "SELECT sum(n) FROM per_parent") == "20000"
    finally:
        for db in _databases(pg, dbname):
            psql(pg.url, f'DROP DATABASE "{db}" WITH (FORCE)')
        psql(pg.url, f"DROP ROLE {owner}")


def test_a_copy_found_corrupt_after_tables_were_loaded_from_it_gives_way_to_the_next(
    pg: PgCluster, dbname: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tables are loaded into the side database while the first copy arrives; its checksum
    fails at the end. The side database is emptied and loaded again from the second copy:
    nothing from the bad copy stays, nothing is loaded twice."""
    monkeypatch.setattr(pgstream, "STREAM_MIN", 0)
    url = pg.url_for(dbname)
    _seed(url, rows=20000)
    psql(url, "CREATE TABLE zz_last (v text); INSERT INTO zz_last VALUES ('tail')")
    first, second = LocalStorage(tmp_path / "one"), LocalStorage(tmp_path / "two")
    catalog = Catalog([first, second])
    m = backup_database(parse_database_url(url), catalog).manifest
    stored = tmp_path / "one" / m.artefacts[0].key
    data = bytearray(stored.read_bytes())
    data[-20] ^= 0x01  # the last bytes: the table data has gone by (and been loaded) by then
    stored.write_bytes(bytes(data))
    target = pg.url_for(f"{dbname}_copy")

    result = _restore(catalog, m.backup_id, target)

    assert result.source == second.url
    assert "sha256 mismatch" in result.skipped_locations[first.url]
    assert "public.items" in result.loaded_during_fetch
    assert _items(target) == "20000:200010000"
    assert psql(target, "SELECT string_agg(v, ',') FROM zz_last") == "tail"


def test_restore_over_existing_database_keeps_it_unless_told_to_drop_it(
    pg: PgCluster, dbname: str, tmp_path: Path
) -> None:
    url = pg.url_for(dbname)
    _seed(url)
    catalog, m = _backup(url, tmp_path / "backups")
    psql(url, "DELETE FROM items WHERE id > 10; INSERT INTO items VALUES (999, 'changed')")

    result = _restore(catalog, m.backup_id, url)

    assert result.kept_as == f"{dbname}_pre_restore_{m.backup_id[-4:]}"
    assert _items(url) == "100:5050"
    assert _items(pg.url_for(result.kept_as)) == "11:1054"

    psql(url, "DELETE FROM items WHERE id > 50")
    _, m2 = _backup(url, tmp_path / "backups")
    psql(url, "DELETE FROM items WHERE id > 5")
    result = _restore(catalog, m2.backup_id, url, drop_existing=True)

    assert result.kept_as is None
    assert _items(url) == "50:1275"
    assert _databases(pg, dbname) == sorted([dbname, f"{dbname}_pre_restore_{m.backup_id[-4:]}"])


def test_restoring_the_same_backup_again_keeps_both_earlier_copies(
    pg: PgCluster, dbname: str, tmp_path: Path
) -> None:
    url = pg.url_for(dbname)
    _seed(url)
    catalog, m = _backup(url, tmp_path / "backups")
    first = _restore(catalog, m.backup_id, url).kept_as
    psql(url, "DELETE FROM items WHERE id > 10")

    second = _restore(catalog, m.backup_id, url).kept_as

    assert second == f"{first}_2"  # the first kept copy is neither replaced nor in the way
    assert _items(url) == "100:5050"
    assert _items(pg.url_for(str(second))) == "10:55"
    assert _databases(pg, dbname) == sorted([dbname, str(first), str(second)])


def test_a_failed_switch_leaves_the_database_open_and_current(
    pg: PgCluster, dbname: str, tmp_path: Path
) -> None:
    url = pg.url_for(dbname)
    _seed(url)
    psql(pg.url, f'CREATE DATABASE "{dbname}_side"')
    psql(pg.url, f'CREATE DATABASE "{dbname}_taken"')
    engine = PostgresEngine(parse_database_url(url))

    with pytest.raises(PermanentError, match=f'"{dbname}_taken" already exists'):
        engine.switch(f"{dbname}_side", f"{dbname}_taken")

    assert _items(url) == "100:5050"  # still accepts connections, still the current data
    assert psql(pg.url, f"SELECT datallowconn FROM pg_database WHERE datname = '{dbname}'") == "t"


def test_sessions_reconnecting_during_the_switch_are_kept_out_then_let_back(
    pg: PgCluster, dbname: str
) -> None:
    url = pg.url_for(dbname)
    _seed(url)
    psql(pg.url, f'CREATE DATABASE "{dbname}_side"')
    stop = threading.Event()

    def reconnect() -> None:  # an application that keeps coming back
        while not stop.is_set():
            try:
                with psycopg.connect(url, connect_timeout=2) as conn:
                    conn.execute("SELECT pg_sleep(0.02)")
            except psycopg.Error:
                pass

    clients = [threading.Thread(target=reconnect) for _ in range(3)]
    for c in clients:
        c.start()
    try:
        PostgresEngine(parse_database_url(url)).switch(f"{dbname}_side", f"{dbname}_kept")
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert _items(pg.url_for(f"{dbname}_kept")) == "100:5050"  # the previous one, kept ...
    allowed = psql(
        pg.url,
        "SELECT string_agg(datname || '=' || datallowconn, ',' ORDER BY datname) "
        f"FROM pg_database WHERE datname LIKE '{dbname}%'",
    )
    assert allowed == f"{dbname}=true,{dbname}_kept=true"  # ... and both open again


def test_database_settings_apply_after_the_restore(
    pg: PgCluster, dbname: str, tmp_path: Path
) -> None:
    source, target = pg.url_for(dbname), pg.url_for(f"{dbname}_copy")
    _seed(source)
    psql(pg.url, f"ALTER DATABASE {dbname} SET default_transaction_read_only = on")
    catalog, m = _backup(source, tmp_path / "backups")

    _restore(catalog, m.backup_id, target)

    assert _items(target) == "100:5050"
    assert psql(target, "SHOW default_transaction_read_only") == "on"


def test_refused_restore_changes_nothing(pg: PgCluster, dbname: str, tmp_path: Path) -> None:
    url = pg.url_for(dbname)
    _seed(url)
    catalog, m = _backup(url, tmp_path / "backups")
    psql(url, "DELETE FROM items WHERE id > 10")
    plan = plan_restore(parse_database_url(url), catalog.get(m.backup_id), drop_existing=True)

    with pytest.raises(ConsentRequired):
        restore(plan, confirm=False)

    assert _items(url) == "10:55"
    assert _databases(pg, dbname) == [dbname]


def test_every_step_after_the_fetch_says_what_it_does(
    pg: PgCluster, dbname: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the fetch the progress bar has nothing left to count: the pg_restore passes, the
    count and the switch are told as they begin (the CLI shows them on the bar, a flow logs
    them)."""
    monkeypatch.setattr(pgstream, "STREAM_MIN", 0)
    url = pg.url_for(dbname)
    _seed(url)
    psql(url, "CREATE INDEX items_label ON items (label)")
    catalog, m = _backup(url, tmp_path / "backups")
    stages: list[str] = []
    plan = plan_restore(parse_database_url(url), catalog.get(m.backup_id), drop_existing=True)

    restore(plan, confirm=True, stage=stages.append)

    passes = [s for s in stages if s.startswith("pass ")]
    assert passes, stages
    assert any("INDEX" in s for s in passes)  # what a pass restores, by kind
    assert stages[-2:] == [
        f"verifying the row counts of {plan.side} against the manifest",
        f"switching {plan.side} into place as {dbname}",
    ]
    assert stages.index(passes[-1]) < len(stages) - 2


def test_failed_verification_stops_before_the_switch(
    pg: PgCluster,
    dbname: str,
    tmp_path: Path,
    while_fetched: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Also when the count compared is the one the server reported for the table's COPY
    during the fetch."""
    seen: list[dict[str, tuple[int, int | None, bool]]] = []
    verify = PostgresEngine.verify_side

    def spy(self: PostgresEngine, *args: Any) -> dict[str, tuple[int, int | None, bool]]:
        seen.append(verify(self, *args))
        return seen[-1]

    monkeypatch.setattr(PostgresEngine, "verify_side", spy)
    url = pg.url_for(dbname)
    _seed(url)
    catalog, m = _backup(url, tmp_path / "backups")
    forged = m.model_copy(update={"counts": {"public.items": 101}})
    catalog.locations[0].put(f"{m.backup_id}/manifest.json", forged.to_bytes())
    psql(url, "DELETE FROM items WHERE id > 10")

    with pytest.raises(VerificationFailed, match=r"public\.items: expected 101, got 100"):
        _restore(catalog, m.backup_id, url, drop_existing=True)

    assert seen[-1]["public.items"] == (101, 100, while_fetched)  # (expected, actual, by COPY)

    assert _items(url) == "10:55"  # connectable, and still the current data
    assert _databases(pg, dbname) == [dbname]


def test_counts_come_from_the_dumped_snapshot_while_writes_continue(
    pg: PgCluster, dbname: str, tmp_path: Path
) -> None:
    url = pg.url_for(dbname)
    _seed(url, rows=300_000)
    done = threading.Event()
    inserted = threading.Semaphore(0)

    def keep_inserting() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            n = 1_000_000
            while not done.is_set():
                conn.execute(
                    "INSERT INTO items SELECT g, 'late' FROM generate_series(%s, %s) g", (n, n + 9)
                )
                n += 10
                inserted.release()

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    try:
        assert inserted.acquire(timeout=10)  # writes are under way before the backup starts
        catalog, m = _backup(url, tmp_path / "backups")
        assert inserted.acquire(timeout=10)  # and still going after it
    finally:
        done.set()
        writer.join()

    in_backup = m.counts["public.items"]
    assert 300_000 < in_backup < int(psql(url, "SELECT count(*) FROM items"))
    target = pg.url_for(f"{dbname}_copy")
    result = _restore(catalog, m.backup_id, target)  # verification compares exact counts
    assert [(c.table, c.actual) for c in result.counts if c.table == "public.items"] == [
        ("public.items", in_backup)
    ]
    assert psql(target, "SELECT count(*) FROM items") == str(in_backup)


def test_existing_roles_are_never_altered(pg: PgCluster, dbname: str, tmp_path: Path) -> None:
    grp, member = f"{dbname}_grp", f"{dbname}_member"
    url = pg.url_for(dbname)
    psql(pg.url, f"CREATE ROLE {grp} NOLOGIN; CREATE ROLE {member} NOLOGIN IN ROLE {grp}")
    psql(url, f"CREATE TABLE t (id int); ALTER TABLE t OWNER TO {member}")
    catalog, m = _backup(url, tmp_path / "backups")
    psql(pg.url, f"REVOKE {grp} FROM {member}")  # e.g. revoked during a breach response

    result = _restore(catalog, m.backup_id, pg.url_for(f"{dbname}_copy"))

    assert result.roles_created == []
    assert (
        psql(
            pg.url,
            f"SELECT count(*) FROM pg_auth_members m JOIN pg_roles g ON "
            f"g.oid = m.roleid WHERE g.rolname = '{grp}'",
        )
        == "0"
    )


def test_roles_created_for_a_failed_restore_are_dropped_again(
    pg: PgCluster, dbname: str, tmp_path: Path
) -> None:
    role = f"{dbname}_owner"
    url = pg.url_for(dbname)
    psql(pg.url, f"CREATE ROLE {role} NOLOGIN")
    psql(url, f"CREATE TABLE t AS SELECT 1 AS id; ALTER TABLE t OWNER TO {role}")
    catalog, m = _backup(url, tmp_path / "backups")
    forged = m.model_copy(update={"counts": {"public.t": 2}})
    catalog.locations[0].put(f"{m.backup_id}/manifest.json", forged.to_bytes())

    with PgCluster() as fresh:
        with pytest.raises(VerificationFailed):
            _restore(catalog, m.backup_id, fresh.url_for("app"))
        assert psql(fresh.url, f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}'") == "0"
        assert psql(fresh.url, "SELECT count(*) FROM pg_database WHERE datname LIKE 'app%'") == "0"
