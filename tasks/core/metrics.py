"""Prometheus metrics of an environment's backups, restore tests, drills and alerts.

Computed from the same facts as the monitor (catalog + run history, ``monitor.gather``) at every
scrape; nothing is kept in memory between scrapes. Three ways out (docs/monitoring.md):
``render`` (``dr metrics``), ``serve`` (``dr metrics --serve PORT``: ``/metrics`` over HTTP) and
``write_textfile`` (``dr metrics --textfile DIR``: node-exporter's textfile collector, written
atomically: a temporary file renamed into place).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client import write_to_textfile as _write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric

from tasks.core.config import Objectives
from tasks.core.monitor import Alert, Facts

__all__ = ["PREFIX", "TEXTFILE", "families", "registry", "render", "serve", "write_textfile"]

PREFIX = "dr"
TEXTFILE = "dr.prom"  # node-exporter reads *.prom only: the temporary file is never picked up


def families(
    facts: Facts, alerts: Sequence[Alert], objectives: Objectives, environment: str, now: datetime
) -> list[Metric]:
    """Every metric, as of ``now``. Gauges without a value (no backup yet, never verified) are
    left out rather than reported as 0."""

    def gauge(name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["environment", *labels])

    success = gauge(
        "backup_last_success_timestamp_seconds",
        "Unix time the newest good backup finished",
        ["database"],
    )
    age = gauge(
        "backup_age_seconds", "Age of the newest good backup (its recovery point)", ["database"]
    )
    size = gauge("backup_size_bytes", "Stored size of the newest good backup", ["database"])
    duration = gauge(
        "backup_duration_seconds", "Duration of the last backup run (or of the dump)", ["database"]
    )
    last_run = gauge("backup_last_run_ok", "1 if the last backup run succeeded", ["database"])
    verified = gauge(
        "backup_verification_ok",
        "1 if the last verification of the newest backup passed, 0 if it failed",
        ["database"],
    )
    count = gauge("backups", "Backups held per location", ["database", "location"])
    test_rto = gauge(
        "restore_test_rto_seconds", "Restore duration of the last restore test", ["database"]
    )
    drill_rto = gauge("drill_rto_seconds", "RTO measured by the last drill", ["scenario"])
    drill_rpo = gauge("drill_rpo_seconds", "RPO measured by the last drill", ["scenario"])
    objective = gauge("objective_seconds", "Recovery objectives", ["objective"])
    active = gauge("alert_active", "1 for every alert rule firing now", ["rule", "target"])
    total = gauge("alerts_active", "Number of alert rules firing now", [])
    env = environment

    for t in facts.targets:
        mine = [e for e in facts.backups if t.owns(e)]
        good = next((e for e in mine if e.good and e.manifest.consistent_at <= now), None)
        if good is not None:
            m = good.manifest
            success.add_metric([env, t.name], m.finished_at.timestamp())
            age.add_metric([env, t.name], (now - m.consistent_at).total_seconds())
            size.add_metric([env, t.name], m.size)
        runs = [r for r in facts.history if r.kind == "backup" and r.target == t.name]
        if runs:
            last_run.add_metric([env, t.name], 1 if runs[0].ok else 0)
            duration.add_metric(
                [env, t.name], (runs[0].finished_at - runs[0].started_at).total_seconds()
            )
        elif mine:
            m = mine[0].manifest
            duration.add_metric([env, t.name], (m.finished_at - m.started_at).total_seconds())
        if mine and mine[0].last_verification is not None:
            verified.add_metric([env, t.name], 1 if mine[0].last_verification.ok else 0)
        held: dict[str, int] = {}
        for e in mine:
            for loc in e.locations:
                held[loc.url] = held.get(loc.url, 0) + 1
        for url, n in held.items():
            count.add_metric([env, t.name, url], n)
        test = next(
            (r for r in facts.history if r.kind == "restore-test" and r.target == t.name), None
        )
        if test is not None and test.rto_s is not None:
            test_rto.add_metric([env, t.name], test.rto_s)
    drills: dict[str, tuple[float | None, float | None]] = {}
    for r in facts.history:  # newest first: the first record of a scenario is its last drill
        if r.kind == "drill":
            drills.setdefault(r.target, (r.rto_s, r.rpo_s))
    for scenario, (rto, rpo) in drills.items():
        if rto is not None:
            drill_rto.add_metric([env, scenario], rto)
        if rpo is not None:
            drill_rpo.add_metric([env, scenario], rpo)
    objective.add_metric([env, "rto"], objectives.rto_minutes * 60)
    objective.add_metric([env, "rpo"], objectives.rpo_minutes * 60)
    for a in alerts:
        active.add_metric([env, a.rule, a.target], 1)
    total.add_metric([env], len(alerts))
    return [
        success,
        age,
        size,
        duration,
        last_run,
        verified,
        count,
        test_rto,
        drill_rto,
        drill_rpo,
        objective,
        active,
        total,
    ]


class _Collector:
    def __init__(self, snapshot: Callable[[], list[Metric]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self.snapshot()


def registry(snapshot: Callable[[], list[Metric]]) -> CollectorRegistry:
    """A registry that computes ``snapshot()`` at every scrape (and nothing else)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(snapshot))
    return reg


def render(reg: CollectorRegistry) -> str:
    """The Prometheus text exposition format."""
    return generate_latest(reg).decode()


def serve(reg: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> tuple[WSGIServer, Thread]:  # noqa: S104 - a scrape target listens beyond localhost
    """``/metrics`` over HTTP in a daemon thread; ``port`` 0 picks a free one."""
    return start_http_server(port, addr, registry=reg)


def write_textfile(reg: CollectorRegistry, directory: Path) -> Path:
    """Write ``dr.prom`` into ``directory`` atomically (temporary file, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TEXTFILE
    _write_to_textfile(str(path), reg)
    return path
