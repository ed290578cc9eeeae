"""The suite runs against real services it starts itself, in its own instance (data dir and ports),
so it can run beside `scripts/run`. NAUTILUS_TEST_PORT_BASE moves its ports (default 16000)."""
import os
import time

import pytest

# Before anything imports the settings: this process is the test instance.
os.environ["NAUTILUS_INSTANCE"] = f"test-{os.getpid()}"
os.environ["NAUTILUS_PORT_BASE"] = os.environ.get("NAUTILUS_TEST_PORT_BASE", "16000")
os.environ.pop("NAUTILUS_HOME", None)
os.environ.pop("DAGSTER_HOME", None)
# Long-lived ingest runs end this long after their last message: a test's run ends soon after its data.
os.environ.setdefault("NAUTILUS_RUN_IDLE_SECONDS", "3")
# The product APIs rebuild their cache only when a request finds it unusable: each test decides what it holds.
os.environ.setdefault("NAUTILUS_CACHE_REFRESH_SECONDS", "0")

from resources.settings import apply, build_resources, load  # noqa: E402
from scripts import services  # noqa: E402
from scripts.cli import setup  # noqa: E402


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
    import sys

    from resources.settings import API_PORTS
    p = services.spawn(settings, "api", [sys.executable, "-W", "ignore", "-m", "nautilus_assets.api.serve"])
    try:
        for product in API_PORTS:
            services.wait_port(settings.api_port(product), f"{product} API", timeout=120)
        yield settings
    finally:
        services.kill_groups({"api": p.pid})


@pytest.fixture(autouse=True)
def no_stale_defs_state_storage():
    """Dagster keeps one process-wide "current" DefsStateStorage, set when an instance is entered; an instance a
    test opened and closed can leave it pointing at a disposed instance, and every later dg.materialize then fails
    with "undefined DagsterInstance weakref". Each test starts with none (the project keeps no defs state)."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage
    with set_defs_state_storage(None):
        yield


@pytest.fixture
def clean(res):
    """Empty market-data tables and drained subscriptions, so a test can count exactly."""
    return reset_state(res)


def reset_state(res):
    """What `clean` does, callable from fixtures of a wider scope."""
    from nautilus_assets.market_data.ingest import receive, subscribe
    from nautilus_assets.market_data.schema import FEEDS
    from nautilus_assets.market_data.sinks import DB, bronze_table
    with res["pulsar"].client() as client:
        for feed in FEEDS.values():
            c = subscribe(client, feed)
            while msgs := receive(c, 100_000, 10, idle_ms=500):
                for m in msgs:
                    c.acknowledge(m)
            c.close()
    with res["clickhouse"].session() as c:
        tables = c.query("SELECT database, name FROM system.tables WHERE database IN %(d)s",
                         parameters={"d": [DB, "analytics", "microstructure", "risk", "ml"]}).result_rows
        for db, t in tables:
            c.command(f"TRUNCATE TABLE {db}.{t}")
    res["redis"].client().flushdb()   # the current-state cache follows the stores it was emptied with
    with res["postgres"].connect() as conn:
        if conn.execute("SELECT to_regclass('portfolio.fills')").fetchone()[0]:
            conn.execute("TRUNCATE portfolio.fills, portfolio.fills_quarantine, portfolio.portfolio_states")
    with res["pulsar"].client() as client:
        from nautilus_assets.portfolio.assets import SUBSCRIPTION
        from nautilus_assets.portfolio.models import FILLS_TOPIC
        import pulsar
        from nautilus_assets.analytics.assets import SUBSCRIPTION as ANALYTICS
        from nautilus_assets.microstructure.assets import SUBSCRIPTION as MICROSTRUCTURE
        from resources.topics import BARS_CHANGES
        for topics, sub in (([FILLS_TOPIC, BARS_CHANGES], SUBSCRIPTION), ([BARS_CHANGES], ANALYTICS),
                            ([BARS_CHANGES], MICROSTRUCTURE)):
            c = client.subscribe(topics, sub, consumer_type=pulsar.ConsumerType.Shared,
                                 initial_position=pulsar.InitialPosition.Earliest)
            while msgs := receive(c, 100_000, 10, idle_ms=300):
                for m in msgs:
                    c.acknowledge(m)
            c.close()
    s3 = res["lake"].s3_client()
    from scripts.history import MANIFEST
    for prefix in [bronze_table(feed) for feed in FEEDS.values()] + [MANIFEST]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=res["lake"].bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=res["lake"].bucket, Key=obj["Key"])
    return res


def wait_for(pred, timeout: float = 30, every: float = 0.5, what: str = "condition"):
    deadline = time.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def pytest_sessionfinish(session, exitstatus):
    """Unit-only runs start no services but the settings created the instance's home: remove it."""
    import shutil
    s = load()
    if not (s.home / "services.json").exists():
        shutil.rmtree(s.home, ignore_errors=True)
