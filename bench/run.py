"""Benchmark ``dr backup`` / ``dr restore`` side by side with the raw PostgreSQL tools.

    .venv/bin/python bench/run.py [--scale N] [--runs K]

Starts a throwaway cluster (tasks.core.pgcluster), loads ``pgbench -i -s N`` with random filler
(so the data does not compress trivially) plus the app schema (users, bots, trades with jsonb),
then times each operation K times, interleaved round by round so that noise on a shared machine
hits every variant alike, and rewrites docs/benchmarks.md completely. Peak RSS comes from
``/usr/bin/time -v`` ("Maximum resident set size") around each measured process; for ``dr`` the
python process's own VmHWM is polled from /proc as well, because the kernel folds the peak of
waited-for children (pg_dump, pg_restore) into the figure ``time`` reports.

The cluster and every temporary directory are removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import zstandard  # noqa: E402

from tasks.core.artefacts import ZSTD_LEVEL  # noqa: E402
from tasks.core.backup import PG_ARTEFACT  # noqa: E402
from tasks.core.manifest import MANIFEST, Manifest, new_backup_id  # noqa: E402
from tasks.core.pgcluster import PgCluster  # noqa: E402

DR = ROOT / ".venv" / "bin" / "dr"
TIME = Path("/usr/bin/time")
DOC = ROOT / "docs" / "benchmarks.md"
JOBS = 2
LIST_BACKUPS = 1000
FETCH_STAGE = "fetch: read + sha256, zstd -d, write; pre-data and big tables load beside it"
COUNT_STAGE = "counts (count(*) of the tables not loaded during the fetch)"
LOAD_STAGE = f"after the fetch: the rest of the data, then post-data (pg_restore -j{JOBS} passes)"
CHUNK = 1 << 20

# The cluster: the throwaway defaults of PgCluster (fsync off) plus room for bulk loads, so
# that checkpoints do not dominate restores. Recorded in the report.
SETTINGS = {
    "shared_buffers": "256MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
}

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


# ---- measuring ------------------------------------------------------------------------------


@dataclass
class Sample:
    wall: float
    rss_kib: dict[str, int]  # process label -> peak RSS (KiB)


@dataclass
class Series:
    name: str
    samples: list[Sample] = field(default_factory=list)
    size: int | None = None  # output bytes, when it makes sense
    note: str = ""
    extra: list[float] = field(default_factory=list)  # e.g. fsync times after a pipeline

    @property
    def walls(self) -> list[float]:
        return [s.wall for s in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    def peak_rss(self) -> dict[str, int]:
        peak: dict[str, int] = {}
        for s in self.samples:
            for k, v in s.rss_kib.items():
                peak[k] = max(peak.get(k, 0), v)
        return peak


def _max_rss(path: Path) -> int:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", path.read_text())
    if not m:
        raise RuntimeError(f"no RSS in {path}: {path.read_text()[-500:]}")
    return int(m.group(1))


class TimeFiles:
    """Hands out ``/usr/bin/time -v -o FILE`` prefixes, one per measured process."""

    def __init__(self, scratch: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="time-", dir=scratch))
        self.files: dict[str, Path] = {}

    def __call__(self, label: str) -> str:
        path = self.dir / f"{len(self.files)}.txt"
        self.files[label] = path
        return f"{TIME} -v -o {shlex.quote(str(path))}"

    def collect(self) -> dict[str, int]:
        try:
            return {label: _max_rss(p) for label, p in self.files.items()}
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def timed_shell(
    scratch: Path, build: Callable[[TimeFiles], str], env: dict[str, str] | None = None
) -> Sample:
    """Run the bash script ``build(tf)`` returns; every process prefixed with tf(label) is
    measured. Wall time is the whole script's."""
    tf = TimeFiles(scratch)
    script = "set -euo pipefail\n" + build(tf)
    t = time.monotonic()
    proc = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, check=False
    )
    wall = time.monotonic() - t
    if proc.returncode != 0:
        shutil.rmtree(tf.dir, ignore_errors=True)
        raise RuntimeError(f"failed ({proc.returncode}): {script}\n{proc.stderr[-2000:]}")
    return Sample(wall, tf.collect())


