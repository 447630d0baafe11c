"""What runs the application: scale it down and up, wait for it, restart it, give it secrets.

One protocol, two implementations: ``kubernetes.KubernetesPlatform`` (Deployments and
StatefulSets through the official client) and ``local.LocalPlatform`` (local processes, the
embedded default). Workloads are named as in the config (``backend``); each platform knows what a
name stands for. ``scale_down`` returns the replica counts it found so that ``scale_up`` restores
exactly those: the inverse of every scale-down is recorded before anything is changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tasks.core.errors import DRError, TransientError

__all__ = ["Platform", "ScaleState", "poll_until_ready", "scale_all"]


@dataclass(frozen=True)
class ScaleState:
    """Replica counts before a scale-down, so scale_up restores exactly those."""

    replicas: dict[str, int]  # workload name -> replicas it had


class Platform(Protocol):
    """What runs the application. Every method raises ConfigError for a workload name the
    platform was not configured with (before changing anything), TransientError when the
    platform is unreachable, PermanentError when retrying will not help."""

    name: str  # "kubernetes" | "local"

    def replicas(self, workloads: Sequence[str]) -> dict[str, int]:
        """The replicas each workload is meant to run now (desired, not ready)."""

    def scale_down(self, workloads: Sequence[str]) -> ScaleState:
        """Scale every workload to 0 and return the replicas each had before. If one fails,
        the error says which were already scaled down and what they had."""

    def scale_up(self, state: ScaleState) -> None:
        """Set every workload in ``state`` back to exactly the replicas recorded there."""

    def wait_ready(self, workloads: Mapping[str, int], timeout_s: float) -> dict[str, int]:
        """Wait until each workload has at least the given ready replicas; a target of 0 means
        until nothing of it runs any more. Returns the counts seen last (for a target of 0: what
        still runs). Raises TransientError naming the laggards when ``timeout_s`` has passed."""

    def rollout_restart(self, workloads: Sequence[str]) -> None:
        """Replace the running instances so that they pick up new secrets and configuration;
        a workload scaled to 0 stays at 0. Does not wait: use ``wait_ready``."""

    def read_secret(self, name: str) -> dict[str, str]:
        """The decoded values of secret ``name``; ConfigError if it does not exist."""

    def write_secret(self, name: str, values: Mapping[str, str]) -> None:
        """Create secret ``name`` or update it: keys in ``values`` are set, other keys kept."""

    def apply_manifests(self, directory: Path) -> list[str]:
        """Apply every manifest in ``directory`` (server-side apply, idempotent) and return
        ``Kind/name`` for each object applied. ConfigError when the platform has none."""


def scale_all(
    targets: Mapping[str, int],
    set_replicas: Callable[[str, int], None],
    *,
    undo: Mapping[str, int] | None = None,
) -> None:
    """Call ``set_replicas(name, replicas)`` for each workload, in order.

    When one fails, its error is re-raised (same class) saying which workloads were already
    changed and, given ``undo``, the replicas that restore them: a half-finished scale leaves a
    reported state, not a guess.
    """
    done: list[str] = []
    for name, replicas in targets.items():
        try:
            set_replicas(name, replicas)
        except DRError as exc:
            changed = ", ".join(f"{n}={targets[n]}" for n in done) or "none"
            note = f"already set before the failure: {changed}"
            if undo is not None:
                note += "; replicas before: " + ", ".join(f"{n}={r}" for n, r in undo.items())
            raise type(exc)(f"{exc} ({note})") from exc
        done.append(name)


def poll_until_ready(
    targets: Mapping[str, int],
    observe: Callable[[str, int], int],
    timeout_s: float,
    interval_s: float,
) -> dict[str, int]:
    """Poll ``observe(name, target)`` until every workload meets its target, or the deadline.

    A workload meets a target of 0 when it observes 0, any other target when it observes at
    least that many. Observes at least once, even with a zero timeout. A TransientError from
    ``observe`` (an API blip) only counts as "not yet". Raises TransientError naming every
    workload still short of its target when ``timeout_s`` has passed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            seen = {name: observe(name, target) for name, target in targets.items()}
            failure = None
        except TransientError as exc:
            failure = exc
        if failure is None:
            lagging = [
                (name, n, targets[name])
                for name, n in seen.items()
                if (n != 0 if targets[name] == 0 else n < targets[name])
            ]
            if not lagging:
                return seen
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            waited = f"timed out after {timeout_s:g}s waiting for workloads"
            if failure is not None:
                raise TransientError(f"{waited}: {failure}") from failure
            detail = ", ".join(
                f"{name} still running ({n})" if target == 0 else f"{name} {n}/{target} ready"
                for name, n, target in lagging
            )
            raise TransientError(f"{waited}: {detail}")
        time.sleep(min(interval_s, remaining))
