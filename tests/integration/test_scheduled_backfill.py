"""Scheduled backfills and resource pools against the real webserver and daemon.

Three past days: the first two written straight into the lake (history mode, with their ticks also through the
ingest's ClickHouse sink), the last one published to Pulsar as a historical replay and landed by the ingest jobs,
with the model portfolios' fills on the engines topic taken in by the streaming positions. A backfill launched
through the GraphQL API replays the day-level chain from the lake; its daily bars must equal the streaming path's
1-minute bars rolled up, and the end-of-day NAV the streaming positions' NAV. Then a burst of end-of-day replay
runs (what the schedule launches) with the `mlx` pool cut to one slot: no two steps holding that pool overlap."""

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import requests

from nautilus_assets.analytics.assets import KEY as ANALYTICS
from nautilus_assets.definitions import defs
from nautilus_assets.market_data.assets import BATCH_TAG
from nautilus_assets.market_data.daily import KEY as BARS_1D
from nautilus_assets.market_data.schema import QUOTES, REPLAY_PROPERTY, TRADES
from nautilus_assets.market_data.simulator import messages
from nautilus_assets.microstructure.assets import KEY as VPIN
from nautilus_assets.ml.assets import KEY as ML
from nautilus_assets.pools import POOL_LIMITS, PRIORITY, apply_pool_limits
from nautilus_assets.portfolio.assets import KEY as POSITIONS
from nautilus_assets.portfolio.daily import KEY as NAV
from nautilus_assets.portfolio.models import fill_messages, model_fills
from nautilus_assets.risk.assets import KEY as RISK
from nautilus_assets.risk.assets import KEYS as RISK_KEYS
from scripts import services
from scripts.history import HISTORY_MODEL, simulate_days, write_history
from scripts.publisher import Publisher
from scripts.up import BACKFILL
from tests.helpers import fail_orphaned_runs, reset_state, wait_for

