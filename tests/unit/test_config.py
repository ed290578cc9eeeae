"""Issue 13 item 11: configuration is validated once, every problem named with its variable, before anything starts;
PostgreSQL connections give up connecting and cancel long statements."""

import os
import subprocess
import sys

import pytest

from resources.settings import SettingsError, build_resources, instance_environ, load
from tests.helpers import ROOT

TYPOS = {
    "NAUTILUS_BATCH_MAX_MESSAGES": "2O000",
    "NAUTILUS_API_NICE": "30",
    "CLICKHOUSE_SECURE": "yes",
    "NAUTILUS_LATENESS_BOUND_SECONDS": "0",
    "NAUTILUS_SENSOR_INTERVAL_SECONDS": "four",
    "NAUTILUS_MC_BACKEND": "cuda",
    "NAUTILUS_PG_STATEMENT_TIMEOUT_SECONDS": "nan",
}


@pytest.fixture
def env(monkeypatch, tmp_path):
    for k in [k for k in os.environ if k.startswith(("NAUTILUS_", "DAGSTER_PG", "CLICKHOUSE_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("NAUTILUS_HOME", str(tmp_path / "home"))
    return monkeypatch


def test_every_bad_setting_is_named_at_once(env):
    load()  # the defaults are valid
    for k, v in TYPOS.items():
        env.setenv(k, v)
    with pytest.raises(SettingsError) as e:
        load()
    for k in TYPOS:
        assert f"{k}=" in str(e.value) or k in str(e.value), (k, str(e.value))
    assert "'2O000': expected a number" in str(e.value)
    env.setenv("NAUTILUS_PORT_BASE", "15k")
    with pytest.raises(SettingsError, match="NAUTILUS_PORT_BASE='15k'"):
        load()


def test_loading_settings_and_the_code_location_changes_nothing(tmp_path):
    """Issue 14 item 1: `load()` and importing the Definitions write no file and export nothing; the credentials
    come from the services' start-up, and a command that needs one before that says so, naming it."""
    env = instance_environ("no-side-effects", 18200, NAUTILUS_HOME=str(tmp_path / "h"))
    probe = (
        "import os, json; before = dict(os.environ); import nautilus_assets.definitions; "
        "from resources.settings import load; s = load(); "
        "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"  # no variable set or changed
    assert not (tmp_path / "h").exists()  # no home, no credentials.env
    with pytest.raises(SettingsError, match="CLICKHOUSE_PASSWORD is not set .* start the platform's services"):
        build_resources(load(env))


def test_the_cli_refuses_a_typo_before_starting_anything(tmp_path):
    env = {**os.environ, "NAUTILUS_HOME": str(tmp_path / "h"), "NAUTILUS_BATCH_MAX_MESSAGES": "2O000"}
    out = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "services", "start"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "NAUTILUS_BATCH_MAX_MESSAGES='2O000': expected a number" in out.stderr
    assert not (tmp_path / "h" / "pg").exists()  # nothing was started
    # the code location names the variable too (what the UI shows for a location that failed to load)
    out = subprocess.run(
        [sys.executable, "-c", "import nautilus_assets.definitions"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and "NAUTILUS_BATCH_MAX_MESSAGES='2O000': expected a number" in out.stderr
