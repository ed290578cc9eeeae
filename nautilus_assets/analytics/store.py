"""ClickHouse storage of the market_analytics product: `analytics.indicators_1m` declared once, and the
product's SQL."""

import pandas as pd

from nautilus_assets.market_data.assets import BARS_KEY
from nautilus_assets.market_data.bars import BARS, since_condition
from nautilus_assets.tables import Column, Table
from resources.clickhouse import ClickHouseResource

from .indicators import COLUMNS, LOOKBACK_BARS


def _bars(*columns: str) -> tuple:
    return tuple((BARS_KEY, c) for c in columns)


INDICATORS = Table(
    "analytics.indicators_1m",
    (
        Column("instrument_id", "LowCardinality(String)", "Instrument", _bars("instrument_id")),
        Column("minute", "DateTime('UTC')", "Bar minute", _bars("minute")),
        Column("close", "Float64", "Bar close", _bars("close")),
        *(Column(n, t, d, _bars(*cols)) for n, t, d, cols in COLUMNS),
        Column("source_version", "UInt64", "Version of the bar the row was computed from"),
        Column("version", "UInt64", "Row version; the latest wins"),
        Column("run_id", "String", "Run (micro-batch) that computed the row"),
        Column("batch_id", "String", "The row's batch (row provenance)", extra="ALIAS run_id", added=True),
    ),
    "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(minute) ORDER BY (instrument_id, minute)",
)
TABLE = INDICATORS.name
DDL = ["CREATE DATABASE IF NOT EXISTS analytics", *INDICATORS.ddl()]


def windows(ch: ClickHouseResource, since: dict) -> dict[str, pd.DataFrame]:
    """Per instrument, its bars from LOOKBACK_BARS before its `since` minute (and at least from that minute's UTC
    midnight) on, in time order: two queries for all the instruments, whatever their number."""
    cond, params = since_condition(since, op="<")
    with ch.session() as c:
        back = dict(
            c.query(
                f"SELECT instrument_id, min(minute) FROM (SELECT instrument_id, minute FROM {BARS} "
                f"WHERE {cond} ORDER BY instrument_id, minute DESC LIMIT {LOOKBACK_BARS} BY instrument_id) "
                "GROUP BY instrument_id",
                parameters=params,
            ).result_rows
        )
        start = {
            i: min(pd.Timestamp(m).floor("D"), pd.Timestamp(back[i]) if i in back else pd.Timestamp(m))
            for i, m in since.items()
        }
        cond, params = since_condition(start)
        bars = c.query_df(f"SELECT * FROM {BARS} WHERE {cond} ORDER BY instrument_id, minute", parameters=params)
    if bars.empty:  # chDB answers an empty result with a frame without columns
        return {}
    bars["instrument_id"] = bars["instrument_id"].astype(str)
    return {i: g.reset_index(drop=True) for i, g in bars.groupby("instrument_id", sort=True)}


def write(ch: ClickHouseResource, rows: pd.DataFrame) -> None:
    with ch.session() as c:
        c.insert_df(TABLE, rows)


def is_empty(ch: ClickHouseResource) -> bool:
    return ch.query_df(f"SELECT 1 FROM {TABLE} LIMIT 1").empty


def check_batch(ch: ClickHouseResource, since: dict) -> tuple[int, int]:
    """(bars without an indicator row of their latest version, rows out of range) among the batch's minutes."""
    cond, params = since_condition(since)
    missing = int(
        ch.scalar(
            f"SELECT count() FROM {BARS} AS b LEFT ANTI JOIN (SELECT instrument_id, minute, source_version "
            f"FROM {TABLE} FINAL WHERE {cond}) AS i ON b.instrument_id = i.instrument_id AND b.minute = i.minute "
            f"AND b.version = i.source_version WHERE {since_condition(since, 'b.')[0]}",
            params,
        )
    )
    bad = int(
        ch.scalar(
            f"SELECT countIf(rsi_14 < 0 OR rsi_14 > 100 OR bb_lower > bb_middle OR bb_middle > bb_upper OR atr_14 < 0) "
            f"FROM {TABLE} FINAL WHERE {cond}",
            params,
        )
    )
    return missing, bad
