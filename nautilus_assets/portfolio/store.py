"""PostgreSQL storage of the portfolio product, declared once: fills, `portfolio_states` (time-partitioned: a
TimescaleDB hypertable where the extension exists, native daily range partitions where it does not), the end-of-day
NAV and positions; and the product's SQL (its read of the bars too)."""

from datetime import date, datetime, timedelta

import dagster as dg
import pandas as pd
import psycopg

from nautilus_assets.market_data.assets import BARS_KEY
from nautilus_assets.market_data.daily import KEY as BARS_1D_KEY
from nautilus_assets.tables import Column, Table
from resources.clickhouse import ClickHouseResource

FILLS_KEY = dg.AssetKey(["pulsar", "engines", "portfolio_fills"])  # the fills topic (assets.FILLS_SPEC)


def _fills(*columns: str) -> tuple:
    return tuple((FILLS_KEY, c) for c in columns)


FLOAT = "double precision"
FILLS = Table(
    "portfolio.fills",
    (
        Column("fill_id", "text", "Fill id, unique", extra="PRIMARY KEY"),
        Column("portfolio_id", "text", "Model portfolio", extra="NOT NULL"),
        Column("instrument_id", "text", "Instrument", extra="NOT NULL"),
        Column("quantity", FLOAT, "Signed quantity", extra="NOT NULL CHECK (quantity <> 0)"),
        Column("price", FLOAT, "Fill price", extra="NOT NULL CHECK (price > 0)"),
        Column("fee", FLOAT, "Fee", extra="NOT NULL CHECK (fee >= 0)"),
        Column("ts_event", "bigint", "Fill time, UTC nanoseconds", extra="NOT NULL"),
        Column("message_id", "text", "Pulsar message"),
        Column("batch_id", "text", "Batch that stored the fill"),
    ),
)
FILLS_QUARANTINE = Table(
    "portfolio.fills_quarantine",
    (
        Column("message_id", "text", "Pulsar message", extra="PRIMARY KEY"),
        Column("reason", "text", "Why it was refused", extra="NOT NULL"),
        Column("payload", "bytea", "The message"),
        Column("batch_id", "text", "Batch that refused it"),
    ),
)
MARKED = _fills("quantity") + ((BARS_KEY, "close"),)
STATES = Table(
    "portfolio.portfolio_states",
    (
        Column("ts", "timestamptz", "State time", extra="NOT NULL"),
        Column("portfolio_id", "text", "Model portfolio", extra="NOT NULL"),
        Column("instrument_id", "text", "Instrument", extra="NOT NULL"),
        Column("position", FLOAT, "Signed quantity", _fills("quantity")),
        Column("avg_cost", FLOAT, "Average cost (average-cost method)", _fills("quantity", "price")),
        Column("realized_pnl", FLOAT, "Realized P&L", _fills("quantity", "price")),
        Column("unrealized_pnl", FLOAT, "position · (mark − average cost)", MARKED),
        Column("fees", FLOAT, "Fees paid", _fills("fee")),
        Column("mark_price", FLOAT, "Latest 1-minute close at or before ts", ((BARS_KEY, "close"),)),
        Column("mark_source", "text", "bar, or fill when no bar exists yet"),
        Column("cash", FLOAT, "Portfolio cash", _fills("quantity", "price", "fee")),
        Column(
            "nav",
            FLOAT,
            "Portfolio NAV = cash + Σ position · mark",
            _fills("quantity", "price", "fee") + ((BARS_KEY, "close"),),
        ),
        Column("run_id", "text", "Run"),
    ),
    key="PRIMARY KEY (portfolio_id, instrument_id, ts)",
)
EOD = _fills("quantity", "price", "fee") + ((BARS_1D_KEY, "close"),)
DAILY_NAV = Table(
    "portfolio.daily_nav",
    (
        Column("date", "date", "Trading day"),
        Column("portfolio_id", "text", "Model portfolio"),
        Column("nav", FLOAT, "NAV at the day's close", EOD),
        Column("daily_pnl", FLOAT, "NAV − the previous day's NAV", EOD),
        Column("daily_return", FLOAT, "daily_pnl / the previous day's NAV", EOD),
        Column("run_id", "text", "Run"),
    ),
    key="PRIMARY KEY (date, portfolio_id)",
)
DAILY_POSITIONS = Table(
    "portfolio.daily_positions",
    (
        Column("date", "date", "Trading day"),
        Column("portfolio_id", "text", "Model portfolio"),
        Column("instrument_id", "text", "Instrument"),
        Column("position", FLOAT, "Signed quantity at the day's close"),
        Column("close", FLOAT, "The day's close"),
    ),
    key="PRIMARY KEY (date, portfolio_id, instrument_id)",
)


