"""DNS cut-over through Route53: UPSERT the configured records, wait until the change is INSYNC."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3

from tasks.core.aws import aws_errors
from tasks.core.config import DnsConfig
from tasks.core.errors import TransientError

__all__ = ["DnsChange", "update_dns"]


@dataclass(frozen=True)
class DnsChange:
    change_id: str
    status: str  # INSYNC once every Route53 server answers with the new records
    records: list[str]  # "name TYPE value"
    elapsed_s: float


def update_dns(
    cfg: DnsConfig,
    *,
    client: Any | None = None,
    poll_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DnsChange:
    """UPSERT every record of ``cfg`` in one change batch; wait for INSYNC up to
    ``cfg.wait_insync_s`` (TransientError after that: the change stays applied)."""
    r53 = client or boto3.client("route53")
    missing = {
        "NoSuchHostedZone": f"Route53 hosted zone {cfg.zone_id!r} does not exist: fix dns.zone_id"
    }
    changes = [
        {
            "Action": "UPSERT",
            "ResourceRecordSet": {
                "Name": r.name,
                "Type": r.type,
                "TTL": r.ttl,
                "ResourceRecords": [{"Value": r.value}],
            },
        }
        for r in cfg.records
    ]
    start = clock()
    with aws_errors("Route53", f"update records in zone {cfg.zone_id}", missing):
        resp = r53.change_resource_record_sets(
            HostedZoneId=cfg.zone_id,
            ChangeBatch={"Comment": "dr-pipelines recovery", "Changes": changes},
        )
    info = resp["ChangeInfo"]
    change_id, status = info["Id"], info["Status"]
    while status != "INSYNC":
        if clock() - start >= cfg.wait_insync_s:
            raise TransientError(
                f"Route53 change {change_id} still {status} after "
                f"{cfg.wait_insync_s:.0f}s; the records are set, propagation "
                "is slow"
            )
        sleep(poll_s)
        with aws_errors("Route53", f"read change {change_id}"):
            status = r53.get_change(Id=change_id)["ChangeInfo"]["Status"]
    return DnsChange(
        change_id, status, [f"{r.name} {r.type} {r.value}" for r in cfg.records], clock() - start
    )
