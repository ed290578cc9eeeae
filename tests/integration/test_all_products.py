"""From the simulator to all six data products: history in the lake (and the stores), a live burst through the
Pulsar sensors, then every product materialized against the real services, each announced on its engine topic."""

import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import orjson
import pulsar

from nautilus_assets.analytics.assets import indicators_1m
from nautilus_assets.definitions import defs
from nautilus_assets.market_data.daily import bars_1d
from nautilus_assets.market_data.ingest import receive
from nautilus_assets.market_data.simulator import MarketSimulator
from nautilus_assets.microstructure.assets import KEY as VPIN
from nautilus_assets.microstructure.assets import vpin_buckets
from nautilus_assets.ml.assets import next_bar_direction
from nautilus_assets.portfolio.assets import portfolio_states
from nautilus_assets.portfolio.daily import daily_nav
from nautilus_assets.portfolio.models import FILLS_TOPIC, fill_messages, model_fills
from nautilus_assets.risk.assets import risk_metrics
from resources import schemas
from resources.topics import ENGINES
from scripts.history import write_history
from scripts.publisher import publish_tables
from tests.helpers import evaluate, product_resources

INSTR = ["AAPL.XNAS", "SPY.ARCX"]


def test_simulator_to_all_six_products(clean, instance):
    res = clean
    today = datetime.now(UTC).date()
    write_history(
        res["lake"], INSTR, days=6, events_per_day=8000, postgres=res["postgres"], clickhouse=res["clickhouse"]
    )
    trades, quotes = MarketSimulator(
        INSTR, seed=77, start_ns=time.time_ns() - 20 * 60 * 10**9, events_per_second=4, intraday_profile=False
    ).take(2000, 2000)  # in the past at any time of day
    publish_tables(res["pulsar"], trades, quotes)
    with res["pulsar"].client() as client:
        p = schemas.create_producer(client, FILLS_TOPIC)
        for m in fill_messages(model_fills(trades)):
            p.send(m)
        p.close()
    time.sleep(6)  # pulsar-lite refreshes its backlog metrics every ~5 s
    for name in ("trades_ingest_sensor", "quotes_ingest_sensor"):
        tick, job_name = evaluate(name, instance, res)
        for rr in tick.run_requests:
            assert (
                defs.resolve_job_def(rr.job_name or job_name)
                .execute_in_process(instance=instance, tags=rr.tags)
                .success
            )
    resources = product_resources(res)
    assert dg.materialize(
        [indicators_1m, vpin_buckets, portfolio_states], instance=instance, resources=resources
    ).success
    yesterday, first = today - timedelta(days=1), today - timedelta(days=6)
    for asset, start in ((bars_1d, first), (daily_nav, first), (risk_metrics, yesterday)):
        assert dg.materialize(
            [asset],
            instance=instance,
            resources=resources,
            tags={
                "dagster/asset_partition_range_start": start.isoformat(),
                "dagster/asset_partition_range_end": yesterday.isoformat(),
            },
        ).success
    ml = dg.materialize(
        [next_bar_direction], instance=instance, resources=resources, partition_key=yesterday.isoformat()
    )
    assert ml.success

    ch = res["clickhouse"]
    assert ch.scalar("SELECT count() FROM market_data.trades") > 2000
    assert ch.scalar("SELECT count() FROM analytics.indicators_1m FINAL") == ch.scalar(
        "SELECT count() FROM market_data.bars_1m FINAL"
    )
    assert ch.scalar("SELECT countIf(isFinite(vpin)) FROM microstructure.vpin_buckets FINAL") > 0
    assert ch.scalar("SELECT count() FROM market_data.bars_1d FINAL") == 6 * len(INSTR)
    assert ch.scalar("SELECT count() FROM ml.ml_predictions FINAL") > 0
    with res["postgres"].connect() as conn:
        assert conn.execute("SELECT count(*) FROM portfolio.portfolio_states").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM portfolio.daily_nav").fetchone()[0] == 6 * 3
    # vpin_buckets is a multi-asset (VPIN and the order book's minutes): its VPIN key
    keys = [indicators_1m.key, VPIN, portfolio_states.key, next_bar_direction.key, *risk_metrics.keys]
    assert all(instance.get_latest_materialization_event(k) for k in keys)
    with res["pulsar"].client() as client:
        for topic in (
            "analytics-signals",
            "vpin-microstructure",
            "portfolio-positions",
            "risk-metrics",
            "ml-predictions",
        ):
            c = client.subscribe(
                ENGINES.topic(topic),
                "test-all-products",
                consumer_type=pulsar.ConsumerType.Shared,
                initial_position=pulsar.InitialPosition.Earliest,
            )
            events = [orjson.loads(m.data()) for m in receive(c, 1000, 5, idle_ms=500)]
            c.close()
            assert events, topic