def _insert(table: Table, conflict: str) -> str:
    """INSERT of one row given by column name (a dict per row)."""
    return (
        f"INSERT INTO {table.name} ({', '.join(table.names)}) VALUES "
        f"({', '.join(f'%({n})s' for n in table.names)}) {conflict}"
    )


# ---- set-up ---------------------------------------------------------------------------------------------------
def has_timescaledb(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() is not None


def ensure_schema(conn: psycopg.Connection) -> str:
    """Create the tables (the set-up: nautilus_assets/stores.py); returns 'timescaledb' or 'native' (the
    partitioning in use)."""
    if conn.execute("SELECT to_regnamespace('portfolio')").fetchone()[0] is None:
        # the set-up creates it, owned by the portfolio role (resources/access.py), which may not create schemas
        conn.execute("CREATE SCHEMA portfolio")
    for table in (FILLS, FILLS_QUARANTINE, DAILY_NAV, DAILY_POSITIONS):
        for stmt in table.ddl():
            conn.execute(stmt)
    exists = conn.execute("SELECT to_regclass('portfolio.portfolio_states')").fetchone()[0]
    (create,) = STATES.ddl()
    if has_timescaledb(conn):
        if not exists:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute(create)
            conn.execute(
                "SELECT create_hypertable('portfolio.portfolio_states', 'ts', chunk_time_interval => INTERVAL '1 day')"
            )
        return "timescaledb"
    if not exists:
        conn.execute(f"{create} PARTITION BY RANGE (ts)")
    return "native"


def partitioning(conn: psycopg.Connection) -> str:
    """The partitioning in use ('timescaledb' or 'native'), for a run's start: a look-up, or the tables made where
    the store has none (one the set-up never reached, such as a fresh TimescaleDB)."""
    if conn.execute("SELECT to_regclass('portfolio.portfolio_states')").fetchone()[0] is None:
        return ensure_schema(conn)
    return "timescaledb" if has_timescaledb(conn) else "native"


def ensure_partition(conn: psycopg.Connection, ts: datetime, mode: str) -> None:
    """The native daily range partition holding `ts` (TimescaleDB makes its chunks itself)."""
    if mode != "native":
        return
    day = ts.date()
    name = f"portfolio_states_{day:%Y%m%d}"
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS portfolio.{name} PARTITION OF portfolio.portfolio_states "
        f"FOR VALUES FROM ('{day} 00:00:00+00') TO ('{day + timedelta(days=1)} 00:00:00+00')"
    )


# ---- fills and states -----------------------------------------------------------------------------------------
def insert_fill(conn: psycopg.Connection, fill: dict) -> bool:
    """The fill, unless its fill_id is stored already; whether it was new."""
    new = conn.execute(_insert(FILLS, "ON CONFLICT (fill_id) DO NOTHING RETURNING fill_id"), fill).fetchone()
    return new is not None


def quarantine_fill(conn: psycopg.Connection, message_id: str, reason: str, payload: bytes, batch_id: str) -> None:
    conn.execute(
        _insert(FILLS_QUARANTINE, "ON CONFLICT DO NOTHING"),
        {"message_id": message_id, "reason": reason, "payload": payload, "batch_id": batch_id},
    )


def all_fills(conn: psycopg.Connection) -> list[tuple]:
    """Every stored fill as (ts_event, fill_id, portfolio, instrument, qty, price, fee), in the order applied."""
    return conn.execute(
        "SELECT ts_event, fill_id, portfolio_id, instrument_id, quantity, price, fee "
        f"FROM {FILLS.name} ORDER BY ts_event, fill_id"
    ).fetchall()


def fills_before(conn: psycopg.Connection, end_ns: int) -> list[tuple]:
    """(ts_event, portfolio, instrument, qty, price, fee) of the fills before `end_ns`, in time order."""
    return conn.execute(
        f"SELECT ts_event, portfolio_id, instrument_id, quantity, price, fee FROM {FILLS.name} "
        "WHERE ts_event < %s ORDER BY ts_event, fill_id",
        (end_ns,),
    ).fetchall()


