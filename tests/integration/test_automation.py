"""The streaming products follow the bars' change feed: a committed trades batch announces the minutes it changed,
each product's sensor launches its long-lived run from the backlog, and a sensor-launched run commits batches
back to back, each its own materialization; a redelivered announcement changes nothing; the day-level products
stay on declarative automation."""

import time

import dagster as dg
import orjson
import pulsar

from nautilus_assets.analytics import assets as analytics
from nautilus_assets.definitions import defs
from nautilus_assets.market_data import changes
from nautilus_assets.market_data.assets import BATCH_TAG
from nautilus_assets.market_data.ingest import receive
from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.market_data.simulator import MarketSimulator
from resources.topics import BARS_CHANGES
from scripts.publisher import publish_tables
from sensors.streaming_products import PRODUCT_SENSORS
from tests.helpers import batch


def _trades(n, seed):
    return MarketSimulator(
        ["AAPL.XNAS", "SPY.ARCX"],
        seed=seed,
        start_ns=time.time_ns() - 3 * 3600 * 10**9,
        events_per_second=0.5,
        intraday_profile=False,
    ).take(n, 0)[0]  # past at any hour


def test_committed_batch_announces_and_the_sensor_launches_the_product(clean, instance):
    res = clean
    trades = _trades(3000, seed=41)
    publish_tables(res["pulsar"], trades, trades.slice(0, 0))
    b = batch(res, TRADES, "chg-1")
    with res["pulsar"].client() as client:  # the announcement, read on a subscription of the test's own
        c = client.subscribe(
            BARS_CHANGES,
            "test-changes",
            consumer_type=pulsar.ConsumerType.Shared,
            initial_position=pulsar.InitialPosition.Earliest,
        )
        msgs = [orjson.loads(m.data()) for m in receive(c, 1000, 10, idle_ms=1000)]
        c.close()
    mine = [m for m in msgs if m["batch_id"] == "chg-1"]
    assert len(mine) == 1 and sorted(map(tuple, mine[0]["keys"])) == sorted(b.bar_keys)
    sensor = next(s for s in PRODUCT_SENSORS if s.name == "market_analytics_stream_sensor")
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources={"pulsar": res["pulsar"]}))
    assert len(tick.run_requests) == 1 and tick.run_requests[0].tags["nautilus/trigger"].startswith("backlog")


def test_a_long_lived_product_run_commits_per_batch_and_redelivery_changes_nothing(clean, instance):
    res = clean
    trades = _trades(4000, seed=43)
    half = trades.num_rows // 2
    publish_tables(res["pulsar"], trades.slice(0, half), trades.slice(0, 0))
    batch(res, TRADES, "ll-1")
    job = defs.resolve_job_def("stream_market_analytics")
    cfg = {"ops": {"market_analytics__indicators_1m": {"config": {"idle_seconds": 3, "max_wait_seconds": 0.3}}}}

    def run(tag):  # a sensor-launched run (its batch tag): long-lived until idle
        return job.execute_in_process(instance=instance, tags={BATCH_TAG: tag}, run_config=cfg)

    first = run("ll-run-1")
    assert first.success
    publish_tables(res["pulsar"], trades.slice(half), trades.slice(0, 0))
    batch(res, TRADES, "ll-2")
    before = res["clickhouse"].query_df(f"SELECT * FROM {analytics.TABLE} FINAL ORDER BY instrument_id, minute")
    # the ll-2 announcement again, as a redelivery or a re-run of the upstream batch would send it
    with res["pulsar"].client() as client:
        changes.announce_once(
            client,
            "ll-2",
            time.time_ns(),
            spans={"AAPL.XNAS": (int(trades["ts_event"][0].as_py() // 10**9 // 60 * 60),) * 2},
        )
    second = run("ll-run-2")
    assert second.success
    mats = second.asset_materializations_for_node("market_analytics__indicators_1m")
    assert len(mats) >= 1 and [m.metadata["batch_id"].value for m in mats] == [
        f"ll-run-2.{i + 1}" for i in range(len(mats))
    ]
    assert all(e.passed for e in second.get_asset_check_evaluations())
    after = res["clickhouse"].query_df(f"SELECT * FROM {analytics.TABLE} FINAL ORDER BY instrument_id, minute")
    cols = [c for c in after.columns if c not in ("version", "run_id", "source_version")]
    old = before[before["minute"] < after["minute"].max()]
    merged = old.merge(after, on=["instrument_id", "minute"], suffixes=("", "_new"))
    assert len(merged) == len(old) and len(after) > len(before) * 0.9
    for c in cols:
        if c in ("instrument_id", "minute"):
            continue
        a, b = merged[c].to_numpy(), merged[c + "_new"].to_numpy()
        same = (a == b) | (a != a) & (b != b)
        # only the last minute of the first half may change (the second half continued it)
        assert same.sum() >= len(merged) - 2, c
