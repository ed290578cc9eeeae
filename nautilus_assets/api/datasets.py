"""What each product's read API serves: its datasets (stored tables), how a query on one becomes SQL or a Delta
scan, and the latest-row queries of the products without a current-state cache.

A query is: instruments (or portfolios), a half-open time range [start, end) on the dataset's time column, an
optional `as_of` (lake-backed datasets only: a Delta version or timestamp, time travel), a limit, and a cursor.
Paging is by keyset on the dataset's unique sort key (`order`): a cursor is the last row's key, so a page costs
what it returns, not the pages before it. Every answer is an Arrow table (rendered as JSON, Arrow IPC or Parquet).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from nautilus_assets.current import plain

# ClickHouse settings of every API query: bounded in time and size. The SQL is a fixed template per dataset with
# bound parameters; `readonly` is not set per query (a session that set it may not set it again).
QUERY_SETTINGS = {"max_execution_time": 30, "max_result_rows": 1_000_000, "result_overflow_mode": "throw"}


class BadQuery(ValueError):
    """A query the API answers with 400 (the message says what to change)."""


@dataclass(frozen=True)
class Dataset:
    name: str
    store: str  # clickhouse | postgres
    table: str  # schema.table
    time: str  # the column a time range applies to
    time_type: str  # ns (Int64 UTC nanoseconds) | datetime | date
    order: tuple[str, ...]  # unique sort key: the order of the rows and the paging cursor
    description: str
    final: bool = False  # ClickHouse ReplacingMergeTree: read with FINAL (the latest version of a row)
    instrument: str | None = "instrument_id"
    portfolio: str | None = None
    lake: str | None = None  # Delta table on the lake (bronze) holding the same rows: `as_of` reads it

    def info(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "store": self.store,
            "table": self.table,
            "time_column": self.time,
            "order": list(self.order),
            "filters": [f for f in (self.instrument and "instrument", self.portfolio and "portfolio") if f],
            "as_of": bool(self.lake),
        }


_MD = "market_data"
DATASETS: dict[str, dict[str, Dataset]] = {
    "market_data_feed": {
        d.name: d
        for d in (
            Dataset(
                "trades",
                "clickhouse",
                f"{_MD}.trades",
                "ts_event",
                "ns",
                ("instrument_id", "ts_event", "message_id"),
                "Trades as ingested (exactly once), with their Pulsar provenance",
                lake="bronze/trades",
            ),
            Dataset(
                "quotes",
                "clickhouse",
                f"{_MD}.quotes",
                "ts_event",
                "ns",
                ("instrument_id", "ts_event", "message_id"),
                "Level-1 quotes (top of book) as ingested",
                lake="bronze/quotes",
            ),
            Dataset(
                "bars_1m",
                "clickhouse",
                f"{_MD}.bars_1m",
                "minute",
                "datetime",
                ("instrument_id", "minute"),
                "1-minute OHLCV bars with buy/sell volume",
                final=True,
            ),
            Dataset(
                "bars_1d",
                "clickhouse",
                f"{_MD}.bars_1d",
                "date",
                "date",
                ("instrument_id", "date"),
                "Daily OHLCV bars (UTC trading days)",
                final=True,
            ),
        )
    },
    "market_analytics": {
        d.name: d
        for d in (
            Dataset(
                "indicators_1m",
                "clickhouse",
                "analytics.indicators_1m",
                "minute",
                "datetime",
                ("instrument_id", "minute"),
                "SMA, EMA, RSI, MACD, Bollinger, ATR, session VWAP per 1-minute bar",
                final=True,
            ),
        )
    },
    "market_microstructure": {
        d.name: d
        for d in (
            Dataset(
                "vpin",
                "clickhouse",
                "microstructure.vpin_buckets",
                "end_minute",
                "datetime",
                ("instrument_id", "variant", "bucket_seq"),
                "VPIN per volume bucket (BVC and aggressor variants)",
                final=True,
            ),
        )
    },
    "portfolio_states": {
        d.name: d
        for d in (
            Dataset(
                "positions",
                "postgres",
                "portfolio.portfolio_states",
                "ts",
                "datetime",
                ("portfolio_id", "instrument_id", "ts"),
                "Position, average cost, P&L, mark and NAV per state time",
                portfolio="portfolio_id",
            ),
            Dataset(
                "daily_nav",
                "postgres",
                "portfolio.daily_nav",
                "date",
                "date",
                ("portfolio_id", "date"),
                "End-of-day NAV, P&L and return per model portfolio",
                instrument=None,
                portfolio="portfolio_id",
            ),
        )
    },
    "risk_metrics": {
        d.name: d
        for d in (
            Dataset(
                "daily",
                "clickhouse",
                "risk.risk_metrics",
                "date",
                "date",
                ("portfolio_id", "date"),
                "Positions-based VaR and expected shortfall (historical, parametric, Monte Carlo) per portfolio "
                "and day",
                final=True,
                instrument=None,
                portfolio="portfolio_id",
            ),
            Dataset(
                "var_components",
                "clickhouse",
                "risk.var_components",
                "date",
                "date",
                ("portfolio_id", "date", "instrument_id"),
                "Component (Euler), marginal and incremental VaR per portfolio, day and instrument",
                final=True,
                portfolio="portfolio_id",
            ),
            Dataset(
                "stress_results",
                "clickhouse",
                "risk.stress_results",
                "date",
                "date",
                ("portfolio_id", "date", "scenario"),
                "Stress P&L per portfolio, day and scenario (worst historical days, user-defined shocks)",
                final=True,
                instrument=None,
                portfolio="portfolio_id",
            ),
        )
    },
    "ml_predictions": {
        d.name: d
        for d in (
            Dataset(
                "next_bar_direction",
                "clickhouse",
                "ml.ml_predictions",
                "minute",
                "datetime",
                ("instrument_id", "minute"),
                "Probability that the next 1-minute bar closes up, per model version",
                final=True,
            ),
            Dataset(
                "models",
                "clickhouse",
                "ml.model_registry",
                "created_at",
                "datetime",
                ("model_version",),
                "Model registry: training span, metrics, code version, weights URI",
                instrument=None,
            ),
        )
    },
}


# ---- parameters ------------------------------------------------------------------------------------------
def parse_time(value: str | None, what: str) -> int | None:
    """An ISO 8601 time (UTC when it names no zone) or int64 UTC nanoseconds, as nanoseconds."""
    if value is None or value == "":
        return None
    if re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as e:
        raise BadQuery(f"{what}={value!r}: not an ISO 8601 time or int64 nanoseconds ({e})") from None
    if ts is pd.NaT:
        raise BadQuery(f"{what}={value!r}: not a time")
    return int((ts.tz_localize("UTC") if ts.tzinfo is None else ts).value)


def parse_as_of(value: str | None) -> int | datetime | None:
    """A Delta version (an integer below 10^12) or a timestamp."""
    if value is None or value == "":
        return None
    if re.fullmatch(r"\d{1,12}", value.strip()):
        return int(value)
    ns = parse_time(value, "as_of")
    return datetime.fromtimestamp(ns / 1e9, UTC)


def split(values: list[str] | None) -> list[str]:
    """Repeated or comma-separated values."""
    return sorted({v.strip() for x in values or [] for v in x.split(",") if v.strip()})


def encode_cursor(row: dict, ds: Dataset) -> str:
    key = [plain(row[c]) for c in ds.order]
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


def decode_cursor(cursor: str | None, ds: Dataset) -> list | None:
    if not cursor:
        return None
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(key, list) or len(key) != len(ds.order):
            raise ValueError("wrong length")
        return [_typed(v, c, ds) for v, c in zip(key, ds.order)]
    except (ValueError, TypeError) as e:
        raise BadQuery(f"cursor: not a cursor of {ds.name} ({e}); pass the next_cursor of the previous page") from None


def _typed(v, column: str, ds: Dataset):
    if column == ds.time and ds.time_type == "datetime":
        return pd.Timestamp(v).to_pydatetime()
    if column == ds.time and ds.time_type == "date":
        return date.fromisoformat(v)
    if not isinstance(v, (str, int)):
        raise TypeError(f"{column}: unexpected {type(v).__name__}")
    return v


# ---- SQL ---------------------------------------------------------------------------------------------------
@dataclass
class Query:
    instruments: list[str]
    portfolios: list[str]
    start: int | None
    end: int | None
    limit: int
    after: list | None  # the decoded cursor


def _members(ds: Dataset, q: Query, member: str) -> tuple[list[str], dict]:
    """The instrument and portfolio filters; `member` spells "column in the list %(name)s" in the SQL dialect."""
    where, p = [], {}
    for col, name, values in (
        (ds.instrument, "instruments", q.instruments),
        (ds.portfolio, "portfolios", q.portfolios),
    ):
        if values:
            where.append(member.format(col=col, name=name))
            p[name] = values
    return where, p


def clickhouse_sql(ds: Dataset, q: Query) -> tuple[str, dict]:
    where, p = _members(ds, q, "{col} IN %({name})s")
    for op, name, ns in ((">=", "start", q.start), ("<", "end", q.end)):
        if ns is not None:
            p[name] = ns
            bound = {
                "ns": f"%({name})s",
                "datetime": f"fromUnixTimestamp64Nano(toInt64(%({name})s), 'UTC')",
                "date": f"toDate(fromUnixTimestamp64Nano(toInt64(%({name})s), 'UTC'))",
            }[ds.time_type]
            where.append(f"{ds.time} {op} {bound}")
    if q.after is not None:
        vals = []
        for k, (_, v) in enumerate(zip(ds.order, q.after)):
            p[f"c{k}"] = v
            vals.append(
                f"toDateTime(%(c{k})s, 'UTC')"
                if isinstance(v, datetime)
                else f"toDate(%(c{k})s)"
                if isinstance(v, date)
                else f"%(c{k})s"
            )
        where.append(f"({', '.join(ds.order)}) > ({', '.join(vals)})")
    sql = (
        f"SELECT * FROM {ds.table}{' FINAL' if ds.final else ''}"
        f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY {', '.join(ds.order)} LIMIT {int(q.limit)}"
    )
    return sql, p


_types: dict[str, dict[str, str]] = {}  # ClickHouse column types by table, read once per process


def clickhouse_arrow(client, ds: Dataset, sql: str, params: dict) -> pa.Table:
    """The query as Arrow. ClickHouse sends DateTime as uint32 seconds in Arrow: they become UTC timestamps."""
    table = client.query_arrow(sql, parameters=params, settings=QUERY_SETTINGS, use_strings=True)
    if ds.table not in _types:
        db, name = ds.table.split(".")
        _types[ds.table] = dict(
            client.query(
                "SELECT name, type FROM system.columns WHERE database = %(d)s AND table = %(t)s",
                parameters={"d": db, "t": name},
            ).result_rows
        )
    for i, field in enumerate(table.schema):
        if pa.types.is_unsigned_integer(field.type) and _types[ds.table].get(field.name, "").startswith("DateTime("):
            table = table.set_column(i, field.name, table.column(i).cast(pa.int64()).cast(pa.timestamp("s", "UTC")))
    return table


def postgres_sql(ds: Dataset, q: Query) -> tuple[str, dict]:
    where, p = _members(ds, q, "{col} = ANY(%({name})s)")
    for op, name, ns in ((">=", "start", q.start), ("<", "end", q.end)):
        if ns is not None:
            t = datetime.fromtimestamp(ns / 1e9, UTC)
            p[name] = t.date() if ds.time_type == "date" else t
            where.append(f"{ds.time} {op} %({name})s")
    if q.after is not None:
        for k, v in enumerate(q.after):
            p[f"c{k}"] = v
        where.append(f"({', '.join(ds.order)}) > ({', '.join(f'%(c{k})s' for k in range(len(ds.order)))})")
    sql = (
        f"SELECT * FROM {ds.table}{' WHERE ' + ' AND '.join(where) if where else ''} "
        f"ORDER BY {', '.join(ds.order)} LIMIT {int(q.limit)}"
    )
    return sql, p


def lake_scan(dt, ds: Dataset, q: Query) -> pa.Table:
    """The query on a Delta table version: partition-pruned by date, filtered, sorted, cut at the limit."""
    f = pc.scalar(True)
    if q.instruments:
        f &= pc.field(ds.instrument).isin(q.instruments)
    if q.start is not None:
        f &= (pc.field(ds.time) >= q.start) & (pc.field("date") >= _day(q.start))
    if q.end is not None:
        f &= (pc.field(ds.time) < q.end) & (pc.field("date") <= _day(q.end))
    if q.after is not None:  # (a, b, c) > (x, y, z), spelled out
        ahead, same = pc.scalar(False), pc.scalar(True)
        for c, v in zip(ds.order, q.after):
            ahead |= same & (pc.field(c) > v)
            same &= pc.field(c) == v
        f &= ahead
    table = dt.to_pyarrow_dataset().to_table(filter=f)
    return table.sort_by([(c, "ascending") for c in ds.order]).slice(0, q.limit)


def _day(ns: int) -> date:
    return datetime.fromtimestamp(ns / 1e9, UTC).date()
