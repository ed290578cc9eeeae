"""The run path: dagster-daemon and dagster-webserver as separate processes; the sensors (RUNNING by
default) launch micro-batch runs by themselves, and the UI's GraphQL API shows the materializations."""
import sys
import time
from pathlib import Path

import dagster as dg
import requests

from scripts import services
from scripts.cli import spawn
from tests.conftest import wait_for
from tests.helpers import fail_orphaned_runs
from tests.test_idempotency import counts, publish
from nautilus_assets.analytics import assets as analytics
from nautilus_assets.market_data.schema import QUOTES, TRADES

BIN = Path(sys.executable).parent
QUERY = """{ assetNodes { assetKey { path } groupName
  assetMaterializations(limit: 1) { runId metadataEntries { label ... on IntMetadataEntry { intValue } } } } }"""


def test_daemon_launches_sensor_batches_and_the_ui_shows_them(clean, settings, instance):
    res = clean
    t_start = time.time()
    publish(res, 3000, seed=9)
    procs = [spawn(settings, "test-daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]),
             spawn(settings, "test-webserver", [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h",
                                                 "127.0.0.1", "-p", str(settings.port("webserver"))])]
    try:
        def done():
            runs = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
            return {r.dagster_run.job_name for r in runs if "nautilus/trigger" in r.dagster_run.tags} >= \
                {"ingest_trades", "ingest_quotes"} and counts(res, TRADES)[0] == 3000 and counts(res, QUOTES)[0] == 3000
        wait_for(done, timeout=240, every=3, what="sensor-launched ingest runs")
        # the automation sensor follows with the downstream products (declarative automation, eager)
        def analytics_after_start():
            ev = instance.get_latest_materialization_event(analytics.KEY)
            return ev if ev and ev.timestamp > t_start else None
        ev = wait_for(analytics_after_start, timeout=180, every=3, what="an automation-launched analytics run")
        tags = instance.get_run_by_id(ev.run_id).tags
        assert any("automation" in k or "sensor" in k for k in tags), tags
        assert counts(res, TRADES) == (3000, 3000) and counts(res, QUOTES) == (3000, 3000)

        services.wait_port(settings.port("webserver"), "webserver", timeout=120)
        body = wait_for(lambda: _graphql(settings), timeout=60, what="GraphQL answer")
        nodes = {"/".join(n["assetKey"]["path"]): n for n in body["data"]["assetNodes"]}
        trades = nodes["market_data_feed/trades"]
        assert trades["groupName"] == "market_data" and trades["assetMaterializations"]
        assert "pulsar/market_data/trades" in nodes
    finally:
        services.kill_groups({str(p.pid): p.pid for p in procs})
        fail_orphaned_runs(instance, t_start - 1)
        for p in procs:
            assert p.poll() is not None


def _graphql(settings):
    try:
        r = requests.post(f"{settings.webserver_url}/graphql", json={"query": QUERY}, timeout=30)
        return r.json() if r.ok else None
    except requests.RequestException:
        return None
