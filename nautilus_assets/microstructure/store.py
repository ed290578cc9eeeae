"""ClickHouse storage of the market_microstructure product: the VPIN buckets, the kept VPIN states and the daily
parameters declared once, and the product's SQL."""

import json
from datetime import date

import pandas as pd
import pyarrow as pa

from nautilus_assets.market_data.assets import BARS_KEY, DEPTH10_KEY, TRADES_KEY
from nautilus_assets.market_data.bars import BARS, since_condition
from nautilus_assets.tables import Column, Table
from resources.clickhouse import ClickHouseResource

DB = "microstructure"
DEPTH10 = "market_data.orderbook_depth10"
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


def _book(*columns: str) -> tuple:
    return tuple((DEPTH10_KEY, c) for c in columns)


_TOP = _book("bid_prices", "ask_prices", "ts_event")
_SIZES = _book("bid_sizes", "ask_sizes", "ts_event")
_BOTH = _book("bid_prices", "ask_prices", "bid_sizes", "ask_sizes", "ts_event")
BOOK_1M = Table(
    f"{DB}.book_1m",
    (
        Column("instrument_id", "LowCardinality(String)", "Instrument", _book("instrument_id")),
        Column("minute", "DateTime('UTC')", "Start of the UTC minute", _book("ts_event")),
        Column("updates", "UInt64", "Book updates in the minute", _book("ts_event")),
        Column("spread_mean", "Nullable(Float64)", "Time-weighted mean of best ask − best bid", _TOP),
        Column("spread_close", "Nullable(Float64)", "Best ask − best bid at the minute's last update", _TOP),
        Column("relative_spread_bps_mean", "Nullable(Float64)", "Time-weighted mean spread / mid, in bp", _TOP),
        Column(
            "depth_imbalance_mean",
            "Nullable(Float64)",
            "Time-weighted mean of (Σ bid sizes − Σ ask sizes) / (Σ bid + Σ ask) over 10 levels",
            _SIZES,
        ),
        Column("l1_imbalance_close", "Nullable(Float64)", "(bid size − ask size) / (sum) at the best, last", _SIZES),
        Column(
            "microprice_close",
            "Nullable(Float64)",
            "Size-weighted mid (ask·bid size + bid·ask size) / (bid size + ask size), last update",
            _BOTH,
        ),
        Column("mid_close", "Nullable(Float64)", "(best bid + best ask) / 2 at the last update", _TOP),
        Column(
            "ofi",
            "Nullable(Float64)",
            "Order-flow imbalance, Σ e_n over the minute (Cont, Kukanov & Stoikov 2014)",
            _BOTH,
        ),
        Column("mean_depth", "Nullable(Float64)", "Mean of (best bid size + best ask size) / 2 (CKS's D)", _SIZES),
        Column("ofi_normalized", "Nullable(Float64)", "ofi / mean_depth", _BOTH),
        _VERSION,
        _RUN_ID,
        Column("batch_id", "String", "The row's batch (row provenance)", extra="ALIAS run_id"),
    ),
    "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(minute) ORDER BY (instrument_id, minute)",
)
DDL = [f"CREATE DATABASE IF NOT EXISTS {DB}", *BUCKETS.ddl(), *STATES.ddl(), *PARAMS.ddl(), *BOOK_1M.ddl()]
_BOOK_COLUMNS = "instrument_id, ts_event, bid_prices, bid_sizes, ask_prices, ask_sizes"


def book_inputs(ch: ClickHouseResource, since: dict[str, int]) -> tuple[pa.Table, pa.Table]:
    """What book.minute_measures needs for the minutes from each instrument's `since` (epoch s) on: every depth row
    from that minute, and the last one before it (book.py's continuation contract). Primary-key ranges of
    (instrument_id, ts_event): the cost follows the minutes that changed, not the table."""
    names = sorted(since)
    params = {f"i{k}": n for k, n in enumerate(names)} | {f"t{k}": since[n] * 10**9 for k, n in enumerate(names)}
    after = " OR ".join(f"(instrument_id = %(i{k})s AND ts_event >= %(t{k})s)" for k in range(len(names)))
    before = " UNION ALL ".join(
        f"(SELECT {_BOOK_COLUMNS} FROM {DEPTH10} WHERE instrument_id = %(i{k})s AND ts_event < %(t{k})s "
        "ORDER BY ts_event DESC, sequence DESC LIMIT 1)"
        for k in range(len(names))
    )
    with ch.session() as c:
        states = c.query_arrow(f"SELECT {_BOOK_COLUMNS} FROM {DEPTH10} WHERE {after}", parameters=params)
        previous = c.query_arrow(before, parameters=params)
    return states, previous


def write_book(ch: ClickHouseResource, rows: pa.Table, run_id: str, version: int) -> None:
    if rows.num_rows:
        n = rows.num_rows
        rows = rows.append_column("version", pa.array([version] * n, pa.uint64()))
        with ch.session() as c:
            c.insert_arrow(BOOK_1M.name, rows.append_column("run_id", pa.array([run_id] * n, pa.string())))


def check_book(ch: ClickHouseResource, since: dict[str, int]) -> int:
    """Rows the batch wrote with a measure out of its range: a negative spread, |imbalance| > 1, a microprice
    outside the spread."""
    names = sorted(since)
    params = {f"i{k}": n for k, n in enumerate(names)} | {f"m{k}": since[n] for k, n in enumerate(names)}
    cond = " OR ".join(f"(instrument_id = %(i{k})s AND minute >= toDateTime(%(m{k})s))" for k in range(len(names)))
    with ch.session() as c:
        return int(
            c.query(
                f"SELECT countIf(spread_close < 0 OR spread_mean < 0 OR abs(depth_imbalance_mean) > 1 + 1e-12 "
                f"OR abs(l1_imbalance_close) > 1 + 1e-12 OR microprice_close < mid_close - spread_close / 2 - 1e-9 "
                f"OR microprice_close > mid_close + spread_close / 2 + 1e-9) FROM {BOOK_1M.name} FINAL WHERE {cond}",
                parameters=params,
            ).first_row[0]
        )


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
