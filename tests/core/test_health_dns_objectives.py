"""Health checks against a real local HTTP app, Route53 through moto's server, RTO/RPO maths."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from tasks.core.config import DnsConfig, DnsRecord, HealthCheck, Objectives
from tasks.core.dns import update_dns
from tasks.core.errors import ConfigError
from tasks.core.health import check_health
from tasks.core.objectives import Measurement


class _App:
    """A real HTTP app whose /health turns healthy after ``fail_first`` requests."""

    def __init__(self, fail_first: int) -> None:
        self.calls = 0
        self.fail_first = fail_first
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                app.calls += 1
                healthy = app.calls > app.fail_first and self.path == "/health"
                self.send_response(200 if healthy else 503)
                self.end_headers()
                self.wfile.write(b"ok" if healthy else b"starting")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def app() -> Iterator[_App]:
    a = _App(fail_first=2)
    yield a
    a.server.shutdown()
    a.server.server_close()


def test_health_retries_until_healthy(app: _App) -> None:
    [result] = check_health([HealthCheck(url=f"{app.url}/health")], deadline_s=10, interval_s=0.05)
    assert result.healthy
    assert result.status == 200
    assert result.attempts == 3


def test_health_reports_what_failed_at_the_deadline(app: _App) -> None:
    results = check_health(
        [
            HealthCheck(url=f"{app.url}/health"),
            HealthCheck(url=f"{app.url}/missing"),
            HealthCheck(url="http://127.0.0.1:9/health", timeout_s=0.5),
        ],
        deadline_s=0.6,
        interval_s=0.05,
    )
    by_url = {r.url: r for r in results}
    assert by_url[f"{app.url}/health"].healthy
    assert not by_url[f"{app.url}/missing"].healthy
    assert by_url[f"{app.url}/missing"].detail == "HTTP 503, expected 200"
    refused = by_url["http://127.0.0.1:9/health"]
    assert not refused.healthy
    assert refused.status is None
    assert "ConnectError" in refused.detail


def test_route53_upsert_waits_for_insync(moto_endpoint: str) -> None:
    r53 = boto3.client("route53")
    zone = r53.create_hosted_zone(
        Name="cryptoorchestrator.com", CallerReference=str(datetime.now())
    )["HostedZone"]["Id"]
    cfg = DnsConfig(
        zone_id=zone.split("/")[-1],
        records=(
            DnsRecord(name="api.cryptoorchestrator.com", value="lb-new.example.com"),
            DnsRecord(name="app.cryptoorchestrator.com", type="A", value="203.0.113.7", ttl=30),
        ),
    )
    change = update_dns(cfg, client=r53)
    assert change.status == "INSYNC"
    sets = r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    values = {
        (s["Name"], s["Type"]): s["ResourceRecords"][0]["Value"]
        for s in sets
        if s["Type"] in ("A", "CNAME")
    }
    assert values == {
        ("api.cryptoorchestrator.com.", "CNAME"): "lb-new.example.com",
        ("app.cryptoorchestrator.com.", "A"): "203.0.113.7",
    }
    update_dns(cfg, client=r53)  # UPSERT: running it again is harmless


def test_route53_unknown_zone_is_a_config_error(moto_endpoint: str) -> None:
    cfg = DnsConfig(zone_id="ZNOPE", records=(DnsRecord(name="a.example.com", value="b"),))
    with pytest.raises(ConfigError, match="hosted zone 'ZNOPE' does not exist"):
        update_dns(cfg, client=boto3.client("route53"))


T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("healthy_after", "incident_before_start", "point_before_incident", "rto_met", "rpo_met"),
    [
        (timedelta(minutes=42), timedelta(minutes=5), timedelta(minutes=10), True, True),
        (timedelta(minutes=61), timedelta(0), timedelta(minutes=10), False, True),
        (timedelta(minutes=30), timedelta(0), timedelta(hours=20), True, False),
        (None, timedelta(0), timedelta(minutes=1), None, True),
    ],
)
def test_objectives(
    healthy_after: timedelta | None,
    incident_before_start: timedelta,
    point_before_incident: timedelta,
    rto_met: bool | None,
    rpo_met: bool,
) -> None:
    incident = T0 - incident_before_start
    m = Measurement(
        Objectives(),
        started_at=T0,
        healthy_at=None if healthy_after is None else T0 + healthy_after,
        incident_at=incident,
        recovery_point=incident - point_before_incident,
    )
    assert m.rto_met is rto_met
    assert m.rpo_met is rpo_met
    assert m.rpo_s == point_before_incident.total_seconds()
