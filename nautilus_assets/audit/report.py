"""Writes the lineage report as JSON and as a self-contained HTML page; the `nautilus audit` entry points."""
from __future__ import annotations

import json
from pathlib import Path

import jinja2


def _duration(s) -> str:
    s = float(s or 0)
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


# autoescape: every value of the report (descriptions, metadata, run tags) is text, never markup
TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("nautilus_assets.audit"), autoescape=True,
                               finalize=lambda v: "" if v is None else v, trim_blocks=True, lstrip_blocks=True)
TEMPLATES.filters["duration"] = _duration


def to_html(rep: dict) -> str:
    return TEMPLATES.get_template("lineage_audit.html.j2").render(rep=rep)


def write(rep: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j, h = out_dir / "lineage_audit.json", out_dir / "lineage_audit.html"
    j.write_text(json.dumps(rep, indent=1, default=str))
    h.write_text(to_html(rep))
    return j, h


def main(a, s) -> None:
    """`nautilus audit report|row|openlineage|reproduce` (argparse namespace `a`, settings `s`)."""
    from dagster import AssetKey, DagsterInstance

    from nautilus_assets.definitions import defs
    from resources.settings import build_resources
    with DagsterInstance.get() as inst:
        if a.audit_cmd == "report":
            from .lineage import build_report
            rep = build_report(inst, defs, limit=a.limit, history_days=a.history_days)
            j, h = write(rep, Path(a.out))
            print(f"wrote {j} and {h}: {len(rep['products'])} products")
            if a.openlineage_url or a.openlineage_file:
                from .ol_events import client_for, emit
                print("openlineage:", emit(inst, defs, client_for(a.openlineage_url, a.openlineage_file), a.runs))
        elif a.audit_cmd == "openlineage":
            from .ol_events import client_for, emit
            print(json.dumps(emit(inst, defs, client_for(a.url, a.file), a.runs, a.run_id or None)))
        elif a.audit_cmd == "row":
            from .provenance import parse_filter, trace
            filters = [parse_filter(w) for w in a.where]
            print(json.dumps(trace(inst, defs, build_resources(s), a.table, filters, a.limit), indent=1, default=str))
        elif a.audit_cmd == "reproduce":
            from .provenance import rematerialize
            print(json.dumps(rematerialize(inst, defs, build_resources(s), a.run_id, AssetKey.from_user_string(a.asset)),
                             indent=1))


def add_parser(sub) -> None:
    sp = sub.add_parser("audit", help="governance: lineage report, OpenLineage events, row provenance")
    asub = sp.add_subparsers(dest="audit_cmd", required=True)
    r = asub.add_parser("report", help="HTML + JSON lineage report of every data product")
    r.add_argument("--out", default="audit", help="output directory")
    r.add_argument("--limit", type=int, default=10, help="last materializations per asset")
    r.add_argument("--history-days", type=float, default=7.0, help="freshness history window")
    r.add_argument("--openlineage-url", default=None, help="also emit OpenLineage events to this HTTP endpoint")
    r.add_argument("--openlineage-file", default=None, help="also emit OpenLineage events to this file")
    r.add_argument("--runs", type=int, default=500, help="latest runs to emit events for")
    o = asub.add_parser("openlineage", help="emit OpenLineage START/COMPLETE/FAIL events of recent runs")
    o.add_argument("--url", default=None, help="HTTP endpoint base (events POSTed to URL/api/v1/lineage)")
    o.add_argument("--file", default=None, help="file transport: append one JSON event per line")
    o.add_argument("--runs", type=int, default=500)
    o.add_argument("--run-id", action="append", default=[])
    w = asub.add_parser("row", help="provenance of a stored row: run, trigger, message range / lake version, versions")
    w.add_argument("--table", required=True, help="db.table, e.g. market_data.trades")
    w.add_argument("--where", action="append", required=True, metavar="'COLUMN OP VALUE'",
                   help="a filter, e.g. \"trade_id = S7T1-1\" (op: = != < <= > >= like; the value is bound as a "
                        "parameter, never SQL); repeat to AND several")
    w.add_argument("--limit", type=int, default=5, help="rows (at most 100)")
    p = asub.add_parser("reproduce", help="re-materialize the batch of a run and compare data versions")
    p.add_argument("--run-id", required=True)
    p.add_argument("--asset", required=True, help="asset key, e.g. market_data_feed/bars_1d")
