"""Publish 10,000 trades and 10,000 quotes; the real sensor, against the real (PostgreSQL) instance,
requests micro-batches; executing them lands exactly those rows in Delta and in ClickHouse."""

import time

import pyarrow.compute as pc

from nautilus_assets.definitions import defs
from nautilus_assets.market_data.schema import QUOTES, SUBSCRIPTION, TRADES
from nautilus_assets.market_data.simulator import MarketSimulator
from nautilus_assets.market_data.sinks import bronze_table
from scripts.publisher import publish_tables
from tests.helpers import assert_bars_equal, evaluate, reference_bars, stored_bars, wait_for

INSTR = ["AAPL.XNAS", "MSFT.XNAS", "ESZ6.GLBX"]


def test_sensor_batches_land_every_tick_exactly_once(clean, instance):
    res = clean
    trades, quotes = MarketSimulator(INSTR, seed=42, start_ns=time.time_ns() - 15 * 60 * 10**9).take(10_000, 10_000)
    assert publish_tables(res["pulsar"], trades, quotes) == {"trades": 10_000, "quotes": 10_000}
    for feed in (TRADES, QUOTES):
        wait_for(lambda: res["pulsar"].backlog(feed.topic, SUBSCRIPTION), 30, what=f"backlog on {feed.topic}")

    cursors = {}
    for feed in (TRADES, QUOTES):
        tick, job_name = evaluate(f"{feed.name}_ingest_sensor", instance, res)
        assert len(tick.run_requests) == 1, tick.skip_message
        rr = tick.run_requests[0]
        cursors[feed.name] = tick.cursor
        result = defs.resolve_job_def(rr.job_name or job_name).execute_in_process(instance=instance, tags=rr.tags)
        assert result.success
        evals = result.get_asset_check_evaluations()
        assert evals and all(e.passed for e in evals), [(e.check_name, e.metadata) for e in evals]
        mats = [
            m
            for m in result.asset_materializations_for_node(f"ingest_{feed.name}_batch")
            if m.asset_key.path[-1] == feed.name
        ]  # one per batch of the long-lived run: <run batch id>.<n>
        assert sum(m.metadata["consumed"].value for m in mats) == 10_000
        assert [m.metadata["batch_id"].value for m in mats] == [
            f"{rr.tags['nautilus/batch_id']}.{i + 1}" for i in range(len(mats))
        ]

    ch, lake = res["clickhouse"], res["lake"]
    for feed, published in ((TRADES, trades), (QUOTES, quotes)):
        assert ch.scalar(f"SELECT count() FROM market_data.{feed.name}") == 10_000
        assert ch.scalar(f"SELECT uniqExact(message_id) FROM market_data.{feed.name}") == 10_000
        delta = lake.table(bronze_table(feed)).to_pyarrow_table()
        assert delta.num_rows == 10_000 and pc.count_distinct(delta["message_id"]).as_py() == 10_000
        assert sorted(delta["ts_event"].to_pylist()) == sorted(published["ts_event"].to_pylist())
    assert ch.scalar("SELECT count() FROM market_data.quarantine") == 0
    assert_bars_equal(stored_bars(ch), reference_bars(trades))

    for feed in (TRADES, QUOTES):
        wait_for(lambda: res["pulsar"].backlog(feed.topic, SUBSCRIPTION) == 0, 30, what="zero backlog")
        again, _ = evaluate(f"{feed.name}_ingest_sensor", instance, res, cursor=cursors[feed.name])
        assert again.run_requests == [] and "nothing pending" in again.skip_message
