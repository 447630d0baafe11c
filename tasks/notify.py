"""Notifications: each configured target is a Prefect notification block (by name) or a webhook
whose URL is in an environment variable. A failing target is logged, never fatal: a recovery
must not stop because the chat is down."""

from __future__ import annotations

import os
from collections.abc import Sequence

from prefect import get_run_logger
from prefect.blocks.core import Block

from tasks._base import dr_task
from tasks.core.config import Config
from tasks.core.errors import DRError
from tasks.core.notify import post_webhook


@dr_task()
def notify(
    cfg: Config, subject: str, body: str, audiences: Sequence[str] = ("on-call",)
) -> list[str]:
    """Send to every target whose audience is in ``audiences``; returns the targets reached."""
    return deliver(cfg, subject, body, audiences)


def deliver(cfg: Config, subject: str, body: str, audiences: Sequence[str]) -> list[str]:
    """``notify`` without a task of its own, for tasks that send several messages."""
    log = get_run_logger()
    reached: list[str] = []
    for target in cfg.notifications:
        if target.audience not in audiences:
            continue
        name = target.block or target.webhook_url_env or "?"
        try:
            if target.block:
                Block.load(target.block).notify(body=body, subject=subject)  # type: ignore[attr-defined]
            elif target.webhook_url_env:
                url = os.environ.get(target.webhook_url_env)
                if not url:
                    raise DRError(f"{target.webhook_url_env} is not set")
                post_webhook(url, subject, body)
            reached.append(f"{target.audience}:{name}")
        except Exception as exc:
            log.warning("notification to %s (%s) failed: %s", target.audience, name, exc)
    return reached