INSTRUMENTS = ["AAPL.XNAS", "SPY.ARCX", "BTCUSDT.BINANCE"]
EVENTS_PER_DAY = 6000
LAUNCH_RUN = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
BACKFILL_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status } ... on PythonError { message } } }"""


def gql(settings, query, variables=None):
    r = requests.post(
        f"{settings.webserver_url}/graphql", json={"query": query, "variables": variables or {}}, timeout=120
    )
    r.raise_for_status()
    body = r.json()
    assert "errors" not in body, body
    return body["data"]


def fills_count(res) -> int:
    with res["postgres"].connect() as conn:
        return conn.execute("SELECT count(*) FROM portfolio.fills").fetchone()[0]


def report(settings, instance) -> None:
    """On a failure: the runs so far and the daemon's last errors (the instance's home goes with the services)."""
    for r in instance.get_run_records(limit=30):
        run = r.dagster_run
        print(
            f"[runs] {run.run_id[:8]} {run.job_name:14} {run.status.value:10} "
            f"{','.join(k.to_user_string() for k in run.asset_selection or [])}"
        )
        if run.status == dg.DagsterRunStatus.FAILURE:  # why: the failure events' messages and errors
            for e in instance.all_logs(run.run_id):
                if (
                    e.dagster_event
                    and e.dagster_event.event_type_value in ("STEP_FAILURE", "RUN_FAILURE", "ENGINE_EVENT")
                    and ("fail" in (e.message or "").lower() or e.dagster_event.event_type_value != "ENGINE_EVENT")
                ):
                    err = getattr(e.dagster_event.event_specific_data, "error", None)
                    print(
                        f"   {e.dagster_event.event_type_value}: {e.message[:300]} {err.message[:500] if err else ''}"
                    )
    log = settings.home / "test-daemon.log"
    if log.exists():
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "ERROR" in ln or "Error" in ln]
        print("\n".join(lines[-20:]))


@pytest.fixture(scope="module")
def platform(res, settings, instance):
    """Lake history for D-3, D-2; D-1 published to Pulsar and landed by the ingest jobs the sensors launch (run
    here in-process on the test's instance, as are the streaming products after it); then the daemon and webserver.
    The ingest sensors are quietened (no timer or safety batches): nothing is left on the topics."""
    reset_state(res)
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=k) for k in (3, 2, 1)]
    hist = write_history(
        res["lake"],
        INSTRUMENTS,
        2,
        EVENTS_PER_DAY,
        end=days[-1],
        postgres=res["postgres"],
        clickhouse=res["clickhouse"],
    )
    [(_, trades, quotes)] = simulate_days(INSTRUMENTS, days[-1], 1, EVENTS_PER_DAY, seed=23)
    fills = model_fills(trades, seed=23, **HISTORY_MODEL)
    with res["pulsar"].client() as client:
        pub = Publisher(client, {REPLAY_PROPERTY: "historical"}, fills=True)
        pub.send(TRADES.name, messages(trades))
        pub.send(QUOTES.name, messages(quotes))
        pub.send("fills", fill_messages(fills))
        pub.flush()
    for feed in (TRADES, QUOTES):  # the streaming path: one micro-batch run per topic
        run = defs.resolve_job_def(f"ingest_{feed.name}").execute_in_process(
            instance=instance,
            tags={BATCH_TAG: f"test-{feed.name}-d1", "nautilus/topic": feed.name, "nautilus/trigger": "test"},
        )
        assert run.success, feed.name
    assert (
        res["clickhouse"].scalar(
            "SELECT count() FROM market_data.trades WHERE date = %(d)s", parameters={"d": days[-1]}
        )
        == trades.num_rows
    )
    products = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[ANALYTICS, VPIN, POSITIONS]
    )
    assert products.success
    assert fills_count(res) == hist["fills"] + fills.num_rows  # the streaming positions took in every fill
    # On a loaded 2-core machine a run worker can take over a minute to load the code: give the daemon's
    # start_run call more than gRPC's default 60 s, or the queued coordinator fails the run.
    quiet = dataclasses.replace(
        settings,
        env={
            **settings.env,
            "NAUTILUS_SAFETY_INTERVAL_SECONDS": "86400",
            "NAUTILUS_TIMER_SECONDS": "86400",
            "DAGSTER_GRPC_TIMEOUT_SECONDS": "300",
        },
    )
    t_daemon = time.time()
    procs = [services.dagster_daemon(quiet, "test-daemon"), services.dagster_webserver(quiet, "test-webserver")]
    try:
        services.wait_port(settings.port("webserver"), "webserver", timeout=300)
        wait_for(lambda: _answers(settings), timeout=300, every=3, what="the webserver's GraphQL API")
        yield res, days
    except BaseException:
        report(settings, instance)
        raise
    finally:
        services.kill_groups({str(p.pid): p.pid for p in procs})
        fail_orphaned_runs(instance, t_daemon - 1)
        apply_pool_limits(instance)


def _answers(settings) -> bool:
    try:
        return requests.post(f"{settings.webserver_url}/graphql", json={"query": "{ version }"}, timeout=30).ok
    except requests.RequestException:
        return False


@pytest.mark.timeout(2400)  # its fixture starts the platform; on a loaded 2-core machine runs take minutes to start
def test_backfill_through_graphql_replays_the_lake_and_equals_the_streaming_path(platform, settings, instance):
    res, days = platform
    span = {"range": {"start": days[0].isoformat(), "end": days[-1].isoformat()}}
    params = {
        "title": "test: day-level chain from the lake",
        "tags": [{"key": "dagster/priority", "value": str(PRIORITY["backfill"])}],
        "partitionsByAssets": [
            {"assetKey": {"path": k.path}, "partitions": p}
            for k, p in ((BARS_1D, span), (NAV, span), *((k, span) for k in RISK_KEYS))
        ],
    }
    t0 = time.time()
    out = gql(settings, BACKFILL, {"p": params})["launchPartitionBackfill"]
    assert out["__typename"] == "LaunchBackfillSuccess", out
    backfill_id = out["backfillId"]

    def finished():
        status = gql(settings, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]
        return status if status.startswith("COMPLETED") or status in ("FAILED", "CANCELED") else None

    try:
        status = wait_for(finished, timeout=900, every=5, what="the backfill")
    except AssertionError:
        report(settings, instance)
        raise
    wall = time.time() - t0
    print(f"\n[backfill] {backfill_id}: {status} in {wall:.1f}s for {len(days)} days x 3 assets")
    if status != "COMPLETED_SUCCESS":
        report(settings, instance)
    assert status == "COMPLETED_SUCCESS"
    keys = {d.isoformat() for d in days}
    for key in (BARS_1D, NAV, RISK):
        assert keys <= instance.get_materialized_partitions(key), key

    # one run per range for the single-run assets
    runs = [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    for key in (BARS_1D, NAV, RISK):
        mine = [r for r in runs if key in (r.asset_selection or set())]
        assert len(mine) == 1, (key, len(mine))
        assert (
            mine[0].tags["dagster/asset_partition_range_start"],
            mine[0].tags["dagster/asset_partition_range_end"],
        ) == (days[0].isoformat(), days[-1].isoformat())

    # daily bars replayed from the lake == the streaming path's 1-minute bars in ClickHouse, rolled up per day
    ch = res["clickhouse"]
    cols = ["open", "high", "low", "close", "volume", "vwap", "trade_count"]
    replay = ch.query_df(
        "SELECT instrument_id, date, open, high, low, close, volume, vwap, trade_count "
        "FROM market_data.bars_1d FINAL ORDER BY instrument_id, date"
    )
    stream = ch.query_df(
        "SELECT instrument_id, toDate(minute) AS day, argMin(open, minute) AS o, max(high) AS h, min(low) AS l, "
        "argMax(close, minute) AS c, sum(volume) AS v, sum(vwap * volume) / sum(volume) AS vw, sum(trade_count) AS n "
        "FROM market_data.bars_1m FINAL GROUP BY instrument_id, day ORDER BY instrument_id, day"
    ).rename(
        columns={
            "day": "date",
            "o": "open",
            "h": "high",
            "l": "low",
            "c": "close",
            "v": "volume",
            "vw": "vwap",
            "n": "trade_count",
        }
    )
    for df in (replay, stream):
        df["instrument_id"] = df["instrument_id"].astype(str)
        df["date"] = pd.to_datetime(df["date"])
        df["trade_count"] = df["trade_count"].astype("int64")
    assert len(replay) == len(INSTRUMENTS) * len(days)
    pd.testing.assert_frame_equal(
        replay[["instrument_id", "date", *cols]],
        stream[["instrument_id", "date", *cols]],
        check_dtype=False,
        rtol=1e-9,
        atol=0,
    )

    # end-of-day NAV of D-1 (replay) == the streaming positions' NAV now (no fills or bars since)
    with res["postgres"].connect() as conn:
        eod = dict(
            conn.execute("SELECT portfolio_id, nav FROM portfolio.daily_nav WHERE date = %s", (days[-1],)).fetchall()
        )
        live = dict(
            conn.execute(
                "SELECT DISTINCT ON (portfolio_id) portfolio_id, nav FROM portfolio.portfolio_states "
                "ORDER BY portfolio_id, ts DESC"
            ).fetchall()
        )
    assert eod and set(eod) == set(live)
    np.testing.assert_allclose([eod[p] for p in sorted(eod)], [live[p] for p in sorted(eod)], rtol=1e-9)


@pytest.mark.timeout(1800)
def test_pool_limit_holds_under_a_burst_of_replay_runs(platform, settings, instance):
    """Three end-of-day replay runs at once (the schedule's job; its risk and ML steps, both in the mlx pool) with
    the mlx pool at one slot: no two steps of any runs hold the pool together, and every run completes."""
    _, days = platform
    apply_pool_limits(instance, {"mlx": 1})
    assert instance.event_log_storage.get_concurrency_info("mlx").slot_count == 1
    t0 = time.time()
    run_ids = []
    for d in days:
        out = gql(
            settings,
            LAUNCH_RUN,
            {
                "p": {
                    "selector": {
                        "repositoryLocationName": "nautilus",
                        "repositoryName": "__repository__",
                        "jobName": "eod_replay",
                        "assetSelection": [{"path": k.path} for k in (*RISK_KEYS, ML)],
                    },
                    "runConfigData": {"execution": {"config": {"in_process": {}}}},
                    "executionMetadata": {"tags": [{"key": "dagster/partition", "value": d.isoformat()}]},
                }
            },
        )["launchRun"]
        assert out["__typename"] == "LaunchRunSuccess", out
        run_ids.append(out["run"]["runId"])

    def all_done():
        runs = [instance.get_run_by_id(i) for i in run_ids]
        return runs if all(r.is_finished for r in runs) else None

    try:
        runs = wait_for(all_done, timeout=900, every=5, what="the burst of replay runs")
    except AssertionError:
        report(settings, instance)
        raise
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * len(runs)

    pool_of = {ad.node_def.name: ad.node_def.pool for ad in defs.resolve_asset_graph().assets_defs if ad.is_executable}
    spans = []
    for run in instance.get_run_records(dg.RunsFilter(created_after=datetime.fromtimestamp(t0 - 5, UTC))):
        starts, ends = {}, {}
        for rec in instance.all_logs(run.dagster_run.run_id):
            ev = rec.dagster_event
            if ev is None or pool_of.get(ev.step_key) != "mlx":
                continue
            if ev.event_type == dg.DagsterEventType.STEP_START:
                starts[ev.step_key] = rec.timestamp
            elif ev.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                ends[ev.step_key] = rec.timestamp
        spans += [(starts[k], ends[k], run.dagster_run.run_id[:8], k) for k in starts]
    spans.sort()
    overlaps = [(a, b) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]
    wall = time.time() - t0
    print(f"\n[pool] mlx steps: {len(spans)} over {len(run_ids)} runs in {wall:.1f}s; overlaps: {len(overlaps)}")
    for s in spans:
        print(f"  {s[2]} {s[3]:40} {s[0] - t0:7.2f} -> {s[1] - t0:7.2f}")
    assert len(spans) >= 2 * len(run_ids)  # risk and ML in every run
    assert not overlaps, overlaps
    info = instance.event_log_storage.get_concurrency_info("mlx")
    assert not info.claimed_slots  # every slot given back
    apply_pool_limits(instance)
    assert instance.event_log_storage.get_concurrency_info("mlx").slot_count == POOL_LIMITS["mlx"]
