"""The Dagster instance's PostgreSQL storage with pooled connections (dagster.yaml names these classes).

dagster-postgres opens a new connection for every storage call (SQLAlchemy NullPool) unless the process is the
webserver. On the streaming path that is a PostgreSQL backend forked per logged event, sensor tick and daemon
query: measured with bench/freshness.py at 10k msg/s, ~45 new sessions a second cost ~0.4 of the machine's
2 cores. These classes are the stock storages with a QueuePool: a process keeps the connections it has used
concurrently (at most POOL_SIZE per storage, opened on demand), checks one is alive before use, and recycles it
hourly. Processes are spawned, never forked, by Dagster here (run workers, code servers), so no pool is shared."""
from __future__ import annotations

from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine

POOL_SIZE = 3        # per storage and process: the daemon's threads use a few at once, a run one or two
MAX_OVERFLOW = 10    # beyond it, short-lived connections (closed when returned)
POOL_RECYCLE_S = 3600


def _pooled(storage):
    # The same engine swap dagster-postgres's optimize_for_webserver does (which keeps only one connection).
    storage._engine.dispose()
    storage._engine = create_pg_engine(storage.postgres_url, storage._token_provider, isolation_level="AUTOCOMMIT",
                                       pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, pool_recycle=POOL_RECYCLE_S,
                                       pool_pre_ping=True)
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
