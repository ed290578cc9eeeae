"""ClickHouse storage of the market_microstructure product: the VPIN buckets, the kept VPIN states and the daily
parameters declared once, and the product's SQL."""

import json
from datetime import date

import pandas as pd

from nautilus_assets.market_data.assets import BARS_KEY, TRADES_KEY
from nautilus_assets.market_data.bars import BARS, since_condition
from nautilus_assets.tables import Column, Table
from resources.clickhouse import ClickHouseResource

DB = "microstructure"
_VERSION = Column("version", "UInt64", "Row version; the latest wins")
_RUN_ID = Column("run_id", "String", "Run (micro-batch) that computed the row")
BUCKETS = Table(
    f"{DB}.vpin_buckets",
    (
        Column("instrument_id", "LowCardinality(String)", "Instrument", ((BARS_KEY, "instrument_id"),)),
        Column("variant", "LowCardinality(String)", "bvc (bulk volume classification) or aggressor (trades' side)"),
        Column("bucket_seq", "UInt64", "Bucket number in the instrument's history"),
        Column("date", "Date", "UTC date the bucket completed", ((BARS_KEY, "minute"),)),
        Column("end_minute", "DateTime('UTC')", "Bar in which the bucket completed", ((BARS_KEY, "minute"),)),
        Column("close", "Float64", "Close of that bar", ((BARS_KEY, "close"),)),
        Column(
            "buy",
            "Float64",
            "Buy volume in the bucket",
            ((BARS_KEY, "close"), (BARS_KEY, "volume"), (BARS_KEY, "buy_volume")),
        ),
        Column(
            "sell",
            "Float64",
            "Sell volume in the bucket",
            ((BARS_KEY, "close"), (BARS_KEY, "volume"), (BARS_KEY, "sell_volume")),
        ),
        Column(
            "bucket_volume", "Float64", "20-day average daily volume / 50 (fixed for the day)", ((TRADES_KEY, "size"),)
        ),
        Column("order_imbalance", "Float64", "(buy − sell) / (buy + sell)", ((BARS_KEY, "volume"),)),
        Column(
            "vpin",
            "Float64",
            "Σ|sell − buy| / (50 · bucket volume) over the last 50 buckets (NaN before 50)",
            ((BARS_KEY, "close"), (BARS_KEY, "volume")),
        ),
        Column(
            "sigma", "Float64", "Std of 1-minute price changes over the previous trading day", ((TRADES_KEY, "price"),)
        ),
        _VERSION,
        _RUN_ID,
        Column("batch_id", "String", "The row's batch (row provenance)", extra="ALIAS run_id", added=True),
    ),
    "ENGINE = ReplacingMergeTree(version) ORDER BY (instrument_id, variant, bucket_seq)",
)
STATES = Table(
    f"{DB}.vpin_states",
    (
        Column("instrument_id", "LowCardinality(String)", "Instrument"),
        Column("minute", "DateTime('UTC')", "The state is the one before this minute's bar"),
        Column("state", "String", "Both variants' VpinState as JSON"),
        _VERSION,
    ),
    "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(minute) ORDER BY (instrument_id, minute)",
)
PARAMS = Table(
    f"{DB}.vpin_params",
    (
        Column("instrument_id", "LowCardinality(String)", "Instrument"),
        Column("date", "Date", "Day the parameters hold for"),
        Column("sigma", "Float64", "Std of 1-minute price changes over the previous trading day"),
        Column("adv", "Float64", "20-day average daily volume"),
        Column("bucket_volume", "Float64", "adv / 50"),
        Column("days_used", "UInt32", "Trading days the average is over"),
        _VERSION,
    ),
    "ENGINE = ReplacingMergeTree(version) ORDER BY (instrument_id, date)",
)
DDL = [f"CREATE DATABASE IF NOT EXISTS {DB}", *BUCKETS.ddl(), *STATES.ddl(), *PARAMS.ddl()]


def stored_params(ch: ClickHouseResource, instrument: str, days: list[date]) -> dict:
    """{day: {sigma, bucket_volume}} of the days among `days` that have stored parameters."""
    with ch.session() as c:
        rows = c.query(
            f"SELECT date, sigma, bucket_volume FROM {PARAMS.name} FINAL WHERE instrument_id = %(i)s AND date IN %(d)s",
            parameters={"i": instrument, "d": days},
        ).result_rows
    return {d: {"sigma": sg, "bucket_volume": bv} for d, sg, bv in rows}


