"""How every Prefect task of this project is declared: never cached, retried only on
TransientError (storage or cluster unreachable, timeouts); permanent errors fail at once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from tasks.core import audit, environment
from tasks.core.audit import AuditRecord
from tasks.core.config import Config
from tasks.core.dburl import redact
from tasks.core.errors import TransientError

F = TypeVar("F", bound=Callable[..., Any])


def _transient_only(task_: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    try:
        state.result(raise_on_failure=True)
    except TransientError:
        return True
    except BaseException:
        return False
    return False


def _read_secret_block(name: str) -> str:
    """The value of the Prefect Secret block ``name`` ([encryption] key_block)."""
    from prefect.blocks.system import Secret

    value = Secret.load(name).get()  # type: ignore[union-attr]
    return str(value)


environment.SECRET_BLOCK_READER = _read_secret_block


@contextlib.contextmanager
def audited(cfg: Config, action: str, target: str, detail: str = "") -> Iterator[None]:
    """Append the action's outcome to the audit trail (tasks/core/audit.py). In a flow the
    approval is the flow run's own approval step, named by the run; outside one, the caller."""
    from prefect.runtime import flow_run

    run_id = str(flow_run.id) if flow_run.id else None
    approved = (
        f"{flow_run.flow_name} flow run {flow_run.name} (its approval step or confirm=True)"
        if run_id
        else "direct call"
    )

    def write(outcome: str) -> None:
        rec = AuditRecord(
            datetime.now(UTC), action, target, outcome, approved,
            environment=cfg.environment, detail=detail, flow_run=run_id,
        )  # fmt: skip
        refused = audit.record(environment.build_locations(cfg), rec)
        if refused:
            get_run_logger().warning("audit record not written to %s", ", ".join(refused))

    try:
        yield
    except BaseException as exc:
        write(f"failed: {redact(str(exc)) or type(exc).__name__}")
        raise
    write("ok")


def dr_task(*, retries: int = 0, name: str | None = None) -> Callable[[F], F]:
    """``@task`` with NO_CACHE (a restore must run every time it is called; notes/prefect.md §4)
    and retries with backoff for transient errors only."""

    def wrap(fn: F) -> F:
        return task(  # type: ignore[return-value]
            fn,
            name=name or fn.__name__.replace("_", "-"),
            cache_policy=NO_CACHE,
            retries=retries,
            retry_delay_seconds=[2, 10, 30][:retries] or 0,
            retry_condition_fn=_transient_only if retries else None,
            log_prints=True,
        )

    return wrap


@contextlib.contextmanager
def progress_artifact(
    key: str, description: str, total: int | None
) -> Iterator[Callable[[int], None]]:
    """A Prefect progress artifact fed with byte counts; updated every 5 % (each update is an
    API call), capped at 99 % until the work is done. ``total`` may be an estimate or None."""
    artifact = create_progress_artifact(progress=0.0, key=key, description=description)
    done, shown = 0, 0.0

    def advance(n: int) -> None:
        nonlocal done, shown
        done += n
        if not total:
            return
        pct = min(99.0, done * 100 / total)
        if pct - shown >= 5:
            update_progress_artifact(artifact_id=artifact, progress=pct)
            shown = pct

    yield advance
    update_progress_artifact(artifact_id=artifact, progress=100.0)
