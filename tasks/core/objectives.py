"""Recovery objectives, measured: RTO = scenario start -> service healthy; RPO = incident time ->
time of the recovery point used. Every scenario and drill records both next to the objectives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tasks.core.config import Objectives

__all__ = ["Measurement"]


@dataclass(frozen=True)
class Measurement:
    objectives: Objectives
    started_at: datetime
    healthy_at: datetime | None = None  # None: the service never became healthy
    incident_at: datetime | None = None  # when the data went bad (default: scenario start)
    recovery_point: datetime | None = None  # the instant the restored data is from

    @property
    def rto_s(self) -> float | None:
        return (
            None if self.healthy_at is None else (self.healthy_at - self.started_at).total_seconds()
        )

    @property
    def rpo_s(self) -> float | None:
        if self.recovery_point is None:
            return None
        incident = self.incident_at or self.started_at
        return max(0.0, (incident - self.recovery_point).total_seconds())

    @property
    def rto_met(self) -> bool | None:
        rto = self.rto_s
        return None if rto is None else rto <= self.objectives.rto_minutes * 60

    @property
    def rpo_met(self) -> bool | None:
        rpo = self.rpo_s
        return None if rpo is None else rpo <= self.objectives.rpo_minutes * 60
