"""Runbook "Testing Schedule": the quarterly DR drill runs a chosen scenario end to end against
staging with consent given up front; the annual rebuild drill runs infrastructure-loss against an
empty staging target. Both measure RTO and RPO against the objectives, keep the result, and fail
(and notify) when an objective is missed."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.states import State

from flows._ops import finish, record
from flows.data_loss import data_loss
from flows.database_corruption import database_corruption
from flows.infrastructure_loss import infrastructure_loss
from flows.security_breach import security_breach
from tasks.core.config import load_config


class DrillScenario(enum.StrEnum):
    database_corruption = "database-corruption"
    data_loss = "data-loss"
    security_breach = "security-breach"
    infrastructure_loss = "infrastructure-loss"


def _drill(config: str, scenario: DrillScenario, database: str, name: str) -> State[Any]:
    cfg = load_config(config or None)
    started = datetime.now(UTC)
    common: dict[str, Any] = {
        "config": config,
        "database": database,
        "confirm": True,
        "return_state": True,
    }
    if scenario is DrillScenario.database_corruption:
        state = database_corruption(**common)
    elif scenario is DrillScenario.data_loss:
        state = data_loss(deleted_at=started, **common)
    elif scenario is DrillScenario.security_breach:
        state = security_breach(breach_at=started, **common)
    else:
        state = infrastructure_loss(**common)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):
        summary = {"outcome": str(summary), "rto_s": None, "rpo_s": None, "report": ""}
    rto_obj, rpo_obj = cfg.objectives.rto_minutes * 60, cfg.objectives.rpo_minutes * 60
    rto, rpo = summary.get("rto_s"), summary.get("rpo_s")
    failures = []
    if not state.is_completed():
        failures.append(f"{scenario.value} ended {state.type.value}: {state.message}")
    if rto is None or rto > rto_obj:
        failures.append(
            "RTO not reached"
            if rto is None
            else f"RTO {rto / 60:.1f} min over the objective of {rto_obj / 60:g} min"
        )
    if rpo is not None and rpo > rpo_obj:
        failures.append(f"RPO {rpo / 60:.1f} min over the objective of {rpo_obj / 60:g} min")
    record(
        cfg,
        "drill",
        scenario.value,
        started,
        not failures,
        "; ".join(failures) or summary.get("outcome", ""),
        rto_s=rto,
        rpo_s=rpo,
        rto_objective_s=rto_obj,
        rpo_objective_s=rpo_obj,
        extra={"drill": name},
    )
    row = {
        "scenario": scenario.value,
        "outcome": summary.get("outcome", ""),
        "rto_min": None if rto is None else round(rto / 60, 2),
        "rpo_min": None if rpo is None else round(rpo / 60, 2),
        "rto_objective_min": rto_obj / 60,
        "rpo_objective_min": rpo_obj / 60,
    }
    return finish(cfg, name, [row], failures, summary.get("report") or None)


@flow(name="dr-drill", log_prints=True)
def dr_drill(
    config: str = "",
    scenario: DrillScenario = DrillScenario.database_corruption,
    database: str = "main",
) -> State[Any]:
    """Run a disaster scenario for real against staging and prove the objectives.

    Args:
        config: path of the STAGING environment's dr.toml
        scenario: which runbook scenario to drill
        database: which database of the config
    """
    return _drill(config, scenario, database, "dr-drill")


@flow(name="rebuild-drill", log_prints=True)
def rebuild_drill(config: str = "", database: str = "main") -> State[Any]:
    """Annual complete rebuild: infrastructure-loss against an empty staging target.

    Args:
        config: path of the staging environment's dr.toml whose targets start empty
        database: which database of the config
    """
    return _drill(config, DrillScenario.infrastructure_loss, database, "rebuild-drill")
