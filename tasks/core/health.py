"""Health checks: GET each URL until every one answers as expected, or a deadline passes.

Returns a result per URL rather than raising: the flow decides what an unhealthy service means
(fail the scenario, keep workloads as they are, say so in the report).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from tasks.core.config import HealthCheck

__all__ = ["HealthResult", "check_health"]


@dataclass(frozen=True)
class HealthResult:
    url: str
    healthy: bool
    status: int | None  # last HTTP status, None if no answer
    detail: str  # last problem, or "ok"
    attempts: int
    elapsed_s: float


def _probe(client: httpx.Client, check: HealthCheck) -> tuple[bool, int | None, str]:
    try:
        resp = client.get(check.url, timeout=httpx.Timeout(check.timeout_s))
    except httpx.HTTPError as exc:
        return False, None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if resp.status_code != check.expect_status:
        return False, resp.status_code, f"HTTP {resp.status_code}, expected {check.expect_status}"
    return True, resp.status_code, "ok"


def check_health(
    checks: Sequence[HealthCheck],
    *,
    deadline_s: float,
    interval_s: float = 2.0,
    client: httpx.Client | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[HealthResult]:
    """Probe every check until all are healthy or ``deadline_s`` has passed."""
    own = client is None
    http = client or httpx.Client(follow_redirects=True)
    start = clock()
    state: dict[str, tuple[bool, int | None, str, int, float]] = {}
    try:
        while True:
            for check in checks:
                done = state.get(check.url)
                if done and done[0]:
                    continue
                ok, status, detail = _probe(http, check)
                attempts = (done[3] if done else 0) + 1
                state[check.url] = (ok, status, detail, attempts, clock() - start)
            if all(state[c.url][0] for c in checks) or clock() - start >= deadline_s:
                break
            sleep(min(interval_s, max(0.0, deadline_s - (clock() - start))))
    finally:
        if own:
            http.close()
    return [HealthResult(c.url, *state[c.url]) for c in checks]
