"""The governance audit against a real instance after real runs: sensor-launched micro-batches and automation
runs and an asset backfill, all run by dagster-daemon, and a manual launch; then the
lineage report (JSON + HTML), OpenLineage events to an HTTP server on loopback, a row traced to its run and
Pulsar message range, and a replay of a batch that gives the same data version."""

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from nautilus_assets.analytics.assets import KEY as ANALYTICS
from nautilus_assets.analytics.assets import indicators_1m
from nautilus_assets.audit.lineage import PRODUCTS, build_report
from nautilus_assets.audit.ol_events import client_for, emit
from nautilus_assets.audit.provenance import range_in_lake, rematerialize, trace
from nautilus_assets.audit.report import write
from nautilus_assets.definitions import defs
from nautilus_assets.market_data import faults
from nautilus_assets.market_data.daily import KEY as BARS_1D
from nautilus_assets.market_data.daily import bars_1d
from nautilus_assets.market_data.schema import QUOTES, TRADES
from nautilus_assets.portfolio.assets import portfolio_states
from nautilus_assets.portfolio.daily import KEY as NAV
from nautilus_assets.portfolio.daily import daily_nav
from scripts.cli import ROOT
from scripts.history import write_history
from tests.helpers import counts, evaluate, product_resources, publish, wait_for

INSTR = ["AAPL.XNAS", "SPY.ARCX"]


class _Sink(BaseHTTPRequestHandler):
    events: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).events.append((self.path, json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.mark.timeout(2400)  # a daemon on 2 cores shared with other work: minutes per run start
def test_lineage_audit_after_daemon_runs(clean, settings, instance, tmp_path, monkeypatch, dagster_processes):
    res = clean
    t_test = time.time()
    monkeypatch.setenv("DAGSTER_GRPC_TIMEOUT_SECONDS", "300")  # the daemon's calls to a code server on busy cores
    t0 = time.time()
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    write_history(res["lake"], INSTR, days=2, events_per_day=2000)
    publish(res, 1500, seed=21)
    # A backfill of daily bars, as the UI's Materialize > backfill (GraphQL launchPartitionBackfill) records it;
    # dagster-daemon runs it, the Pulsar sensors' micro-batches and the automation sensor's downstream runs.
    backfill_id = launch_backfill(instance, yesterday)
    dagster_processes("daemon", name="audit-daemon", env={"DAGSTER_GRPC_TIMEOUT_SECONDS": "300"})

    def ingested():
        runs = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS], job_name="ingest_trades"))
        return (
            runs
            and res["clickhouse"].scalar(
                "SELECT (SELECT count() FROM market_data.trades) + (SELECT count() FROM market_data.quotes)"
            )
            == 3000
        )

    try:
        wait_for(ingested, timeout=600, every=10, what="sensor-launched ingest runs")
    except AssertionError:
        raise AssertionError(
            f"{counts(res, TRADES)}, {counts(res, QUOTES)}; runs: "
            f"{[(r.dagster_run.job_name, r.dagster_run.status.value) for r in instance.get_run_records()]}"
        ) from None
    for attempt in range(3):  # on 2 busy cores the daemon may give up on a slow code server: launch again
        wait_for(
            lambda: instance.get_backfill(backfill_id).status != BulkActionStatus.REQUESTED,
            timeout=600,
            every=5,
            what="the backfill",
        )
        if instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS or attempt == 2:
            break
        backfill_id = launch_backfill(instance, yesterday)
    assert instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS, instance.get_backfill(
        backfill_id
    ).error

    def after_start(key):
        ev = instance.get_latest_materialization_event(key)
        return ev if ev and ev.timestamp > t0 else None

    wait_for(lambda: after_start(ANALYTICS), timeout=400, every=5, what="a stream-sensor-launched analytics run")
    # the backfilled daily bars make NAV's eager automation condition launch its two days
    wait_for(lambda: after_start(NAV), timeout=600, every=5, what="an automation-launched NAV run")
    dagster_processes.stop()  # the report below reads a quiet instance
    check_audit(instance, res, settings, tmp_path, backfill_id, yesterday, t_test)


