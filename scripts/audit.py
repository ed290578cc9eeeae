"""`nautilus audit`: the governance team's commands over nautilus_assets/audit (lineage report, OpenLineage events,
row provenance, reproducing a batch)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from resources.settings import Settings, build_resources

pass_settings = click.make_pass_decorator(Settings)


def _instance_and_defs():
    from dagster import DagsterInstance

    from nautilus_assets.definitions import defs

    return DagsterInstance.get(), defs


@click.group("audit")
def audit() -> None:
    """Governance: lineage report, OpenLineage events, row provenance."""


@audit.command()
@click.option("--out", default="audit", show_default=True, help="output directory")
@click.option("--limit", type=int, default=10, show_default=True, help="last materializations per asset")
@click.option("--history-days", type=float, default=7.0, show_default=True, help="freshness history window")
@click.option("--openlineage-url", default=None, help="also emit OpenLineage events to this HTTP endpoint")
@click.option("--openlineage-file", default=None, help="also emit OpenLineage events to this file")
@click.option("--runs", type=int, default=500, show_default=True, help="latest runs to emit events for")
def report(
    out: str, limit: int, history_days: float, openlineage_url: str | None, openlineage_file: str | None, runs: int
) -> None:
    """HTML + JSON lineage report of every data product."""
    from nautilus_assets.audit.lineage import build_report
    from nautilus_assets.audit.report import write

    inst, defs = _instance_and_defs()
    with inst:
        rep = build_report(inst, defs, limit=limit, history_days=history_days)
        j, h = write(rep, Path(out))
        click.echo(f"wrote {j} and {h}: {len(rep['products'])} products")
        if openlineage_url or openlineage_file:
            from nautilus_assets.audit.ol_events import client_for, emit

            click.echo(f"openlineage: {emit(inst, defs, client_for(openlineage_url, openlineage_file), runs)}")


@audit.command()
@click.option("--url", default=None, help="HTTP endpoint base (events POSTed to URL/api/v1/lineage)")
@click.option("--file", "path", default=None, help="file transport: append one JSON event per line")
@click.option("--runs", type=int, default=500, show_default=True)
@click.option("--run-id", multiple=True)
def openlineage(url: str | None, path: str | None, runs: int, run_id: tuple[str, ...]) -> None:
    """Emit OpenLineage START/COMPLETE/FAIL events of recent runs."""
    from nautilus_assets.audit.ol_events import client_for, emit

    inst, defs = _instance_and_defs()
    with inst:
        click.echo(json.dumps(emit(inst, defs, client_for(url, path), runs, list(run_id) or None)))


@audit.command()
@click.option("--table", required=True, help="db.table, e.g. market_data.trades")
@click.option(
    "--where",
    multiple=True,
    required=True,
    metavar="'COLUMN OP VALUE'",
    help='a filter, e.g. "trade_id = S7T1-1" (op: = != < <= > >= like; the value is bound as a '
    "parameter, never SQL); repeat to AND several",
)
@click.option("--limit", type=int, default=5, show_default=True, help="rows (at most 100)")
@pass_settings
def row(s: Settings, table: str, where: tuple[str, ...], limit: int) -> None:
    """Provenance of a stored row: run, trigger, message range / lake version, versions."""
    from nautilus_assets.audit.provenance import parse_filter, trace

    filters = [parse_filter(w) for w in where]
    inst, defs = _instance_and_defs()
    with inst:
        click.echo(json.dumps(trace(inst, defs, build_resources(s), table, filters, limit), indent=1, default=str))


@audit.command()
@click.option("--run-id", required=True)
@click.option("--asset", required=True, help="asset key, e.g. market_data_feed/bars_1d")
@pass_settings
def reproduce(s: Settings, run_id: str, asset: str) -> None:
    """Re-materialize the batch of a run and compare data versions."""
    from dagster import AssetKey

    from nautilus_assets.audit.provenance import rematerialize

    inst, defs = _instance_and_defs()
    with inst:
        click.echo(
            json.dumps(
                rematerialize(inst, defs, build_resources(s), run_id, AssetKey.from_user_string(asset)), indent=1
            )
        )
