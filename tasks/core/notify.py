"""Notifications through a plain webhook (JSON POST). Prefect notification blocks (Slack, Teams,
PagerDuty, ...) are used from the task layer; this is the Prefect-free path."""

from __future__ import annotations

import httpx

from tasks.core.dburl import redact
from tasks.core.errors import TransientError

__all__ = ["post_webhook"]


def post_webhook(url: str, subject: str, body: str, *, timeout_s: float = 10) -> None:
    """POST ``{"subject", "text"}``; TransientError when it does not get a 2xx."""
    try:
        resp = httpx.post(
            url, json={"subject": subject, "text": f"{subject}\n{body}"}, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise TransientError(f"webhook unreachable: {type(exc).__name__}") from exc
    if not resp.is_success:
        raise TransientError(f"webhook answered HTTP {resp.status_code} ({redact(url)})")