def launch_backfill(instance, yesterday) -> str:
    """An asset backfill of daily bars over two days, recorded as the webserver's launchPartitionBackfill does."""
    bid = make_new_backfill_id()
    instance.add_backfill(
        PartitionBackfill.from_asset_partitions(
            backfill_id=bid,
            asset_graph=defs.resolve_asset_graph(),
            asset_selection=[BARS_1D],
            partition_names=[(yesterday - timedelta(days=1)).isoformat(), yesterday.isoformat()],
            backfill_timestamp=time.time(),
            tags={"nautilus/trigger": "audit test"},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title="audit test",
            description=None,
            run_config=None,
        )
    )
    return bid


@pytest.mark.timeout(1800)
def test_lineage_audit_after_real_runs(clean, settings, instance, tmp_path):
    """The runs the daemons would launch, executed here against the real instance with the tags each daemon puts
    on its runs: the Pulsar sensors' micro-batches (their own RunRequests), an automation run, the single run of
    an asset backfill; then a launch by hand."""
    res = clean
    t_test = time.time()
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    write_history(res["lake"], INSTR, days=2, events_per_day=2000)
    publish(res, 1500, seed=21)
    time.sleep(6)  # pulsar-lite refreshes its backlog metrics every ~5 s
    for name in ("trades_ingest_sensor", "quotes_ingest_sensor"):
        tick, job_name = evaluate(name, instance, res)
        assert tick.run_requests, tick.skip_message
        for rr in tick.run_requests:  # the sensor daemon adds dagster/sensor_name
            assert (
                defs.resolve_job_def(rr.job_name or job_name)
                .execute_in_process(instance=instance, tags={**rr.tags, "dagster/sensor_name": name})
                .success
            )
    resources = product_resources(res)
    assert dg.materialize(
        [indicators_1m],
        instance=instance,
        resources=resources,
        tags={"dagster/sensor_name": "market_analytics_stream_sensor"},
    ).success
    backfill_id = launch_backfill(instance, yesterday)
    days = {
        "dagster/asset_partition_range_start": (yesterday - timedelta(days=1)).isoformat(),
        "dagster/asset_partition_range_end": yesterday.isoformat(),
    }
    assert dg.materialize(
        [bars_1d], instance=instance, resources=resources, tags={"dagster/backfill": backfill_id, **days}
    ).success
    assert dg.materialize(
        [daily_nav],
        instance=instance,
        resources=resources,
        tags={  # what eager automation launches
            "dagster/sensor_name": "products_automation",
            "dagster/from_automation_condition": "true",
            **days,
        },
    ).success
    check_audit(instance, res, settings, tmp_path, backfill_id, yesterday, t_test)


def own_runs(instance, since: float) -> set[str]:
    after = datetime.fromtimestamp(since, UTC)
    return {r.dagster_run.run_id for r in instance.get_run_records(dg.RunsFilter(created_after=after))}


