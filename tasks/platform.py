"""Platform steps (scale, wait, restart, apply) as Prefect tasks over tasks/core/platform."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tasks._base import audited, dr_task
from tasks.core.config import Config
from tasks.core.environment import open_platform
from tasks.core.platform import ScaleState


@dr_task(retries=2)
def scale_down_workloads(cfg: Config, workloads: Sequence[str]) -> ScaleState:
    """Scale to 0 and return the replicas each had: the recorded inverse of this step."""
    with audited(cfg, "scale", ", ".join(workloads), "to 0"), open_platform(cfg) as platform:
        return platform.scale_down(workloads)


@dr_task(retries=3)
def scale_up_workloads(cfg: Config, state: ScaleState) -> None:
    target = ", ".join(f"{w}={n}" for w, n in state.replicas.items())
    with audited(cfg, "scale", target, "back up"), open_platform(cfg) as platform:
        platform.scale_up(state)


@dr_task()
def wait_ready(cfg: Config, replicas: Mapping[str, int], timeout_s: float) -> dict[str, int]:
    with open_platform(cfg) as platform:
        return platform.wait_ready(replicas, timeout_s)


@dr_task(retries=2)
def rollout_restart(cfg: Config, workloads: Sequence[str]) -> None:
    with open_platform(cfg) as platform:
        platform.rollout_restart(workloads)


@dr_task(retries=2)
def current_replicas(cfg: Config, workloads: Sequence[str]) -> dict[str, int]:
    with open_platform(cfg) as platform:
        return platform.replicas(workloads)
