"""The suite runs against real services it starts itself, in its own instance (data dir and ports),
so it can run beside `scripts/run`. NAUTILUS_TEST_PORT_BASE moves its ports (default 16000)."""
import os

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
from scripts.provision import setup  # noqa: E402


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
    from tests.helpers import reset_state
    return reset_state(res)


def pytest_sessionfinish(session, exitstatus):
    """Unit-only runs start no services but the settings created the instance's home: remove it."""
    import shutil
    s = load()
    if not (s.home / "services.json").exists():
        shutil.rmtree(s.home, ignore_errors=True)