def check_audit(instance, res, settings, tmp_path, backfill_id, yesterday, t_test):
    # a launch by hand (what the UI's Materialize button does, without daemon tags)
    resources = product_resources(res)
    assert dg.materialize([portfolio_states], instance=instance, resources=resources).success

    # --- the report ---
    t_report = time.perf_counter()
    rep = build_report(instance, defs, limit=20, history_days=1)
    report_s = time.perf_counter() - t_report
    j, h = write(rep, tmp_path)
    assert json.loads(j.read_text())["products"] and "market_analytics" in h.read_text()
    by = {p["product"]: p for p in rep["products"]}
    assert set(by) == set(PRODUCTS)
    assert by["market_analytics"]["owners"] == ["team:analytics"]
    assert by["market_data_feed"]["owners"] == ["team:market-data"]
    for p in PRODUCTS:  # every product's upstream graph reaches the Pulsar topics
        assert "pulsar/market_data/trades" in by[p]["topics"], (p, by[p]["topics"])
    assert "pulsar/engines/portfolio_fills" in by["portfolio_states"]["topics"]
    trades = by["market_data_feed"]["assets"]["market_data_feed/trades"]
    assert trades["sla"]["freshness"] == {"type": "time_window", "fail_after_s": 120.0, "warn_after_s": 60.0}
    # the session's instance also holds earlier tests' runs (faults, idempotency): judge this test's own
    mats = [m for m in trades["last_materializations"] if m["run_id"] in own_runs(instance, t_test)]
    assert mats and all(
        m["trigger"] == {"kind": "sensor", "name": "trades_ingest_sensor", "automation": False} for m in mats
    ), mats
    assert mats[0]["code_version"] == "1" and ".." in mats[0]["data_version"]
    assert trades["freshness"]["history"]["evaluated"]
    assert trades["column_lineage"]["price"] == [{"asset": "pulsar/market_data/trades", "column": "price"}]
    ana = by["market_analytics"]["assets"]["market_analytics/indicators_1m"]
    assert {"kind": "sensor", "name": "market_analytics_stream_sensor", "automation": False} in [
        m["trigger"] for m in ana["last_materializations"]
    ], ana["last_materializations"]
    nav = by["portfolio_states"]["assets"]["portfolio_states/daily_nav"]
    assert {"kind": "sensor", "name": "products_automation", "automation": True} in [
        m["trigger"] for m in nav["last_materializations"]
    ], nav["last_materializations"]
    assert ana["column_lineage"]["rsi_14"] == [{"asset": "market_data_feed/bars_1m", "column": "close"}]
    daily = by["market_data_feed"]["assets"]["market_data_feed/bars_1d"]
    bf = [m for m in daily["last_materializations"] if m["trigger"]["kind"] == "backfill"]
    assert bf and bf[0]["trigger"]["name"] == backfill_id and bf[0]["data_version"]
    pos = by["portfolio_states"]["assets"]["portfolio_states/positions"]
    assert pos["last_materializations"][0]["trigger"]["kind"] == "ui"

    # --- OpenLineage events to an HTTP endpoint on loopback ---
    _Sink.events = []
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        counts_ol = emit(instance, defs, client_for(f"http://127.0.0.1:{server.server_port}"), limit=200)
    finally:
        server.shutdown()
    events = [e for path, e in _Sink.events if path == "/api/v1/lineage"]
    assert len(events) == counts_ol["START"] + counts_ol.get("COMPLETE", 0) + counts_ol.get("FAIL", 0) > 0
    ingest_run = mats[0]["run_id"]
    mine = [e for e in events if e["run"]["runId"] == ingest_run]
    assert [e["eventType"] for e in mine] == ["START", "COMPLETE"], mine
    ev = mine[-1]
    assert ev["job"]["namespace"] == "nautilus" and ev["job"]["name"] == "ingest_trades"
    assert any(
        i["namespace"] == "pulsar://nautilus" and i["name"] == "nautilus/market-data/trades" for i in ev["inputs"]
    ), ev["inputs"]
    outs = {o["name"]: o for o in ev["outputs"]}
    assert (
        "market_data.trades" in outs
        and outs["market_data.trades"]["facets"]["version"]["datasetVersion"] == mats[0]["data_version"]
    )
    assert "columnLineage" in outs["market_data.bars_1m"]["facets"]
    assert ev["schemaURL"].startswith("https://openlineage.io/spec/")

    # --- a row traced to its run and Pulsar message range ---
    with res["clickhouse"].session() as c:
        inst_id, trade_id = c.query(
            "SELECT instrument_id, trade_id FROM market_data.trades ORDER BY ledger_id, entry_id LIMIT 1"
        ).first_row
    where = [("instrument_id", "=", inst_id), ("trade_id", "=", trade_id)]
    t_trace = time.perf_counter()
    (item,) = trace(instance, defs, res, "market_data.trades", where)
    trace_s = time.perf_counter() - t_trace
    run = instance.get_run_by_id(item["run"]["run_id"])
    # a row's batch is batch <n> of a long-lived run tagged with the run's batch id
    assert item["batch_id"] == item["row"]["batch_id"] and faults.batch_seq(item["batch_id"]) >= 1
    assert run.tags["nautilus/batch_id"] == item["batch_id"].rsplit(".", 1)[0]
    assert item["run"]["trigger"]["kind"] == "sensor" and item["materialization"]["code_version"] == "1"
    pz = item["source"]["pulsar"]
    key = lambda mid: tuple(int(x) for x in mid.split(":"))  # noqa: E731
    assert key(pz["batch_first_message_id"]) <= key(pz["message_id"]) <= key(pz["batch_last_message_id"])
    assert item["materialization"]["data_version"] == f"{pz['batch_first_message_id']}..{pz['batch_last_message_id']}"
    assert item["source"]["lake"]["table"] == "bronze/trades" and item["source"]["lake"]["version"] >= 0
    # replaying the batch from the lake reads exactly that range: the same data version
    assert (
        range_in_lake(res, "bronze/trades", item["batch_id"])["data_version"] == item["materialization"]["data_version"]
    )

    # --- a daily bar traced to its backfill run and lake version, and re-materialized to the same data version ---
    (bar,) = trace(
        instance,
        defs,
        res,
        "market_data.bars_1d",
        [("instrument_id", "=", "AAPL.XNAS"), ("date", "=", yesterday.isoformat())],
        limit=1,
    )
    assert bar["run"]["trigger"] == {"kind": "backfill", "name": backfill_id}
    assert bar["source"]["lake"]["table"] == "bronze/trades" and bar["materialization"]["code_version"] == "1"
    before = {k: v for k, v in bar["row"].items() if k not in ("version", "run_id", "batch_id")}
    rep2 = rematerialize(instance, defs, resources, bar["run"]["run_id"], BARS_1D)
    assert rep2["success"] and rep2["same_data_version"], rep2
    (again,) = trace(
        instance,
        defs,
        res,
        "market_data.bars_1d",
        [("instrument_id", "=", "AAPL.XNAS"), ("date", "=", yesterday.isoformat())],
        limit=1,
    )
    assert again["run"]["run_id"] == rep2["replay_run"]
    assert {k: v for k, v in again["row"].items() if k not in ("version", "run_id", "batch_id")} == before

    # --- the command line, as governance runs it ---
    cp = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.cli",
            "audit",
            "row",
            "--table",
            "market_data.trades",
            "--where",
            f"instrument_id = {inst_id}",
            "--where",
            f"trade_id = {trade_id}",
        ],
        cwd=ROOT,
        env={**os.environ, **settings.env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert json.loads(cp.stdout)[0]["run"]["run_id"] == item["run"]["run_id"]
    cp = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.cli",
            "audit",
            "report",
            "--out",
            str(tmp_path / "cli"),
            "--openlineage-file",
            str(tmp_path / "ol.jsonl"),
            "--runs",
            "20",
        ],
        cwd=ROOT,
        env={**os.environ, **settings.env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert {p["product"] for p in json.loads((tmp_path / "cli" / "lineage_audit.json").read_text())["products"]} == set(
        PRODUCTS
    )
    ol = [json.loads(x) for x in (tmp_path / "ol.jsonl").read_text().splitlines()]
    assert (
        ol and {e["eventType"] for e in ol} <= {"START", "COMPLETE", "FAIL", "ABORT"} and ol[0]["eventType"] == "START"
    )
    print(
        f"\nreport over {sum(len(p['assets']) for p in rep['products'])} assets in {report_s:.2f}s; "
        f"{len(events)} OpenLineage events for {counts_ol['runs']} runs; row trace {trace_s:.2f}s"
    )
