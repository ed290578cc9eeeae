"""Daily bars per instrument from the lake's bronze trades (a replay of the lake, not of Pulsar), partitioned by
UTC trading date: the day-level input of the portfolio and risk products."""

import time

import dagster as dg
import pandas as pd

from nautilus_assets.product import END_OF_DAY, TRADING_DAYS
from nautilus_assets.tables import Column, Table
from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource

from .assets import GROUP, OWNERS, TRADES_KEY
from .schema import TRADES
from .sinks import DB, bronze_table

KEY = dg.AssetKey(["market_data_feed", "bars_1d"])


def _trades(*columns: str) -> tuple:
    return tuple((TRADES_KEY, c) for c in columns)


BARS_1D = Table(
    f"{DB}.bars_1d",
    (
        Column("instrument_id", "LowCardinality(String)", "Instrument", _trades("instrument_id")),
        Column("date", "Date", "UTC trading date", _trades("ts")),
        Column("open", "Float64", "First trade price", _trades("price", "ts_event")),
        Column("high", "Float64", "Highest price", _trades("price")),
        Column("low", "Float64", "Lowest price", _trades("price")),
        Column("close", "Float64", "Last trade price", _trades("price", "ts_event")),
        Column("volume", "Float64", "Σ size", _trades("size")),
        Column("vwap", "Float64", "Σ price·size / Σ size", _trades("price", "size")),
        Column("trade_count", "UInt64", "Trades", _trades("trade_id")),
        Column("version", "UInt64", "Row version; the latest wins (ReplacingMergeTree, read with FINAL)"),
        Column("run_id", "String", "Run that computed the row"),
        Column("batch_id", "String", "The row's run (row provenance)", extra="ALIAS run_id", added=True),
    ),
    "ENGINE = ReplacingMergeTree(version) ORDER BY (instrument_id, date)",
)


def daily_bars(trades: pd.DataFrame) -> pd.DataFrame:
    t = trades.sort_values("ts_event").assign(pv=trades["price"] * trades["size"])
    g = t.groupby(["instrument_id", "date"])
    out = pd.DataFrame(
        {
            "open": g["price"].first(),
            "high": g["price"].max(),
            "low": g["price"].min(),
            "close": g["price"].last(),
            "volume": g["size"].sum(),
            "trade_count": g["price"].size(),
        }
    )
    out["vwap"] = g["pv"].sum() / out["volume"]
    return out.reset_index()


def content_version(rows: pd.DataFrame) -> dg.DataVersion:
    """A data version from the rows' content (not their row version or run), so a replay of the same lake data
    gives the same version."""
    import hashlib

    if rows.empty:
        return dg.DataVersion("empty")
    df = rows.sort_values(["instrument_id", "date"]).reset_index(drop=True)
    return dg.DataVersion(hashlib.sha256(df.to_csv(index=False, float_format="%.12g").encode()).hexdigest()[:24])


@dg.asset(
    key=KEY,
    deps=[TRADES_KEY],
    partitions_def=TRADING_DAYS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name=GROUP,
    owners=OWNERS,
    kinds={"deltalake", "clickhouse"},
    code_version="1",
    pool="clickhouse",
    freshness_policy=END_OF_DAY,
    automation_condition=dg.AutomationCondition.on_cron("5 0 * * *", cron_timezone="UTC"),
    description=f"Daily OHLCV per instrument from the lake's bronze trades, in ClickHouse {DB}.bars_1d.",
    check_specs=[
        dg.AssetCheckSpec(
            "ohlc_consistent", asset=KEY, description="low <= open, close <= high; volume > 0; vwap within [low, high]"
        )
    ],
    metadata={"dagster/table_name": BARS_1D.name, "dagster/column_schema": BARS_1D.schema},
)
def bars_1d(context: dg.AssetExecutionContext, lake: LakeResource, clickhouse: ClickHouseResource):
    dates = list(context.partition_keys)
    dt = lake.table(bronze_table(TRADES))
    trades = (
        dt.to_pyarrow_dataset(partitions=[("date", "in", dates)])
        .to_table(columns=["instrument_id", "price", "size", "ts_event", "date"])
        .to_pandas()
        if dt
        else pd.DataFrame()
    )
    bars = daily_bars(trades) if len(trades) else pd.DataFrame()
    if len(bars):
        with clickhouse.session() as c:
            c.insert_df(BARS_1D.name, bars.assign(version=time.time_ns(), run_id=context.run.run_id))
    yield dg.MaterializeResult(
        metadata={
            "dates": len(dates),
            "rows": len(bars),
            "dagster/column_lineage": BARS_1D.lineage,
            "lake/trades_version": -1 if dt is None else dt.version(),
        },
        data_version=content_version(bars),
    )
    bad = int(
        clickhouse.scalar(
            f"SELECT countIf(NOT (low <= least(open, close) AND greatest(open, close) <= high AND volume > 0 "
            f"AND vwap BETWEEN low - 1e-9 AND high + 1e-9)) FROM {DB}.bars_1d FINAL WHERE date IN %(d)s",
            parameters={"d": dates},
        )
    )
    yield dg.AssetCheckResult(check_name="ohlc_consistent", passed=bad == 0, metadata={"inconsistent_bars": bad})


DAILY_ASSETS = [bars_1d]
