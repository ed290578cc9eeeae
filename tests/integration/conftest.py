"""Real services for the integration tests, started once per session in the test instance, and the processes
and servers a test starts for itself (the Dagster daemon and webserver, a PostgreSQL-only instance, TimescaleDB),
stopped after it."""

import sys
import time

import pytest

from resources.postgres import PostgresResource
from resources.settings import apply, build_resources, load
from scripts import services
from scripts.provision import setup


@pytest.fixture(scope="session")
def settings():
    s = apply(services.start(load()))
    try:
        setup(s)
        yield s
    finally:
        services.remove(s)


@pytest.fixture(scope="session")
def res(settings):
    return build_resources(settings)


@pytest.fixture(scope="session")
def instance(settings):
    import dagster as dg

    with dg.DagsterInstance.get() as inst:
        yield inst


@pytest.fixture(scope="session")
def api(settings):
    """The product APIs (`nautilus api`) on the test instance's ports."""
    from resources.settings import API_PORTS

    p = services.spawn(settings, "api", [sys.executable, "-W", "ignore", "-m", "nautilus_assets.api.serve"])
    try:
        for product in API_PORTS:
            services.wait_port(settings.api_port(product), f"{product} API", timeout=120)
        yield settings
    finally:
        services.kill_groups({"api": p.pid})


@pytest.fixture
def clean(res):
    """Empty market-data tables and drained subscriptions, so a test can count exactly."""
    from tests.helpers import reset_state

    return reset_state(res)


class DagsterProcesses:
    """`procs("daemon" | "webserver", s=settings, name=..., env=...)` starts a Dagster process for a test;
    `procs.stop()` (and the fixture's teardown) stops them, reports the runs they left in flight failed (their run
    workers died with them: the next test's sensors would wait on them) and checks none is left running."""

    def __init__(self, settings, instance):
        self.settings, self.instance, self.started, self.t0 = settings, instance, [], time.time()

    def __call__(self, kind: str, s=None, name: str | None = None, env: dict | None = None):
        spawn = {"daemon": services.dagster_daemon, "webserver": services.dagster_webserver}[kind]
        p = spawn(s or self.settings, name or f"test-{kind}", env)
        self.started.append(p)
        return p

    def stop(self) -> None:
        from tests.helpers import fail_orphaned_runs

        if self.started:
            services.kill_groups({str(p.pid): p.pid for p in self.started})
            fail_orphaned_runs(self.instance, self.t0 - 1)
            assert all(p.poll() is not None for p in self.started)
            self.started = []


@pytest.fixture
def dagster_processes(settings, instance):
    procs = DagsterProcesses(settings, instance)
    yield procs
    procs.stop()


@pytest.fixture(scope="module")
def postgres_only():
    """The test instance's PostgreSQL 15 alone (started here when the session's services are not up), with the
    access control applied twice (idempotent): for tests that need no other backend."""
    from scripts.provision import apply_postgres

    s = apply(services.prepare(load()))
    started = not services.port_open(s.port("postgres"))
    if started:
        services.start_postgres(s)
    apply_postgres(s)
    apply_postgres(s)
    yield s
    if started:
        services.stop_postgres(s)


@pytest.fixture
def timescaledb(settings) -> PostgresResource:
    """PGlite with TimescaleDB (scripts/services.py), its portfolio schema dropped: a store set-up never reached."""
    port = services.start_timescaledb(settings)
    pg = PostgresResource(
        host="127.0.0.1",
        port=port,
        user="postgres",
        password="pglite",
        dbname="postgres",
        sslmode="disable",
        prepared_statements=False,
    )
    with pg.connect() as conn:
        conn.execute("DROP SCHEMA IF EXISTS portfolio CASCADE")
        conn.commit()
    return pg