def write_params(ch: ClickHouseResource, params: pd.DataFrame) -> None:
    with ch.session() as c:
        c.insert_df(PARAMS.name, params)


def checkpoints(ch: ClickHouseResource, since: dict) -> dict[str, tuple[pd.Timestamp, dict]]:
    """Per instrument, the latest state at or before its `since` minute (the state before that minute's bar):
    {instrument: (its minute, states by variant)}, for all the instruments in one query."""
    cond, params = since_condition(since, op="<=")
    with ch.session() as c:
        rows = c.query(
            f"SELECT instrument_id, toUnixTimestamp(minute), state FROM {STATES.name} FINAL WHERE {cond} "
            "ORDER BY instrument_id, minute DESC LIMIT 1 BY instrument_id",
            parameters=params,
        ).result_rows
    return {str(i): (pd.Timestamp(m, unit="s"), json.loads(st)) for i, m, st in rows}


def state_minutes(ch: ClickHouseResource, start: dict) -> dict[str, set[pd.Timestamp]]:
    """Per instrument, the minutes after its `start` that hold a state: the replay rewrites each (a late bar makes
    them stale)."""
    cond, params = since_condition(start, op=">")
    with ch.session() as c:
        rows = c.query(
            f"SELECT DISTINCT instrument_id, toUnixTimestamp(minute) FROM {STATES.name} WHERE {cond}", parameters=params
        ).result_rows
    out: dict[str, set] = {}
    for i, m in rows:
        out.setdefault(str(i), set()).add(pd.Timestamp(m, unit="s"))
    return out


def bars_from(ch: ClickHouseResource, start: dict) -> pd.DataFrame:
    """Each instrument's bars from its `start` minute on, in time order."""
    cond, params = since_condition(start)
    with ch.session() as c:
        return c.query_df(f"SELECT * FROM {BARS} WHERE {cond} ORDER BY instrument_id, minute", parameters=params)


def write_replay(ch: ClickHouseResource, states: pd.DataFrame, buckets: pd.DataFrame | None) -> None:
    with ch.session() as c:
        c.insert_df(STATES.name, states)
        if buckets is not None:
            c.insert_df(BUCKETS.name, buckets)


def latest_buckets(ch: ClickHouseResource, instrument: str, n: int) -> pd.DataFrame:
    """The instrument's latest `n` BVC buckets, newest first (a primary-key range)."""
    return ch.query_df(
        f"SELECT instrument_id, end_minute, close, vpin FROM {BUCKETS.name} FINAL "
        f"WHERE instrument_id = %(i)s AND variant = 'bvc' ORDER BY bucket_seq DESC LIMIT {int(n)}",
        parameters={"i": instrument},
    )


def has_states(ch: ClickHouseResource) -> bool:
    return not ch.query_df(f"SELECT 1 FROM {STATES.name} LIMIT 1").empty


def check_batch(ch: ClickHouseResource, firsts: dict) -> tuple[int, int]:
    """(inexact buckets, VPIN outside [0, 1]) among the buckets the batch wrote: primary-key ranges."""
    if not firsts:
        return 0, 0
    cond = " OR ".join(f"(instrument_id = %(i{k})s AND bucket_seq >= %(s{k})s)" for k in range(len(firsts)))
    params = {p: v for k, (i, q) in enumerate(sorted(firsts.items())) for p, v in ((f"i{k}", i), (f"s{k}", q))}
    with ch.session() as c:
        inexact, outside = c.query(
            f"SELECT countIf(abs(buy + sell - bucket_volume) > 1e-6 * bucket_volume OR buy < -1e-9 OR sell < -1e-9), "
            f"countIf(vpin < 0 OR vpin > 1) FROM {BUCKETS.name} FINAL WHERE {cond}",
            parameters=params,
        ).first_row
    return int(inexact), int(outside)


def instruments_today(ch: ClickHouseResource) -> list[str]:
    """The instruments with bars since today's UTC midnight."""
    with ch.session() as c:
        rows = c.query(
            f"SELECT DISTINCT instrument_id FROM {BARS} WHERE minute >= toStartOfDay(now('UTC'))"
        ).result_rows
    return [str(i) for (i,) in rows]
