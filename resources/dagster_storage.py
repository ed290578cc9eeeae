"""The Dagster instance's PostgreSQL storages with pooled connections (dagster.yaml names these classes).

dagster-postgres opens a new connection for every storage call (SQLAlchemy NullPool) unless the process is the
webserver. On the streaming path that is a PostgreSQL backend forked per logged event, sensor tick and daemon
query: measured with bench/freshness.py at 10k msg/s, ~45 new sessions a second cost ~0.4 of the machine's
2 cores. These are the stock storages on one pooled engine per process and URL, shared by every instance the
process creates: a code server builds a new instance per request, so an engine per storage would keep each one's
connections until it is collected (a soak filled PostgreSQL's 200 slots that way). The pool keeps the
connections used at once (at most POOL_SIZE, opened on demand) and recycles them hourly. A connection idle for
IDLE_PING_S is pinged before use (a dropped one is replaced, SQLAlchemy's checkout-event pattern); one used
moments ago is not: pool_pre_ping's ping on every checkout was a quarter of a streaming run's event logging
(py-spy, 2026-12-03). Keyed by process id too: a forked child never uses its parent's connections."""

from __future__ import annotations

import os
import threading
import time

import sqlalchemy as sa
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine

POOL_SIZE = 3  # connections kept per process: the daemon's threads use a few at once, a run one or two
MAX_OVERFLOW = 10  # beyond it, short-lived connections (closed when returned)
POOL_RECYCLE_S = 3600
IDLE_PING_S = 10.0

_engines: dict = {}
_lock = threading.Lock()


def shared_engine(url: str, token_provider=None):
    key = (os.getpid(), url, id(token_provider) if token_provider else None)
    with _lock:
        if key not in _engines:
            engine = create_pg_engine(
                url,
                token_provider,
                isolation_level="AUTOCOMMIT",
                pool_size=POOL_SIZE,
                max_overflow=MAX_OVERFLOW,
                pool_recycle=POOL_RECYCLE_S,
            )
            sa.event.listen(engine, "checkout", _ping_if_idle)
            sa.event.listen(engine, "checkin", _note_checkin)
            _engines[key] = engine
        return _engines[key]


def _note_checkin(dbapi_connection, record) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, proxy) -> None:
    """A connection back from the pool after IDLE_PING_S is pinged; DisconnectionError makes the pool replace it."""
    if time.monotonic() - record.info.get("checked_in", float("-inf")) < IDLE_PING_S:
        return
    try:
        with dbapi_connection.cursor() as cur:
            cur.execute("SELECT 1")
    except Exception as e:
        raise sa.exc.DisconnectionError(str(e)) from e


def _pooled(storage):
    # The same engine swap dagster-postgres's optimize_for_webserver does (which keeps one connection per storage).
    storage._engine.dispose()
    storage._engine = shared_engine(storage.postgres_url, storage._token_provider)
    return storage


class PooledPostgresRunStorage(PostgresRunStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return _pooled(super().from_config_value(inst_data, config_value))


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return _pooled(super().from_config_value(inst_data, config_value))


class PooledPostgresScheduleStorage(PostgresScheduleStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return _pooled(super().from_config_value(inst_data, config_value))
