"""The Dagster instance's PostgreSQL storages keep their connections (resources/dagster_storage.py): many storage
calls open a handful of connections, where dagster-postgres's default (NullPool) opens one per call."""

import os
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

from resources.dagster_storage import POOL_SIZE, PooledPostgresEventLogStorage, PooledPostgresRunStorage

CALLS = 40


def _connections_opened(storage, calls, threads: int = 1) -> int:
    """DBAPI connections the storage's engine opens while `calls` run CALLS times (on `threads` threads)."""
    opened = []
    sa.event.listen(storage._engine, "connect", lambda *_: opened.append(1))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: calls(storage), range(CALLS)))
    return len(opened)


def test_the_instance_is_built_on_the_pooled_storages(instance):
    ref = instance.get_ref()
    assert (
        ref.run_storage_data.class_name,
        ref.event_storage_data.class_name,
        ref.schedule_storage_data.class_name,
    ) == ("PooledPostgresRunStorage", "PooledPostgresEventLogStorage", "PooledPostgresScheduleStorage")
    assert instance.get_runs(limit=1) is not None  # and it works


def test_pooled_storages_reuse_their_connections(settings):
    config = {"postgres_url": os.environ["DAGSTER_PG_URL"]}
    runs = lambda s: s.get_runs(limit=1)  # noqa: E731
    keys = lambda s: s.all_asset_keys()  # noqa: E731
    stock_runs, stock_events = PostgresRunStorage(**config), PostgresEventLogStorage(**config)
    assert _connections_opened(stock_runs, runs) >= CALLS  # the counter sees a connection per call
    assert _connections_opened(stock_events, keys) >= CALLS
    # every storage a process creates shares one pooled engine (a code server builds an instance per request)
    pooled = [
        cls.from_config_value(None, config)
        for _ in range(5)
        for cls in (PooledPostgresRunStorage, PooledPostgresEventLogStorage)
    ]
    assert len({id(s._engine) for s in pooled}) == 1
    opened = sum(_connections_opened(s, runs if isinstance(s, PostgresRunStorage) else keys) for s in pooled)
    assert opened <= 1, opened  # 10 x CALLS unpooled
    # calls from several threads at once keep at most POOL_SIZE connections (beyond it: short-lived ones)
    assert _connections_opened(pooled[0], runs, threads=POOL_SIZE) <= POOL_SIZE
    for s in (stock_runs, stock_events, *pooled):
        s.dispose()


def test_a_connection_idle_long_enough_is_pinged_and_a_dropped_one_replaced(settings, monkeypatch):
    from resources import dagster_storage

    config = {"postgres_url": os.environ["DAGSTER_PG_URL"]}
    storage = PooledPostgresRunStorage.from_config_value(None, config)
    engine = storage._engine

    def drop_pooled_connections():
        """Terminate the server side of every connection the pool holds (as a restart or a firewall would)."""
        held = [engine.connect() for _ in range(POOL_SIZE)]
        pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in held]
        for c in held:
            c.close()
        admin = sa.create_engine(config["postgres_url"], poolclass=sa.pool.NullPool)
        with admin.connect() as c:
            c.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM unnest(ARRAY{pids}) AS pid")
        admin.dispose()

    try:
        drop_pooled_connections()
        monkeypatch.setattr(dagster_storage, "IDLE_PING_S", 3600.0)  # "used moments ago": no ping, so it fails
        try:
            storage.get_runs(limit=1)
            raise AssertionError("a dropped connection was used without an error: the test cannot see the ping")
        except sa.exc.OperationalError:
            pass
        monkeypatch.setattr(dagster_storage, "IDLE_PING_S", 0.0)  # idle long enough: pinged and replaced
        drop_pooled_connections()
        for _ in range(POOL_SIZE + 1):
            assert storage.get_runs(limit=1) is not None
    finally:
        engine.dispose()
