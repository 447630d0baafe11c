"""``dr retention``, ``dr pin``, ``dr unpin`` and ``dr metrics``: retention and monitoring from
the command line, with no Prefect server. Registered on ``flows.cli``'s app (imported at the end
of flows/cli.py); same options, errors and exit codes as the other commands."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flows.cli import DebugOpt, JsonOpt, _emit_json, _errors, app, out
from tasks.core import retention
from tasks.core.audit import actor
from tasks.core.catalog import utcnow
from tasks.core.config import Config, RetentionConfig, load_config
from tasks.core.environment import build_catalog
from tasks.core.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client.core import Metric

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", envvar="DR_CONFIG", help="The environment's dr.toml."),
]


@app.command("retention")
def retention_cmd(
    config: ConfigOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan, delete nothing (the default).")
    ] = False,
    apply: Annotated[
        bool, typer.Option("--apply", help="Delete what the plan says (this is the consent).")
    ] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The GFS retention plan of [retention] in dr.toml (the runbook's table when absent):
    keep or delete per backup and location, with the reason. --apply deletes, manifest first."""
    with _errors(debug):
        if dry_run and apply:
            raise ConfigError("give --dry-run or --apply, not both")
        cfg = load_config(config)
        now = utcnow()
        catalog = build_catalog(cfg)
        listing = catalog.list()
        policy = retention.TieredPolicy.from_config(cfg.retention or RetentionConfig())
        # holds and S3 Object Lock: shown in the plan (a dry run too), never deleted by --apply
        decisions = retention.decide(catalog, listing.backups, policy, now)
        deleted = (
            retention.apply(
                catalog, listing.backups, decisions, now=now, approved_by=f"--apply ({actor()})"
            )
            if apply
            else 0
        )
        if as_json:
            _emit_json(
                {
                    "applied": apply,
                    "deleted": deleted,
                    "decisions": [
                        {
                            "backup_id": d.backup_id,
                            "database": d.database,
                            "location": d.location,
                            "keep": d.keep,
                            "reason": d.reason,
                            "locked": d.locked,
                        }
                        for d in decisions
                    ],
                }
            )
            return
        table = Table("backup", "database", "location", "decision", "reason", box=None)
        for d in decisions:
            verdict = "keep" if d.keep else ("DELETED" if apply else "delete")
            table.add_row(d.backup_id, d.database, d.location or "all", verdict, d.reason)
        out.print(table)
        tally = Counter((d.location or "all", d.keep) for d in decisions)
        locked = Counter(d.location for d in decisions if d.locked)
        for where in dict.fromkeys(d.location or "all" for d in decisions):
            out.print(
                f"{where}: keep {tally[(where, True)]}, "
                f"{'deleted' if apply else 'delete'} {tally[(where, False)]}"
                + (f" ({locked[where]} kept by S3 Object Lock)" if locked[where] else "")
            )
        if not apply:
            out.print("dry run: nothing deleted (dr retention --apply deletes)")


@app.command("pin")
def pin_cmd(
    backup_id: Annotated[str, typer.Argument(help="Backup id (or a unique prefix).")],
    reason: Annotated[str, typer.Option("--reason", help="Why it must be kept.")] = "",
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Keep a backup whatever the retention policy says, until dr unpin."""
    with _errors(debug):
        catalog = build_catalog(load_config(config))
        entry, where = retention.pin(catalog, backup_id, reason, utcnow())
        out.print(f"pinned {entry.backup_id} in {', '.join(where)}")


@app.command("unpin")
def unpin_cmd(
    backup_id: Annotated[str, typer.Argument(help="Pinned backup id (or a unique prefix).")],
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Let retention decide about a pinned backup again."""
    with _errors(debug):
        catalog = build_catalog(load_config(config))
        where = retention.unpin(catalog, backup_id)
        out.print(f"unpinned {backup_id} in {', '.join(where)}")


@app.command("metrics")
def metrics_cmd(
    config: ConfigOpt = None,
    serve: Annotated[
        int | None,
        typer.Option(
            "--serve",
            metavar="PORT",
            min=0,
            max=65535,
            help="Serve /metrics on this port until ^C.",
        ),
    ] = None,
    textfile: Annotated[
        Path | None,
        typer.Option(
            "--textfile", metavar="DIR", help="Write DIR/dr.prom for node-exporter, atomically."
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Backup, restore-test, drill and alert metrics in the Prometheus text format."""
    from tasks.core import metrics  # prometheus_client: imported on use

    with _errors(debug):
        cfg = load_config(config)
        reg = metrics.registry(lambda: _families(cfg))
        if textfile is not None:
            out.print(f"wrote {metrics.write_textfile(reg, textfile)}")
        if serve is not None:
            server, _ = metrics.serve(reg, serve)
            out.print(f"serving http://{server.server_address[0]}:{server.server_port}/metrics")
            while True:  # until interrupted (exit 130)
                time.sleep(3600)
        if textfile is None:
            print(metrics.render(reg), end="")


def _families(cfg: Config) -> list[Metric]:
    """Computed afresh at every scrape."""
    from tasks.core import metrics, monitor

    now = utcnow()
    facts = monitor.gather(cfg)
    alerts = monitor.evaluate(
        facts.targets, facts.backups, facts.history, now, cfg.monitoring, cfg.objectives
    )
    return metrics.families(facts, alerts, cfg.objectives, cfg.environment, now)