def fill_quantities(conn: psycopg.Connection, keys: list[tuple[str, str]]) -> dict:
    """{(portfolio, instrument): Σ quantity of its stored fills} for `keys`."""
    return {
        (p, i): q
        for p, i, q in conn.execute(
            f"SELECT portfolio_id, instrument_id, sum(quantity) FROM {FILLS.name} "
            "WHERE (portfolio_id, instrument_id) IN (SELECT * FROM unnest(%s::text[], %s::text[])) GROUP BY 1, 2",
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
    }


def write_states(conn: psycopg.Connection, rows: list[dict], batch_id: str, mode: str, state_time: datetime) -> None:
    ensure_partition(conn, state_time, mode)
    with conn.cursor() as cur:
        cur.executemany(_insert(STATES, "ON CONFLICT DO NOTHING"), [{**r, "run_id": batch_id} for r in rows])


def nav_points(conn: psycopg.Connection, since: datetime) -> list[tuple]:
    """(minute, portfolio, NAV) since `since`: a point a minute (a streaming run writes a state about every second),
    the last NAV of each minute."""
    data = conn.execute(
        "SELECT DISTINCT ON (portfolio_id, date_trunc('minute', ts)) date_trunc('minute', ts), "
        f"portfolio_id, nav FROM {STATES.name} WHERE ts >= %s "
        "ORDER BY portfolio_id, date_trunc('minute', ts), ts DESC",
        (since,),
    ).fetchall()
    return sorted(data, key=lambda d: d[0])


def replace_days(
    conn: psycopg.Connection, days: list[date], navs: list[dict], positions: list[dict], run_id: str
) -> None:
    """The days' NAV and position rows replaced whole: a position gone since must not stay behind."""
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {DAILY_POSITIONS.name} WHERE date = ANY(%s)", (days,))
        cur.execute(f"DELETE FROM {DAILY_NAV.name} WHERE date = ANY(%s)", (days,))
        cur.executemany(
            _insert(
                DAILY_NAV,
                "ON CONFLICT (date, portfolio_id) DO UPDATE SET nav = EXCLUDED.nav, "
                "daily_pnl = EXCLUDED.daily_pnl, daily_return = EXCLUDED.daily_return, "
                "run_id = EXCLUDED.run_id",
            ),
            [{**r, "run_id": run_id} for r in navs],
        )
        cur.executemany(
            _insert(
                DAILY_POSITIONS,
                "ON CONFLICT (date, portfolio_id, instrument_id) DO UPDATE SET "
                "position = EXCLUDED.position, close = EXCLUDED.close",
            ),
            positions,
        )


# ---- the bars (market_data) -----------------------------------------------------------------------------------
MARK_LOOKBACK_DAYS = 7  # a mark is the latest close within this span; older instruments mark at their last fill


def marks_at(ch: ClickHouseResource, state_time: datetime, instruments: list[str]) -> dict:
    """The latest 1-minute close at or before `state_time` per instrument: a primary-key range per instrument."""
    if not instruments:
        return {}
    df = ch.query_df(
        "SELECT instrument_id, argMax(close, minute) AS close FROM market_data.bars_1m FINAL "
        "WHERE instrument_id IN %(i)s AND minute <= toDateTime(%(t)s, 'UTC') "
        "AND minute > toDateTime(%(t)s, 'UTC') - INTERVAL %(d)s DAY GROUP BY instrument_id",
        parameters={"t": int(state_time.timestamp()), "i": sorted(instruments), "d": MARK_LOOKBACK_DAYS},
    )
    return dict(zip(df["instrument_id"].astype(str), df["close"]))


def daily_closes(ch: ClickHouseResource, until: date) -> pd.DataFrame:
    """date × instrument closing prices up to `until`."""
    df = ch.query_df(
        "SELECT date, instrument_id, close FROM market_data.bars_1d FINAL WHERE date <= %(d)s", parameters={"d": until}
    )
    if df.empty:
        return pd.DataFrame()
    df["date"] = pd.to_datetime(df["date"])
    return df.pivot(index="date", columns="instrument_id", values="close").sort_index()
