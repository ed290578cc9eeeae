"""Writes the lineage report as JSON and as a self-contained HTML page; the `nautilus audit` entry points."""
from __future__ import annotations

import html
import json
from pathlib import Path


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _dur(s: float) -> str:
    s = float(s or 0)
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def to_html(rep: dict) -> str:
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Nautilus lineage audit</title><style>"
           "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}"
           "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left;vertical-align:top}"
           "h2{border-bottom:2px solid #345}code{background:#f3f3f3}</style></head><body>",
           f"<h1>Nautilus lineage audit</h1><p>Instance <code>{_e(rep['instance'])}</code>, generated "
           f"{_e(rep['generated_at'])}; freshness history over {rep['history_days']} days.</p>",
           "<p>Source topics: " + ", ".join(f"<code>{_e(t)}</code>" for t in rep["topics"]) + "</p>"]
    for p in rep["products"]:
        out.append(f"<h2 id='{_e(p['product'])}'>{_e(p['product'])}</h2><p>Group <code>{_e(p['group'])}</code>; "
                   f"owners {_e(', '.join(p['owners']))}; reaches topics "
                   + ", ".join(f"<code>{_e(t)}</code>" for t in p["topics"]) + "</p>")
        for key, a in p["assets"].items():
            sla = a["sla"]["freshness"] or {}
            hist = a["freshness"]["history"]
            fail = hist.get("fail", {})
            out.append(f"<h3>{_e(key)}</h3><p>{_e(a['description'])}</p><table>"
                       f"<tr><th>owners</th><td>{_e(', '.join(a['owners']))}</td></tr>"
                       f"<tr><th>table</th><td>{_e(a['table'])}</td></tr>"
                       f"<tr><th>code version</th><td>{_e(a['code_version'])}</td></tr>"
                       f"<tr><th>SLA</th><td>{_e(json.dumps(sla))}; latency target "
                       f"{_e(a['sla']['latency_target_ms'])} ms; availability {_e(a['sla']['availability_target'])}</td></tr>"
                       f"<tr><th>freshness now</th><td>{_e(a['freshness']['current'])}</td></tr>"
                       f"<tr><th>stale (fail)</th><td>{fail.get('episodes', 0)} times, {_dur(fail.get('stale_seconds', 0))} "
                       f"in all, longest {_dur(fail.get('longest_seconds', 0))}; "
                       f"{a['freshness']['materializations_in_window']} materializations in the window; "
                       f"{len(a['freshness']['state_changes'])} recorded state changes</td></tr>"
                       f"<tr><th>measured SLA</th><td>" + "<br>".join(
                           f"{_e(n)}: {'passed' if c['passed'] else 'FAILED'} at {_e(c['at'])} "
                           f"(p99 {_e(c.get('p99_latency_ms'))} ms, availability {_e(c.get('availability'))})"
                           for n, c in a["freshness"]["sla_checks"].items()) + "</td></tr>"
                       f"<tr><th>alerts</th><td>{len(a['freshness']['alerts'])} in the window" + "".join(
                           f"<br>{_e(x['at'])} {_e(x['nautilus/alert'])} {_e(x['figure'])}={_e(x['value'])} "
                           f"(target {_e(x['target'])})" for x in a["freshness"]["alerts"][-10:]) + "</td></tr>"
                       f"<tr><th>upstream</th><td>" + "<br>".join(f"{_e(x)} &rarr; {_e(y)}" for x, y in a["edges"])
                       + "</td></tr></table>")
            if a["column_lineage"]:
                out.append("<details><summary>column lineage</summary><table><tr><th>column</th><th>from</th></tr>"
                           + "".join(f"<tr><td>{_e(c)}</td><td>" + ", ".join(f"{_e(d['asset'])}.{_e(d['column'])}"
                                                                            for d in deps) + "</td></tr>"
                                     for c, deps in a["column_lineage"].items()) + "</table></details>")
            if a["last_materializations"]:
                out.append("<table><tr><th>when</th><th>run</th><th>partition</th><th>trigger</th><th>code</th>"
                           "<th>data version</th></tr>" + "".join(
                               f"<tr><td>{_e(m['timestamp'])}</td><td><code>{_e(m['run_id'])}</code></td>"
                               f"<td>{_e(m['partition'])}</td><td>{_e(m['trigger']['kind'])}: {_e(m['trigger']['name'])}</td>"
                               f"<td>{_e(m['code_version'])}</td><td><code>{_e(m['data_version'])}</code></td></tr>"
                               for m in a["last_materializations"]) + "</table>")
    out.append("</body></html>")
    return "\n".join(out)


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
