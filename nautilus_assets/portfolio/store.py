"""PostgreSQL storage of the portfolio product: fills, and `portfolio_states`, time-partitioned (a TimescaleDB
hypertable where the extension exists, native daily range partitions where it does not)."""
from datetime import datetime, timedelta

import psycopg

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS portfolio.fills (
  fill_id text PRIMARY KEY, portfolio_id text NOT NULL, instrument_id text NOT NULL,
  quantity double precision NOT NULL CHECK (quantity <> 0), price double precision NOT NULL CHECK (price > 0),
  fee double precision NOT NULL CHECK (fee >= 0), ts_event bigint NOT NULL, message_id text, batch_id text);
CREATE TABLE IF NOT EXISTS portfolio.fills_quarantine (
  message_id text PRIMARY KEY, reason text NOT NULL, payload bytea, batch_id text);
"""
STATES_COLUMNS = """ts timestamptz NOT NULL, portfolio_id text NOT NULL, instrument_id text NOT NULL,
  position double precision, avg_cost double precision, realized_pnl double precision,
  unrealized_pnl double precision, fees double precision, mark_price double precision, mark_source text,
  cash double precision, nav double precision, run_id text, PRIMARY KEY (portfolio_id, instrument_id, ts)"""


def has_timescaledb(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() is not None


def ensure_schema(conn: psycopg.Connection) -> str:
    """Create the tables; returns 'timescaledb' or 'native' (the partitioning in use)."""
    if conn.execute("SELECT to_regnamespace('portfolio')").fetchone()[0] is None:
        # the set-up creates it, owned by the portfolio role (resources/access.py), which may not create schemas
        conn.execute("CREATE SCHEMA portfolio")
    conn.execute(SCHEMA_SQL)
    exists = conn.execute("SELECT to_regclass('portfolio.portfolio_states')").fetchone()[0]
    if has_timescaledb(conn):
        if not exists:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute(f"CREATE TABLE portfolio.portfolio_states ({STATES_COLUMNS})")
            conn.execute("SELECT create_hypertable('portfolio.portfolio_states', 'ts', chunk_time_interval => INTERVAL '1 day')")
        return "timescaledb"
    if not exists:
        conn.execute(f"CREATE TABLE portfolio.portfolio_states ({STATES_COLUMNS}) PARTITION BY RANGE (ts)")
    return "native"


def ensure_partition(conn: psycopg.Connection, ts: datetime, mode: str) -> None:
    """The native daily range partition holding `ts` (TimescaleDB makes its chunks itself)."""
    if mode != "native":
        return
    day = ts.date()
    name = f"portfolio_states_{day:%Y%m%d}"
    conn.execute(f"CREATE TABLE IF NOT EXISTS portfolio.{name} PARTITION OF portfolio.portfolio_states "
                 f"FOR VALUES FROM ('{day} 00:00:00+00') TO ('{day + timedelta(days=1)} 00:00:00+00')")
