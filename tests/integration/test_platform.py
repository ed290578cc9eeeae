"""The run path: dagster-daemon and dagster-webserver as separate processes; the sensors (RUNNING by
default) launch micro-batch runs by themselves, and the UI's GraphQL API shows the materializations."""

import os
import signal
import time
from pathlib import Path

import dagster as dg
import requests

from nautilus_assets.analytics import assets as analytics
from nautilus_assets.market_data.schema import QUOTES, TRADES
from scripts import services
from tests.helpers import counts, publish, wait_for

QUERY = """{ assetNodes { assetKey { path } groupName
  assetMaterializations(limit: 1) { runId metadataEntries { label ... on IntMetadataEntry { intValue } } } } }"""


def test_daemon_launches_sensor_batches_and_the_ui_shows_them(clean, settings, instance, dagster_processes):
    res = clean
    t_start = time.time()
    publish(res, 3000, seed=9)
    procs = [dagster_processes("daemon"), dagster_processes("webserver")]
    first_server = wait_for(lambda: _code_servers(procs[0].pid), timeout=120, what="the daemon's code server")[0]
    seen_at = time.monotonic()

    def done():
        runs = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
        return (
            {r.dagster_run.job_name for r in runs if "nautilus/trigger" in r.dagster_run.tags}
            >= {"ingest_trades", "ingest_quotes"}
            and counts(res, TRADES)[0] == 3000
            and counts(res, QUOTES)[0] == 3000
        )

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

    # scripts/dagster_daemon.py: the code server is not restarted every 60 s, but replaced at once when it dies
    time.sleep(max(0.0, 66 - (time.monotonic() - seen_at)))  # past stock dagster's 60-s restart
    assert first_server in _code_servers(procs[0].pid)
    os.kill(first_server, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(
        lambda: [p for p in _code_servers(procs[0].pid) if p != first_server],
        timeout=45,
        every=1,
        what="a new code server after the daemon's was killed",
    )
    print(f"code server replaced {time.monotonic() - killed_at:.1f}s after the kill")


def _code_servers(parent: int) -> list[int]:
    """pids of the live `dagster api grpc` children of `parent`."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            state, ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            if int(ppid) == parent and state != "Z" and b"api\0grpc" in (d / "cmdline").read_bytes():
                out.append(int(d.name))
        except (OSError, ValueError):  # gone meanwhile, or not a process
            continue
    return out


def _graphql(settings):
    try:
        r = requests.post(f"{settings.webserver_url}/graphql", json={"query": QUERY}, timeout=30)
        return r.json() if r.ok else None
    except requests.RequestException:
        return None
