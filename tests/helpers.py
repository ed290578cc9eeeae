"""Shared test helpers: reference computations independent of the product code, and the few steps many tests take
(publish a market, run a batch, count what each sink stored, evaluate a sensor, wait, empty the stores)."""

import time
from pathlib import Path

import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent  # the project


def reference_bars(trades: pa.Table) -> pd.DataFrame:
    """1-minute bars from raw published trades, computed with pandas only."""
    df = trades.to_pandas().sort_values(["instrument_id", "ts_event"])
    df["minute"] = pd.to_datetime(df["ts_event"] // 60_000_000_000 * 60, unit="s")
    df["pv"] = df["price"] * df["size"]
    df["buy"] = df["size"].where(df["aggressor_side"] == "BUYER", 0.0)
    df["sell"] = df["size"].where(df["aggressor_side"] == "SELLER", 0.0)
    g = df.groupby(["instrument_id", "minute"])
    out = pd.DataFrame(
        {
            "open": g["price"].first(),
            "high": g["price"].max(),
            "low": g["price"].min(),
            "close": g["price"].last(),
            "volume": g["size"].sum(),
            "vwap": g["pv"].sum() / g["size"].sum(),
            "trade_count": g["price"].size(),
            "buy_volume": g["buy"].sum(),
            "sell_volume": g["sell"].sum(),
        }
    )
    return out.reset_index()


def stored_bars(ch) -> pd.DataFrame:
    df = ch.query_df(
        "SELECT instrument_id, minute, open, high, low, close, volume, vwap, trade_count, buy_volume, "
        "sell_volume FROM market_data.bars_1m FINAL ORDER BY instrument_id, minute"
    )
    df["minute"] = pd.to_datetime(df["minute"]).dt.tz_localize(None)
    df["instrument_id"] = df["instrument_id"].astype(str)
    df["trade_count"] = df["trade_count"].astype("int64")
    return df


def assert_bars_equal(stored: pd.DataFrame, ref: pd.DataFrame) -> None:
    ref = ref.sort_values(["instrument_id", "minute"]).reset_index(drop=True)
    ref["instrument_id"] = ref["instrument_id"].astype(str)
    ref["minute"] = ref["minute"].astype(stored["minute"].dtype)
    pd.testing.assert_frame_equal(stored.reset_index(drop=True), ref, check_dtype=False, rtol=1e-12, atol=0)


def fail_orphaned_runs(instance, since: float) -> list[str]:
    """After a test killed the daemon it spawned (and with it the run workers it launched), fail the runs left
    unfinished: a run the sensor launched moments before the kill would otherwise stay in flight in the shared
    instance, and the next test's sensor would wait on it."""
    import dagster as dg

    from sensors.pulsar_ingest import NOT_FINISHED_STATUSES

    left = [
        r.dagster_run
        for r in instance.get_run_records(dg.RunsFilter(statuses=list(NOT_FINISHED_STATUSES)))
        if r.create_timestamp.timestamp() >= since
    ]
    for run in left:
        instance.report_run_failed(run, "the test that launched it killed its daemon")
    return [run.run_id for run in left]


WEEK = 7 * 86400


def batch(res, feed, batch_id, ack=True):
    from nautilus_assets.market_data.ingest import run_batch

    return run_batch(feed, res["pulsar"], res["lake"], res["clickhouse"], batch_id, 100_000, 20, WEEK, ack=ack)


def counts(res, feed):
    from nautilus_assets.market_data import sinks

    delta = res["lake"].table(sinks.bronze_table(feed))
    return (
        res["clickhouse"].scalar(f"SELECT count() FROM market_data.{feed.name}"),
        delta.to_pyarrow_table(columns=["message_id"]).num_rows if delta else 0,
    )


def publish(res, n, seed):
    from nautilus_assets.market_data.simulator import MarketSimulator
    from scripts.publisher import publish_tables

    trades, quotes = MarketSimulator(
        ["AAPL.XNAS", "SPY.ARCX"], seed=seed, start_ns=time.time_ns() - 5 * 60 * 10**9
    ).take(n, n)
    publish_tables(res["pulsar"], trades, quotes)
    return trades, quotes


def evaluate(sensor_name, instance, res, cursor=None):
    import dagster as dg

    from nautilus_assets.definitions import defs

    sensor = defs.get_repository_def().get_sensor_def(sensor_name)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"pulsar": res["pulsar"]})
    return sensor.evaluate_tick(ctx), sensor.job_name


def reset_state(res):
    """What `clean` does, callable from fixtures of a wider scope."""
    from nautilus_assets.market_data.ingest import receive, subscribe
    from nautilus_assets.market_data.schema import FEEDS
    from nautilus_assets.market_data.sinks import DB, bronze_table

    with res["pulsar"].client() as client:
        for feed in FEEDS.values():
            c = subscribe(client, feed)
            while msgs := receive(c, 100_000, 10, idle_ms=500):
                for m in msgs:
                    c.acknowledge(m)
            c.close()
    with res["clickhouse"].session() as c:
        tables = c.query(
            "SELECT database, name FROM system.tables WHERE database IN %(d)s",
            parameters={"d": [DB, "analytics", "microstructure", "risk", "ml"]},
        ).result_rows
        for db, t in tables:
            c.command(f"TRUNCATE TABLE {db}.{t}")
    res["redis"].client().flushdb()  # the current-state cache follows the stores it was emptied with
    with res["postgres"].connect() as conn:
        if conn.execute("SELECT to_regclass('portfolio.fills')").fetchone()[0]:
            conn.execute("TRUNCATE portfolio.fills, portfolio.fills_quarantine, portfolio.portfolio_states")
    with res["pulsar"].client() as client:
        import pulsar

        from nautilus_assets.analytics.assets import SUBSCRIPTION as ANALYTICS
        from nautilus_assets.microstructure.assets import SUBSCRIPTION as MICROSTRUCTURE
        from nautilus_assets.portfolio.assets import SUBSCRIPTION
        from nautilus_assets.portfolio.models import FILLS_TOPIC
        from resources.topics import BARS_CHANGES, BOOK_CHANGES

        for topics, sub in (
            ([FILLS_TOPIC, BARS_CHANGES], SUBSCRIPTION),
            ([BARS_CHANGES], ANALYTICS),
            ([BARS_CHANGES, BOOK_CHANGES], MICROSTRUCTURE),
        ):
            c = client.subscribe(
                topics, sub, consumer_type=pulsar.ConsumerType.Shared, initial_position=pulsar.InitialPosition.Earliest
            )
            while msgs := receive(c, 100_000, 10, idle_ms=300):
                for m in msgs:
                    c.acknowledge(m)
            c.close()
    s3 = res["lake"].s3_client()
    from nautilus_assets.market_data.schema import ORDERBOOK_DEPTH10
    from scripts.history import MANIFEST

    for prefix in [bronze_table(feed) for feed in (*FEEDS.values(), ORDERBOOK_DEPTH10)] + [MANIFEST]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=res["lake"].bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=res["lake"].bucket, Key=obj["Key"])
    return res


def wait_for(pred, timeout: float = 30, every: float = 0.5, what: str = "condition"):
    deadline = time.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def product_resources(res: dict) -> dict:
    """The resources the product assets take (the governance connection is the audit's)."""
    return {k: res[k] for k in ("lake", "clickhouse", "postgres", "postgres_risk", "pulsar", "redis")}