def _child_pid(pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def _vm_hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def timed_dr(scratch: Path, args: Sequence[str]) -> tuple[Sample, str]:
    """``/usr/bin/time -v dr ARGS``; also polls the dr python process's own VmHWM."""
    tf = TimeFiles(scratch)
    prefix = shlex.split(tf("dr (time -v, incl. children)"))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.monotonic()
        proc = subprocess.Popen([*prefix, str(DR), *args], stdout=out, stderr=err)
        hwm = 0
        py: int | None = None
        while proc.poll() is None:
            if py is None:
                py = _child_pid(proc.pid)
            if py is not None:
                hwm = max(hwm, _vm_hwm(py) or 0)
            time.sleep(0.02)
        wall = time.monotonic() - t
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        shutil.rmtree(tf.dir, ignore_errors=True)
        raise RuntimeError(f"dr {' '.join(args)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    rss = tf.collect()
    if hwm:
        rss = {"dr (python, VmHWM)": hwm, **rss}
    return Sample(wall, rss), stdout


# ---- the benchmark --------------------------------------------------------------------------


class Bench:
    def __init__(self, scale: int, runs: int, scratch: Path, cluster: PgCluster) -> None:
        self.scale, self.runs, self.scratch, self.pg = scale, runs, scratch, cluster
        self.env = {
            **os.environ,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(cluster.port),
            "PGUSER": "postgres",
        }
        self.facts: dict[str, str] = {}
        self.backup: dict[str, Series] = {}
        self.restore: dict[str, Series] = {}
        self.compression: list[dict[str, object]] = []
        self.compression_app: list[dict[str, object]] = []
        self.compression_text: list[dict[str, object]] = []
        self.listing: dict[str, Series] = {}
        self.notes: list[str] = []
        self.stages: dict[str, float] = {}
        self.loaded_during_fetch: list[str] = []

    def url(self, db: str) -> str:
        return self.pg.url_for(db)

    def sql(self, db: str, *statements: str) -> list[tuple[object, ...]]:
        rows: list[tuple[object, ...]] = []
        with psycopg.connect(self.url(db), autocommit=True) as conn:
            for s in statements:
                cur = conn.execute(s)  # type: ignore[arg-type]
                if cur.description:
                    rows = list(cur.fetchall())
        return rows

    def run(self, *cmd: str) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
        return proc.stdout

    def recreate_db(self, name: str) -> None:
        self.sql(
            "postgres",
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}" TEMPLATE template0',
        )

    def drop_db(self, name: str) -> None:
        self.sql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # ---- setup ----------------------------------------------------------------------------

    def load(self) -> None:
        log(f"creating database bench: pgbench -i -s {self.scale} (tables + data, no keys yet)")
        self.recreate_db("bench")
        base = ["pgbench", "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres"]
        self.run(*base, "-i", "-q", "-s", str(self.scale), "-I", "dtg", "bench")
        log("overwriting pgbench_accounts.filler with random text (no trivial compression)")
        self.sql(
            "bench",
            "UPDATE pgbench_accounts SET filler = substr(md5(random()::text) || "
            "md5(random()::text) || md5(random()::text), 1, 84)",
        )
        log("VACUUM FULL + primary keys (pgbench -I vp)")
        self.sql("bench", "VACUUM FULL pgbench_accounts")
        self.run(*base, "-i", "-q", "-I", "vp", "bench")
        users = 400 * self.scale
        log(f"app schema: {users} users, {2 * users} bots, {20 * users} trades (jsonb)")
        self.sql("bench", *app_schema_sql(users))
        self.sql("bench", "VACUUM ANALYZE")
        rows = self.sql(
            "bench",
            "SELECT pg_database_size('bench'), pg_size_pretty(pg_database_size('bench'))",
        )
        self.facts["database size"] = f"{rows[0][1]} ({rows[0][0]:,} bytes, pg_database_size)"
        counts = self.sql(
            "bench",
            "SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM trades), "
            "(SELECT count(*) FROM users), (SELECT count(*) FROM bots)",
        )[0]
        self.facts["rows"] = (
            f"pgbench_accounts {counts[0]:,}; trades {counts[1]:,}; users {counts[2]:,}; "
            f"bots {counts[3]:,}"
        )
        log(f"dataset ready: {self.facts['database size']}")

    # ---- backup ---------------------------------------------------------------------------

    def bench_backups(self, out: Path) -> None:
        url = shlex.quote(self.url("bench"))
        fc, z0, zst, fd = out / "fc.dump", out / "z0.dump", out / "z0.dump.zst", out / "fd"
        drdir = out / "dr"
        q = shlex.quote
        variants: dict[str, Callable[[], Sample]] = {}

        def raw_fc() -> Sample:
            fc.unlink(missing_ok=True)
            s = timed_shell(
                self.scratch, lambda t: f"{t('pg_dump')} pg_dump -Fc -d {url} -f {q(str(fc))}"
            )
            self.backup["fc"].size = fc.stat().st_size
            return s

        def raw_zstd() -> Sample:
            zst.unlink(missing_ok=True)
            s = timed_shell(
                self.scratch,
                lambda t: (
                    f"{t('pg_dump')} pg_dump -Fc -Z0 -d {url} | "
                    f"{t('zstd')} zstd -T2 -3 -q > {q(str(zst))}"
                ),
            )
            # dr fsyncs its artefact before the manifest; the pipeline does not. Time the fsync
            # of the pipeline's file separately so both figures are on record.
            t = time.monotonic()
            self.run("sync", str(zst))
            self.backup["zstd"].extra.append(time.monotonic() - t)
            self.backup["zstd"].size = zst.stat().st_size
            return s

        def raw_z0() -> Sample:
            z0.unlink(missing_ok=True)
            s = timed_shell(
                self.scratch, lambda t: f"{t('pg_dump')} pg_dump -Fc -Z0 -d {url} -f {q(str(z0))}"
            )
            self.backup["z0"].size = z0.stat().st_size
            return s

        def raw_fd() -> Sample:
            shutil.rmtree(fd, ignore_errors=True)
            s = timed_shell(
                self.scratch,
                lambda t: f"{t('pg_dump')} pg_dump -Fd -j{JOBS} -d {url} -f {q(str(fd))}",
            )
            self.backup["fd"].size = sum(p.stat().st_size for p in fd.iterdir())
            return s

        def dr_backup() -> Sample:
            shutil.rmtree(drdir, ignore_errors=True)
            s, stdout = timed_dr(
                self.scratch,
                [
                    "backup",
                    "--database-url",
                    self.url("bench"),
                    "--backup-dir",
                    str(drdir),
                    "--json",
                ],
            )
            info = json.loads(stdout)
            self.backup["dr"].size = int(info["size"])
            self.dr_backup_id = str(info["backup_id"])
            self.dr_backup_dir = drdir
            return s

        self.backup = {
            "fc": Series("raw `pg_dump -Fc` (zlib, default level) to a file"),
            "zstd": Series("raw `pg_dump -Fc -Z0 | zstd -T2 -3 -q > file`"),
            "dr": Series("`dr backup --database-url URL --backup-dir DIR`"),
            "z0": Series("raw `pg_dump -Fc -Z0 -f file` (no compression: the dump floor)"),
            "fd": Series(f"raw `pg_dump -Fd -j{JOBS}` (directory format, gzip)"),
        }
        variants = {"fc": raw_fc, "zstd": raw_zstd, "dr": dr_backup, "z0": raw_z0, "fd": raw_fd}
        self._rounds("backup", variants, self.backup)
        fs = self.backup["zstd"].extra
        fsync = statistics.median(fs)
        self.backup["zstd"].note = f"`sync file` afterwards took a median {fsync:.2f} s"
        self.files = {"fc": fc, "z0": z0, "zst": zst, "fd": fd}

    def _rounds(
        self, what: str, variants: dict[str, Callable[[], Sample]], into: dict[str, Series]
    ) -> None:
        keys = list(variants)
        for r in range(self.runs):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]  # rotate: no fixed position
            for k in order:
                os.sync()  # no run pays for the writeback of the one before it
                s = variants[k]()
                into[k].samples.append(s)
                rss = ", ".join(f"{lbl} {kib / 1024:.0f} MiB" for lbl, kib in s.rss_kib.items())
                log(f"{what} round {r + 1}/{self.runs}: {k:5s} {s.wall:7.2f} s  ({rss})")

    # ---- restore --------------------------------------------------------------------------

    def bench_restores(self) -> None:
        q = shlex.quote
        fc, zst, fd, z0 = self.files["fc"], self.files["zst"], self.files["fd"], self.files["z0"]
        # the archive exactly as dr restores it: pg_dump wrote it to a pipe, so its table of
        # contents has no data offsets (pg_restore must scan forward for every data block)
        piped = self.scratch / "piped.dump"
        self.run("zstd", "-d", "-q", "-f", str(zst), "-o", str(piped))

        def raw_restore(source: Path) -> Callable[[], Sample]:
            def go() -> Sample:
                self.recreate_db("r_raw")
                try:
                    return timed_shell(
                        self.scratch,
                        lambda t: (
                            f"{t('pg_restore')} pg_restore -j{JOBS} "
                            f"-d {q(self.url('r_raw'))} {q(str(source))}"
                        ),
                    )
                finally:
                    self.drop_db("r_raw")

            return go

        def raw_zstd_restore() -> Sample:
            tmp = self.scratch / "z0-restore.dump"
            self.recreate_db("r_raw")
            try:
                return timed_shell(
                    self.scratch,
                    lambda t: (
                        f"{t('zstd -d')} zstd -d -q -f {q(str(zst))} -o {q(str(tmp))}\n"
                        f"{t('pg_restore')} pg_restore -j{JOBS} -d {q(self.url('r_raw'))} "
                        f"{q(str(tmp))}\nrm -f {q(str(tmp))}"
                    ),
                )
            finally:
                tmp.unlink(missing_ok=True)
                self.drop_db("r_raw")

        def dr_restore() -> Sample:
            self.drop_db("r_dr")
            try:
                s, stdout = timed_dr(
                    self.scratch,
                    [
                        "restore",
                        "--database-url",
                        self.url("r_dr"),
                        "--backup-id",
                        self.dr_backup_id,
                        "--confirm",
                        "--jobs",
                        str(JOBS),
                        "--backup-dir",
                        str(self.dr_backup_dir),
                        "--json",
                    ],
                )
                info = json.loads(stdout)
                bad = [c for c in info["counts"] if c["expected"] != c["actual"]]
                assert not bad, bad
                return s
            finally:
                self.drop_db("r_dr")

        self.restore = {
            "raw": Series(
                f"raw `pg_restore -j{JOBS} -d NEWDB file.dump` (from the `-Fc` zlib file)"
            ),
            "dr": Series(
                f"`dr restore --backup-id ID --confirm --jobs {JOBS}` (fetch + sha256 + "
                "decompress, side db, counts, switch)"
            ),
            "zstd": Series(
                f"raw `zstd -d file.zst -o tmp && pg_restore -j{JOBS} tmp` (dr's path, by hand)"
            ),
            "fd": Series(f"raw `pg_restore -j{JOBS}` from the `-Fd` directory"),
            "z0": Series(
                f"raw `pg_restore -j{JOBS}` of `pg_dump -Fc -Z0 -f file` (uncompressed, "
                "data offsets in the TOC)"
            ),
            "piped": Series(
                f"raw `pg_restore -j{JOBS}` of the same archive written through a pipe "
                "(uncompressed, no data offsets: what dr hands to pg_restore)"
            ),
        }
        variants: dict[str, Callable[[], Sample]] = {
            "raw": raw_restore(fc),
            "dr": dr_restore,
            "zstd": raw_zstd_restore,
            "fd": raw_restore(fd),
            "z0": raw_restore(z0),
            "piped": raw_restore(piped),
        }
        self._rounds("restore", variants, self.restore)
        piped.unlink()
        self.restore_stages()

    def restore_stages(self) -> None:
        """One more dr restore, in this process with the stages timed: where the time goes."""
        from tasks.core import restore as core_restore
        from tasks.core.catalog import Catalog
        from tasks.core.dburl import parse_database_url
        from tasks.core.engines.pgstream import StreamedRestore
        from tasks.core.engines.postgres import PostgresEngine
        from tasks.core.storage.local import LocalStorage

        stages: dict[str, float] = {}

        def timed(name: str, f: Callable[..., object]) -> Callable[..., object]:
            def wrapper(*a: object, **k: object) -> object:
                t = time.monotonic()
                try:
                    return f(*a, **k)
                finally:
                    stages[name] = stages.get(name, 0.0) + time.monotonic() - t

            return wrapper

        patches: list[tuple[object, str, object]] = [
            (core_restore, "fetch_artefact", FETCH_STAGE),
            (PostgresEngine, "ensure_roles", "roles (beside the fetch)"),
            (PostgresEngine, "create_side", "create the side database (beside the fetch)"),
            (StreamedRestore, "finish", LOAD_STAGE),
            (PostgresEngine, "verify_side", COUNT_STAGE),
            (PostgresEngine, "switch", "switch (renames)"),
        ]
        saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
        for obj, attr, name in patches:
            setattr(obj, attr, timed(str(name), getattr(obj, attr)))
        self.drop_db("r_dr")
        try:
            t = time.monotonic()
            entry = Catalog([LocalStorage(self.dr_backup_dir)]).get(self.dr_backup_id)
            plan = core_restore.plan_restore(
                parse_database_url(self.url("r_dr")), entry, drop_existing=False
            )
            stages["catalog + plan"] = time.monotonic() - t
            result = core_restore.restore(plan, confirm=True, jobs=JOBS)
            stages["total"] = time.monotonic() - t
            self.loaded_during_fetch = result.loaded_during_fetch
        finally:
            for obj, attr, orig in saved:
                setattr(obj, attr, orig)
            self.drop_db("r_dr")
        self.stages = stages
        log("restore stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()))

    # ---- compression ----------------------------------------------------------------------

    def bench_compression(self) -> None:
        """Same raw archive, zstd levels 1/3/6 end to end (pg_dump -Z0 | zstd -L) and in
        process (python-zstandard, 2 threads, 1 MiB chunks: dr's own code path)."""
        q = shlex.quote
        url = q(self.url("bench"))
        raw = self.files["z0"]
        raw_size = raw.stat().st_size
        fc = self.backup["fc"]
        self.compression.append(
            {
                "method": "`pg_dump -Fc` zlib (default level)",
                "size": fc.size,
                "raw": raw_size,
                "pipeline": fc,
            }
        )
        for level in (1, 3, 6, 9):
            out = self.scratch / f"l{level}.zst"
            series = Series(f"zstd -{level}")
            if level == 3:
                series = self.backup["zstd"]  # the backup table's pipeline already is level 3
            else:
                for r in range(self.runs):
                    s = timed_shell(
                        self.scratch,
                        lambda t, lv=level, o=out: (
                            f"{t('pg_dump')} pg_dump -Fc -Z0 -d {url} | "
                            f"{t('zstd')} zstd -T2 -{lv} -q > {q(str(o))}"
                        ),
                    )
                    series.samples.append(s)
                    log(f"compression: pipeline zstd -{level} run {r + 1}: {s.wall:.2f} s")
            comp_t, dec_t, size = [], [], 0
            for r in range(self.runs):
                t, size, blob = zstd_in_process(raw, level, out)
                comp_t.append(t)
                t = time.monotonic()
                digest = zstd_decompress(out)
                dec_t.append(time.monotonic() - t)
                assert digest == blob, "zstd round trip mismatch"
                log(
                    f"compression: in-process zstd -{level} run {r + 1}: {comp_t[-1]:.2f} s "
                    f"-> {size / 2**20:.1f} MiB, decompress {dec_t[-1]:.2f} s"
                )
            out.unlink(missing_ok=True)
            self.compression.append(
                {
                    "method": f"`-Z0` + zstd level {level}"
                    + (" (dr's choice)" if level == ZSTD_LEVEL else ""),
                    "level": level,
                    "size": size,
                    "raw": raw_size,
                    "pipeline": series,
                    "inproc": comp_t,
                    "decomp": dec_t,
                }
            )

    def bench_compression_app(self) -> None:
        """The app tables alone (ids, timestamps, numerics, jsonb): data with structure, unlike
        the md5 filler that dominates pgbench_accounts. In process, zstd levels vs zlib -6."""
        raw = self.scratch / "app.dump"
        self.run(
            "pg_dump", "-Fc", "-Z0", "-t", "users", "-t", "bots", "-t", "trades",
            "-d", self.url("bench"), "-f", str(raw),
        )  # fmt: skip
        raw_size = raw.stat().st_size
        out = self.scratch / "app.out"
        for level in (1, 3, 6, 9):
            times, dec, size = [], [], 0
            for _ in range(self.runs):
                t, size, blob = zstd_in_process(raw, level, out)
                times.append(t)
                t = time.monotonic()
                assert zstd_decompress(out) == blob, "zstd round trip mismatch"
                dec.append(time.monotonic() - t)
            self.compression_app.append(
                {"method": f"zstd level {level}", "size": size, "raw": raw_size,
                 "inproc": times, "decomp": dec}
            )  # fmt: skip
            log(f"compression (app tables): zstd -{level}: {statistics.median(times):.2f} s "
                f"-> {size / 2**20:.1f} of {raw_size / 2**20:.1f} MiB")  # fmt: skip
        times = []
        for _ in range(self.runs):
            t0 = time.monotonic()
            z = zlib.compressobj(6)
            size = 0
            with open(raw, "rb") as f:
                while chunk := f.read(CHUNK):
                    size += len(z.compress(chunk))
            size += len(z.flush())
            times.append(time.monotonic() - t0)
        self.compression_app.insert(
            0, {"method": "zlib level 6 (pg_dump's default)", "size": size, "raw": raw_size,
                "inproc": times}
        )  # fmt: skip
        log(f"compression (app tables): zlib -6: {statistics.median(times):.2f} s -> "
            f"{size / 2**20:.1f} MiB")  # fmt: skip
        raw.unlink()
        # reference outside the benchmark's tables: structured text (Python's own sources)
        files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
        text = b"".join(f.read_bytes() for f in files)[: 32 << 20]
        text_file = self.scratch / "text.raw"
        text_file.write_bytes(text)
        for level in (1, 3, 6, 9):
            times = [zstd_in_process(text_file, level, out)[0] for _ in range(self.runs)]
            size = out.stat().st_size
            self.compression_text.append(
                {"method": f"zstd level {level}", "size": size, "raw": len(text),
                 "inproc": times}
            )  # fmt: skip
        t0 = time.monotonic()
        self.compression_text.insert(
            0, {"method": "zlib level 6", "size": len(zlib.compress(text, 6)), "raw": len(text),
                "inproc": [time.monotonic() - t0]}
        )  # fmt: skip
        log("compression (text reference): " + ", ".join(
            f"{c['method']} {int(c['size']) / 2**20:.1f} MiB" for c in self.compression_text
        ))  # type: ignore[call-overload]  # fmt: skip
        text_file.unlink()
        out.unlink(missing_ok=True)

    # ---- dr restore --list ----------------------------------------------------------------

    def bench_list(self) -> None:
        log(f"--list: one real backup of a tiny database, then {LIST_BACKUPS - 1} copies")
        self.recreate_db("tiny")
        self.sql("tiny", *app_schema_sql(20))
        listdir = self.scratch / "list-catalog"
        _, stdout = timed_dr(
            self.scratch,
            ["backup", "--database-url", self.url("tiny"), "--backup-dir", str(listdir), "--json"],
        )
        src_id = json.loads(stdout)["backup_id"]
        src = Manifest.from_bytes((listdir / src_id / MANIFEST).read_bytes())
        artefact = listdir / src_id / PG_ARTEFACT
        base = src.consistent_at
        for i in range(1, LIST_BACKUPS):
            at = base - timedelta(hours=i)
            bid = new_backup_id(src.database, at)
            (listdir / bid).mkdir()
            shutil.copyfile(artefact, listdir / bid / PG_ARTEFACT)
            arts = tuple(
                a.model_copy(update={"key": f"{bid}/{a.key.split('/', 1)[1]}"})
                for a in src.artefacts
            )
            m = src.model_copy(
                update={
                    "backup_id": bid,
                    "artefacts": arts,
                    "started_at": at,
                    "consistent_at": at,
                    "finished_at": at,
                }
            )
            (listdir / bid / MANIFEST).write_bytes(m.to_bytes())
        empty = self.scratch / "list-empty"
        empty.mkdir()
        self.listing = {
            "list": Series(f"`dr restore --list` ({LIST_BACKUPS} backups)"),
            "json": Series(f"`dr restore --list --json` ({LIST_BACKUPS} backups)"),
            "empty": Series("`dr restore --list` (empty dir: interpreter + import floor)"),
        }
        runs = max(self.runs, 5)
        for r in range(runs):
            for key, args in (
                ("list", ["restore", "--list", "--backup-dir", str(listdir)]),
                ("json", ["restore", "--list", "--json", "--backup-dir", str(listdir)]),
                ("empty", ["restore", "--list", "--backup-dir", str(empty)]),
            ):
                s, stdout = timed_dr(self.scratch, args)
                if key == "json":
                    n = len(json.loads(stdout))
                    assert n == LIST_BACKUPS, f"--list shows {n} backups, not {LIST_BACKUPS}"
                self.listing[key].samples.append(s)
                log(f"--list round {r + 1}/{runs}: {key:5s} {s.wall:.3f} s")
        # in process: the catalog scan alone, without interpreter start and imports
        from tasks.core.catalog import Catalog
        from tasks.core.storage.local import LocalStorage

        def scan(pooled: bool) -> float:
            loc = LocalStorage(listdir)
            if pooled:  # any other name takes the thread-pool path used for S3
                loc.name = "local-through-the-pool"  # type: ignore[misc]
            t = time.monotonic()
            n = len(Catalog([loc]).list().backups)
            assert n == LIST_BACKUPS, n
            return time.monotonic() - t

        seq: list[float] = []
        pool: list[float] = []
        for _ in range(max(self.runs, 5)):
            seq.append(scan(False))
            pool.append(scan(True))
        self.list_inproc = (statistics.median(seq), statistics.median(pool))
        log(
            f"--list: Catalog.list() in process: {self.list_inproc[0]:.3f} s "
            f"(through a thread pool: {self.list_inproc[1]:.3f} s)"
        )

    # ---- zstd job size --------------------------------------------------------------------

    def bench_job_size(self) -> None:
        """dr's backup code path (backup_database in a fresh interpreter with the CLI's imports)
        with zstd's default job size vs ZSTD_JOB_SIZE: peak RSS, time, size."""
        code = (
            "import sys, time, tempfile, shutil\n"
            "import flows.cli\n"
            "from tasks.core import artefacts\n"
            "js = int(sys.argv[1])\n"
            "artefacts.ZSTD_JOB_SIZE = js if js >= 0 else artefacts.ZSTD_JOB_SIZE\n"
            "from tasks.core.backup import backup_database\n"
            "from tasks.core.catalog import Catalog\n"
            "from tasks.core.storage.local import LocalStorage\n"
            "from tasks.core.dburl import parse_database_url\n"
            "d = tempfile.mkdtemp(dir=sys.argv[3])\n"
            "t = time.monotonic()\n"
            "r = backup_database(parse_database_url(sys.argv[2]), Catalog([LocalStorage(d)]))\n"
            "wall = time.monotonic() - t\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')]\n"
            "print(wall, int(hwm[0].split()[1]), r.manifest.size)\n"
            "shutil.rmtree(d)\n"
        )
        from tasks.core.artefacts import ZSTD_JOB_SIZE

        variants = {"zstd default (0)": 0}
        for mib in (8, 4, 2):
            dr = " (dr)" if mib << 20 == ZSTD_JOB_SIZE else ""
            variants[f"{mib} MiB{dr}"] = -1 if dr else mib << 20
        self.job_size: dict[str, list[tuple[float, int, int]]] = {k: [] for k in variants}
        for r in range(self.runs):
            for label, js in variants.items():
                out = subprocess.run(
                    [sys.executable, "-c", code, str(js), self.url("bench"), str(self.scratch)],
                    capture_output=True, text=True, check=True, cwd=ROOT,
                ).stdout.split()  # fmt: skip
                wall, kib, size = float(out[0]), int(out[1]), int(out[2])
                self.job_size[label].append((wall, kib, size))
                log(f"zstd job size {label} run {r + 1}: {wall:.2f} s, {kib / 1024:.0f} MiB, "
                    f"{size / 2**20:.1f} MiB")  # fmt: skip

    # ---- facts ----------------------------------------------------------------------------

    def machine_facts(self) -> None:
        cpu = "?"
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem = "?"
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
        server = self.sql("postgres", "SELECT version()")[0][0]
        self.facts = {
            "nproc": str(os.cpu_count()),
            "cpu": cpu,
            "RAM": mem,
            "kernel": platform.release(),
            "pg_dump --version": self.run("pg_dump", "--version").strip(),
            "zstd --version": self.run("zstd", "--version").strip(),
            "python-zstandard": f"{zstandard.__version__} ({zstandard.backend})",
            "server": str(server),
            "cluster settings": ", ".join(f"{k}={v}" for k, v in self.pg.settings.items()),
            "load average at start": _loadavg(),
            **self.facts,
        }


def app_schema_sql(users: int) -> list[str]:
    """users, bots, trades (2 bots per user, 10 trades per bot) with jsonb columns, generated
    server-side; the shape of tasks/core/sampledata.py."""
    return [
        "DROP TABLE IF EXISTS trades, bots, users",
        """CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL UNIQUE,
               created_at timestamptz NOT NULL, profile jsonb NOT NULL)""",
        """CREATE TABLE bots (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users(id),
               name text NOT NULL, strategy text NOT NULL, active boolean NOT NULL,
               config jsonb NOT NULL)""",
        """CREATE TABLE trades (id bigint PRIMARY KEY, bot_id bigint NOT NULL REFERENCES bots(id),
               symbol text NOT NULL, side text NOT NULL, qty numeric NOT NULL,
               price numeric NOT NULL, created_at timestamptz NOT NULL, meta jsonb NOT NULL)""",
        f"""INSERT INTO users SELECT i, 'user' || i || '@example.com',
               timestamptz '2026-01-01' + i * interval '1 minute',
               jsonb_build_object('name', md5(random()::text), 'tier', (i % 3),
                                  'tags', jsonb_build_array(md5(random()::text)))
            FROM generate_series(1, {users}) i""",
        f"""INSERT INTO bots SELECT i, 1 + (i - 1) / 2, 'bot-' || i,
               (ARRAY['grid','dca','momentum','arbitrage'])[1 + i % 4], i % 3 <> 0,
               jsonb_build_object('risk', round(random()::numeric, 3),
                                  'pairs', jsonb_build_array('BTC-USD', 'ETH-USD'),
                                  'key', md5(random()::text))
            FROM generate_series(1, {2 * users}) i""",
        f"""INSERT INTO trades SELECT i, 1 + (i - 1) / 10,
               (ARRAY['BTC-USD','ETH-USD','SOL-USD','ADA-USD'])[1 + i % 4],
               CASE WHEN random() < 0.5 THEN 'buy' ELSE 'sell' END,
               round((random() * 5)::numeric, 6), round((random() * 60000)::numeric, 2),
               timestamptz '2026-02-01' + i * interval '1 second',
               jsonb_build_object('fee', round((random() / 100)::numeric, 6),
                                  'venue', (ARRAY['binance','kraken','coinbase'])[1 + i % 3],
                                  'order', md5(random()::text))
            FROM generate_series(1, {20 * users}) i""",
        "CREATE INDEX trades_bot_created ON trades (bot_id, created_at)",
    ]


def zstd_in_process(raw: Path, level: int, out: Path) -> tuple[float, int, str]:
    """dr's code path: ZstdCompressor(level, threads=2).compressobj() fed 1 MiB chunks.
    Returns (seconds, compressed size, sha256 of the raw input for the round-trip check)."""
    digest = hashlib.sha256()
    comp = zstandard.ZstdCompressor(level=level, threads=2, write_checksum=True).compressobj()
    t = time.monotonic()
    with open(raw, "rb") as f, open(out, "wb") as o:
        while chunk := f.read(CHUNK):
            o.write(comp.compress(chunk))
        o.write(comp.flush())
    elapsed = time.monotonic() - t
    with open(raw, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return elapsed, out.stat().st_size, digest.hexdigest()


def zstd_decompress(path: Path) -> str:
    digest = hashlib.sha256()
    dec = zstandard.ZstdDecompressor().decompressobj()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(dec.decompress(chunk))
    return digest.hexdigest()


# ---- the report -----------------------------------------------------------------------------


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def _rss(series: Series) -> str:
    return "; ".join(f"{k} {v / 1024:.0f} MiB" for k, v in series.peak_rss().items())


def _per_round(a: Series, b: Series) -> str:
    """``a``'s time over ``b``'s in each round (the noise the medians smooth over)."""
    return ", ".join(f"{x.wall / y.wall:.2f}" for x, y in zip(a.samples, b.samples, strict=True))


def _times(s: Series) -> str:
    return f"{s.median:.2f} | {min(s.walls):.2f} | {max(s.walls):.2f}"


def _dr_rss_kib(series: Series) -> int:
    rss = series.peak_rss()
    return rss.get("dr (python, VmHWM)", rss.get("dr (time -v, incl. children)", 0))


def report(b: Bench, command: str, started: datetime, elapsed: float) -> str:
    bk, rs = b.backup, b.restore
    fc, zs, drb = bk["fc"].median, bk["zstd"].median, bk["dr"].median
    raw_r, drr = rs["raw"].median, rs["dr"].median
    rss_mb = max(_dr_rss_kib(bk["dr"]), _dr_rss_kib(rs["dr"])) * 1024 / 1e6
    list_s = b.listing["list"].median
    dev = b.scale < 20
    lines = [
        "# Benchmarks: `dr backup` / `dr restore` against the raw PostgreSQL tools",
        "",
        "Generated by `bench/run.py`; every run rewrites the whole file except the sections "
        "between `<!-- bench:NAME -->` markers at its end, which other benchmarks in `bench/` "
        "write (Redis, pgBackRest). Do not edit by hand.",
        "",
        f"Produced with: `{command}` on {started:%Y-%m-%d %H:%M} UTC, in {elapsed / 60:.1f} min.",
        "",
    ]
    if dev:
        lines += [
            f"**Development run (scale {b.scale} < 20): the figures below are not a valid "
            "benchmark; run with `--scale 50`.**",
            "",
        ]
    lines += [
        "## Machine and dataset",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in b.facts.items()],
        f"| pgbench scale | {b.scale} (filler overwritten with random md5 text), plus the app "
        "schema (users, bots, trades with jsonb) |",
        f"| `pg_dump -Fc` (zlib) size | {_mib(bk['fc'].size)} |",
        f"| `pg_dump -Fc -Z0` (raw archive) size | {_mib(bk['z0'].size)} |",
        f"| `-Z0 \\| zstd -3` size | {_mib(bk['zstd'].size)} |",
        f"| `dr backup` artefact size | {_mib(bk['dr'].size)} |",
        f"| `pg_dump -Fd` size | {_mib(bk['fd'].size)} |",
        f"| runs per operation | {b.runs} (medians; variants interleaved and rotated per round) |",
        "",
        "The machine is shared and noisy (2 cores; other jobs such as test suites may run at the "
        "same time): compare rows of one run with each other, not with figures from another run. "
        "Data is in the page cache (warm runs); backups and restores go to/from a local directory "
        "on the same disk as the cluster, and every timed run starts after a `sync` (outside the "
        "clock), so that none pays for the writeback of the run before it. Peak RSS is "
        '`/usr/bin/time -v` "Maximum resident set '
        "size\" of each process; for `dr` the python process's own peak (VmHWM polled from /proc) "
        "is given first, then `time -v`'s figure, which Linux takes as the maximum over the "
        "process *and* its waited-for children (pg_dump, pg_restore). dr's own modules are "
        "byte-compiled before the clock starts (`compileall`), as they are in any installation "
        "after its first run (this machine sets `PYTHONDONTWRITEBYTECODE`, which would "
        "otherwise make every `dr` start compile them from source).",
        "",
        "## Backup (to a local directory)",
        "",
        "| operation | median s | min s | max s | x `pg_dump -Fc` | x `-Z0 \\| zstd` | output "
        "| peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in bk.values():
        lines.append(
            f"| {_cell(s.name)} | {_times(s)} | {s.median / fc:.2f} | {s.median / zs:.2f} | "
            f"{_mib(s.size)} | {_rss(s)} |"
        )
    lines += [
        "",
        f"The `zstd` pipeline's file is not fsynced; {bk['zstd'].note}. `dr backup` fsyncs its "
        "artefact and manifest, takes the snapshot, counts every table in the same snapshot "
        "(in parallel with the dump), hashes the compressed stream and writes the manifest.",
        "",
        f"Round by round, `dr backup` / the `zstd` pipeline: {_per_round(bk['dr'], bk['zstd'])}.",
        "",
        f"## Restore (from a local file, `-j{JOBS}`, into a new database)",
        "",
        "| operation | median s | min s | max s | x raw `pg_restore` | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for s in rs.values():
        lines.append(f"| {_cell(s.name)} | {_times(s)} | {s.median / raw_r:.2f} | {_rss(s)} |")
    lines += [
        "",
        f"Round by round, `dr restore` / raw `pg_restore -j{JOBS}` (zlib): "
        f"{_per_round(rs['dr'], rs['raw'])}.",
        "",
        "Raw rows time `pg_restore` only (the empty database is created before the clock starts "
        "and dropped after); `dr restore` is the whole command: interpreter start, catalog read, "
        "fetch with sha256 and decompression to a temp file, role check, side database "
        "creation, `pg_restore`, exact counts of every table (the server's `COPY` count for "
        "those loaded during the fetch), switch.",
        "",
        "Where one `dr restore` spends its time (one more run, in process, stages timed; "
        "the interpreter start and imports of the CLI come on top, see the `--list` section):",
        "",
        "| stage | s |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in b.stages.items()],
        "",
        "## Targets",
        "",
        "| target | measured | met? |",
        "|---|---|---|",
        _target(
            "backup faster than raw `pg_dump -Fc`",
            f"{drb:.2f} s vs {fc:.2f} s ({drb / fc:.2f}x)",
            drb < fc,
        ),
        _target(
            "backup ≤ 1.10x `pg_dump -Fc -Z0 | zstd -T2 -3` to a local file",
            f"{drb:.2f} s vs {zs:.2f} s ({drb / zs:.2f}x)",
            drb <= 1.10 * zs,
        ),
        _target(
            f"restore ≤ 1.15x raw `pg_restore -j{JOBS}`",
            f"{drr:.2f} s vs {raw_r:.2f} s ({drr / raw_r:.2f}x)",
            drr <= 1.15 * raw_r,
        ),
        _target(
            "peak RSS of the `dr` process ≤ 150 MB",
            f"{rss_mb:.0f} MB (max of backup and restore, VmHWM of the python process)",
            rss_mb <= 150,
        ),
        _target(
            f"`dr restore --list` < 1 s with {LIST_BACKUPS:,} backups",
            f"{list_s:.2f} s",
            list_s < 1,
        ),
        "",
        "## Compression choice",
        "",
        f"Same data. *Pipeline* is end to end: `pg_dump -Fc -Z0 | zstd -T2 -L -q > file` "
        f"(`pg_dump -Fc` for zlib), median of {b.runs}. *In process* is dr's code path alone on "
        "the saved raw archive: python-zstandard `ZstdCompressor(level, threads=2)`, 1 MiB "
        "chunks (compress) and a single-threaded stream decompression (what `dr restore` does).",
        "",
        "| method | size | % of raw archive | pipeline median s | in-process compress s "
        "| in-process decompress s |",
        "|---|---|---|---|---|---|",
    ]
    for c in b.compression:
        size, raw = int(c["size"]), int(c["raw"])  # type: ignore[call-overload]
        pipe: Series = c["pipeline"]  # type: ignore[assignment]
        inproc = c.get("inproc")
        decomp = c.get("decomp")
        lines.append(
            f"| {c['method']} | {_mib(size)} | {100 * size / raw:.1f} % | {pipe.median:.2f} | "
            + (f"{statistics.median(inproc):.2f}" if inproc else "-")  # type: ignore[arg-type]
            + " | "
            + (f"{statistics.median(decomp):.2f}" if decomp else "-")  # type: ignore[arg-type]
            + " |"
        )
    lines += [
        "",
        "The same in process on the app tables alone (`pg_dump -Fc -Z0 -t users -t bots "
        "-t trades`: ids, timestamps, numerics, jsonb), data with more structure than the md5 "
        "filler that dominates the pgbench table:",
        "",
        "| method | size | % of raw archive | compress s | decompress s |",
        "|---|---|---|---|---|",
    ]
    for c in b.compression_app:
        size, raw = int(c["size"]), int(c["raw"])  # type: ignore[call-overload]
        decomp = c.get("decomp")
        lines.append(
            f"| {c['method']} | {_mib(size)} | {100 * size / raw:.1f} % | "
            f"{statistics.median(c['inproc']):.2f} | "  # type: ignore[arg-type]
            + (f"{statistics.median(decomp):.2f}" if decomp else "-")  # type: ignore[arg-type]
            + " |"
        )
    lines += [
        "",
        "Reference outside the benchmark's data: structured text (the first 32 MiB of Python's "
        "standard library sources), in process:",
        "",
        "| method | size | % of raw | compress s |",
        "|---|---|---|---|",
    ]
    for c in b.compression_text:
        size, raw = int(c["size"]), int(c["raw"])  # type: ignore[call-overload]
        lines.append(
            f"| {c['method']} | {_mib(size)} | {100 * size / raw:.1f} % | "
            f"{statistics.median(c['inproc']):.2f} |"  # type: ignore[arg-type]
        )
    from tasks.core.artefacts import ZSTD_JOB_SIZE

    lines += [
        "",
        "## Memory: zstd job size",
        "",
        "Multithreaded zstd buffers whole jobs (input and output) per worker. dr's backup code "
        "path (`backup_database` in a fresh interpreter with the CLI's imports, 2 threads, level "
        f"3) with zstd's default job size against dr's `ZSTD_JOB_SIZE` ({ZSTD_JOB_SIZE >> 20} "
        "MiB), interleaved:",
        "",
        "| zstd job size | median s | min s | max s | peak RSS (VmHWM) | artefact |",
        "|---|---|---|---|---|---|",
    ]
    for label, rows in b.job_size.items():
        walls = [w for w, _, _ in rows]
        lines.append(
            f"| {label} | {statistics.median(walls):.2f} | {min(walls):.2f} | {max(walls):.2f} "
            f"| {max(k for _, k, _ in rows) / 1024:.0f} MiB | {_mib(rows[-1][2])} |"
        )
    lt = b.listing
    lines += [
        "",
        f"## `dr restore --list` with {LIST_BACKUPS:,} backups",
        "",
        f"One real backup of a tiny database, copied under {LIST_BACKUPS - 1} new valid ids "
        "(each manifest rewritten, so its checksum holds). Every run reads and checks all "
        f"{LIST_BACKUPS:,} manifests.",
        "",
        "| command | median s | min s | max s | peak RSS |",
        "|---|---|---|---|---|",
        *[f"| {_cell(s.name)} | {_times(s)} | {_rss(s)} |" for s in lt.values()],
        f"| `Catalog.list()` in process (no interpreter start), as dr reads a local dir | "
        f"{b.list_inproc[0]:.2f} | | | |",
        f"| `Catalog.list()` in process, manifests read through a thread pool (S3's path) | "
        f"{b.list_inproc[1]:.2f} | | | |",
        "",
        "## What this means",
        "",
        *what_it_means(b),
        "",
    ]
    return "\n".join(lines)


def _target(what: str, measured: str, ok: bool) -> str:
    return f"| {_cell(what)} | {measured} | {'**met**' if ok else '**not met**'} |"


def what_it_means(b: Bench) -> list[str]:
    bk, rs = b.backup, b.restore
    fc, zs, drb, z0 = bk["fc"].median, bk["zstd"].median, bk["dr"].median, bk["z0"].median
    raw_r, drr, zr = rs["raw"].median, rs["dr"].median, rs["zstd"].median
    z0r, piped = rs["z0"].median, rs["piped"].median
    st = b.stages
    fetch, after = st[FETCH_STAGE], st[LOAD_STAGE]
    counts = st[COUNT_STAGE]
    streamed = ", ".join(f"`{t}`" for t in b.loaded_during_fetch) or "no table"
    lv = {int(c["level"]): c for c in b.compression if "level" in c}  # type: ignore[call-overload]
    size = {k: int(c["size"]) for k, c in lv.items()}  # type: ignore[call-overload]
    pipe = {k: c["pipeline"].median for k, c in lv.items()}  # type: ignore[union-attr]
    text = {str(c["method"]): int(c["size"]) for c in b.compression_text}  # type: ignore[call-overload]
    lt = b.listing
    imports = lt["empty"].median
    render = lt["list"].median - imports - b.list_inproc[0]
    js = {k: max(kib for _, kib, _ in v) for k, v in b.job_size.items()}
    default = "zstd default (0)"
    ours = next(k for k in js if k.endswith("(dr)"))
    out = [
        f"- **Backup.** `dr backup` took {drb:.1f} s: {fc / drb:.1f}x faster than "
        f"`pg_dump -Fc` ({fc:.1f} s; zlib inside pg_dump is the bottleneck) and "
        f"{drb / zs:.2f}x the `-Z0 | zstd` pipeline ({zs:.1f} s, zstd's default level 3: the "
        f"target's reference; {drb / pipe[1]:.2f}x the same pipeline at level 1, dr's level, "
        f"{pipe[1]:.1f} s). The dump alone, uncompressed, "
        f"takes {z0:.1f} s; on 2 cores zstd runs beside pg_dump and the server backend. "
        + (
            "dr's extra work (snapshot transaction, exact counts in the same snapshot, sha256, "
            "fsync, manifest) hides in the same wall time."
            if drb <= 1.10 * zs
            else "dr's extra work (interpreter start, snapshot transaction, exact counts, "
            "sha256, fsync, manifest) shows: on a small dataset the fixed costs dominate."
        ),
        f"- **Restore.** `dr restore` took {drr:.1f} s against {raw_r:.1f} s for raw "
        f"`pg_restore -j{JOBS}` from the zlib archive ({drr / raw_r:.2f}x). In the timed run: "
        "the fetch (read + sha256, zstd decompression and the write to a temp file, on three "
        f"threads) took {fetch:.1f} s, and while it ran the side database got its schema "
        f"(`pg_restore --section=pre-data`) and {streamed} started loading, each table through "
        "its own `pg_restore | psql` reading the temp file behind the writer "
        "(tasks/core/engines/pgstream.py); after the sha256 held, "
        f"{after:.1f} s more until the last table and index were in (the loads begun during "
        f"the fetch, the small tables and post-data in `-j{JOBS}` passes), then counts "
        f"{counts:.2f} s (a `count(*)` of each table but those loaded during the fetch, whose "
        "count is the row count the server reported for their `COPY`); about "
        f"{imports:.1f} s of interpreter start comes on top. "
        "The archive dr stores went through a pipe, so its table of contents has no data "
        "offsets; dr fills them in while it decompresses (tasks/core/engines/pgarchive.py), so "
        f"the passes after the fetch seek instead of reading forward. Same bytes, restored raw: "
        f"{z0r:.1f} s with offsets (`pg_dump -Z0 -f`) vs {piped:.1f} s without "
        f"({piped / z0r:.2f}x"
        + (", the cost the offsets save)." if piped > 1.05 * z0r else ", no measurable cost here).")
        + f" Doing it by hand (`zstd -d` to a file, then `pg_restore`) took {zr:.1f} s. "
        + (
            "Loading the big tables while the archive is still arriving hides the fetch, and "
            "their counts come with their `COPY` instead of a second scan; what is left of dr's "
            "own work fits in what raw `pg_restore` spends inflating zlib."
            if drr <= 1.15 * raw_r
            else "What remains against raw `pg_restore` of the zlib archive: the biggest "
            "table's load and its index build are the critical path for both, and dr adds the "
            "interpreter start, the side database and the counts of the small tables; the loads "
            "that run beside the fetch share the two cores with it."
        ),
        "- **Compression level.** zstd level 1 / 3 / 6 / 9 give "
        + " / ".join(f"{_mib(size[k])}" for k in sorted(size))
        + " in pipelines of "
        + " / ".join(f"{pipe[k]:.1f} s" for k in sorted(pipe))
        + f", against zlib's {_mib(bk['fc'].size)} in {fc:.1f} s. "
        + level_verdict(size, pipe, z0, text),
        f"- **Memory.** During a backup the dr process peaked at {js[default] / 1024:.0f} MiB "
        f"with zstd's default job size and at {js[ours] / 1024:.0f} MiB with "
        f"{ours.replace(' (dr)', '')} jobs, for the same artefact size: "
        "that is why `ZSTD_JOB_SIZE` is set. `dr restore` peaked at "
        f"{_dr_rss_kib(rs['dr']) / 1024:.0f} MiB (no compressor).",
        f"- **Custom vs directory format.** `pg_dump -Fd -j{JOBS}` took "
        f"{bk['fd'].median:.1f} s (gzip, like `-Fc`) and its `pg_restore -j{JOBS}` "
        f"{rs['fd'].median:.1f} s vs {raw_r:.1f} s for the custom archive. dr keeps one "
        "custom-format archive compressed with zstd as one stream: a single object with a "
        "single sha256 that streams to several locations (S3 multipart) without a directory "
        "tree, restored with `-j` after decompressing it to a seekable temp file (`pg_restore` "
        "≥ 12 scans forward for the data offsets a piped archive lacks, at the cost measured "
        "above).",
        f"- **`--list`** with {LIST_BACKUPS:,} backups took {lt['list'].median:.2f} s: "
        f"{imports:.2f} s interpreter start and imports (the empty-catalog row), "
        f"{b.list_inproc[0]:.2f} s reading and checking the manifests, and about "
        f"{render:.2f} s rendering the table (`--json` prints the same listing in "
        f"{lt['json'].median:.2f} s).",
    ]
    return out


def level_verdict(
    size: dict[int, int],
    pipe: dict[int, float],
    z0: float,
    text: dict[str, int],
) -> str:
    """Why dr's zstd level, from the figures."""
    fastest = min(pipe, key=lambda k: pipe[k])
    smallest = min(size, key=lambda k: size[k])
    facts = (
        f"Fastest pipeline: level {fastest} ({pipe[fastest]:.1f} s; the dump alone takes "
        f"{z0:.1f} s); smallest output: level {smallest} ({_mib(size[smallest])}). "
    )
    t1, t3 = text.get("zstd level 1", 0), text.get("zstd level 3", 0)
    text_note = (
        f"On structured text level 3 is {100 * (1 - t3 / t1):.0f} % smaller than level 1 "
        "(reference table). "
        if t1 and t3
        else ""
    )
    ours = f"dr uses level {ZSTD_LEVEL} (`artefacts.ZSTD_LEVEL`). "
    if pipe[1] <= pipe[3] and size[1] <= size[3]:
        return (
            facts + ours + f"On this benchmark's data level 1 is both faster ({pipe[1]:.1f} vs "
            f"{pipe[3]:.1f} s) and smaller ({_mib(size[1])} vs {_mib(size[3])}) than level 3: "
            "the random md5 hex text (filler, and the ids in the app tables' jsonb) has no long "
            "matches to find, and the short ones level 3 finds cost more than the literals. The "
            "app tables alone (ids, timestamps, numerics, jsonb: table below) say the same, and "
            "level 1 also decompresses faster, which shortens every restore's fetch. "
            + text_note
            + "Database dumps are rows, not prose: level 1 "
            + ("is the choice." if ZSTD_LEVEL == 1 else "would be the choice.")
        )
    if pipe[3] <= 1.10 * pipe[fastest] and size[3] <= 1.02 * size[smallest]:
        return facts + ours + "Level 3 is within 10 % of the fastest and 2 % of the smallest."
    return (
        facts
        + ours
        + (
            f"Level 3 is {pipe[3] / pipe[fastest]:.2f}x the fastest pipeline here; level "
            f"{fastest} would be the choice where backup time matters more than storage."
        )
    )


def _loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"


def _cell(text: str) -> str:
    """Markdown table cell: a ``|`` even inside backticks would split the cell."""
    return text.replace("|", "\\|")


# ---- main -----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=50, help="pgbench scale (default 50; ≥ 20)")
    ap.add_argument("--runs", type=int, default=3, help="runs per operation (default 3)")
    ap.add_argument("--output", type=Path, default=DOC, help="report path (docs/benchmarks.md)")
    args = ap.parse_args()
    if args.scale < 1 or args.runs < 1:
        ap.error("--scale and --runs must be positive")
    if args.scale < 20:
        log(f"scale {args.scale} < 20: a development run; the report will say so")
    for tool in ("pg_dump", "pg_restore", "pgbench", "zstd"):
        if not shutil.which(tool):
            ap.error(f"{tool} not found on PATH")
    if not TIME.exists():
        ap.error("/usr/bin/time missing: apt-get install time")
    if not DR.exists():
        ap.error(f"{DR} missing: pip install -e . in the venv")
    command = ".venv/bin/python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    started = datetime.now(UTC)
    scratch = Path(tempfile.mkdtemp(prefix="dr-bench-"))
    cluster = PgCluster(base=Path(tempfile.mkdtemp(prefix="dr-bench-pg-")), settings=SETTINGS)
    try:
        log("byte-compiling flows/ and tasks/ (as any installation has them after a first run)")
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(ROOT / "flows"), str(ROOT / "tasks")],
            check=True,
        )
        log(f"starting a throwaway cluster in {cluster.base} (port {cluster.port})")
        cluster.start()
        b = Bench(args.scale, args.runs, scratch, cluster)
        b.machine_facts()
        b.load()
        out = scratch / "out"
        out.mkdir()
        b.bench_backups(out)
        b.bench_restores()
        b.bench_compression()
        b.bench_compression_app()
        b.bench_job_size()
        b.bench_list()
        b.facts["load average at end"] = _loadavg()
        text = report(b, command.strip(), started, time.monotonic() - T0)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + kept_sections(args.output), encoding="utf-8")
        log(f"wrote {args.output}")
        print(text[text.index("## Backup") : text.index("## Compression")])
    finally:
        log("cleaning up the cluster and temp dirs")
        try:
            cluster.stop(remove=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


_KEPT = re.compile(r"<!-- bench:([\w-]+) -->.*?<!-- /bench:\1 -->", flags=re.S)


def kept_sections(path: Path) -> str:
    """The ``<!-- bench:NAME -->`` … ``<!-- /bench:NAME -->`` blocks other benchmarks wrote."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    return "".join(f"\n{m.group(0)}\n" for m in _KEPT.finditer(old))


if __name__ == "__main__":
    sys.exit(main())
