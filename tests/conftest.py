"""The suite's instance: tests/unit need no services; tests/integration start real ones (their conftest) in this
instance's own data dir and ports, so it can run beside `scripts/run`. NAUTILUS_TEST_PORT_BASE moves its ports
(default 16000)."""

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


@pytest.fixture(autouse=True)
def no_stale_defs_state_storage():
    """Dagster keeps one process-wide "current" DefsStateStorage, set when an instance is entered; an instance a
    test opened and closed can leave it pointing at a disposed instance, and every later dg.materialize then fails
    with "undefined DagsterInstance weakref". Each test starts with none (the project keeps no defs state)."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


def pytest_sessionfinish(session, exitstatus):
    """A run that started no services leaves no instance directory behind."""
    import shutil

    from resources.settings import load

    s = load()
    if not (s.home / "services.json").exists():
        shutil.rmtree(s.home, ignore_errors=True)
