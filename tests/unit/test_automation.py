"""The streaming products follow the bars' change feed: a committed trades batch announces the minutes it changed,
each product's sensor launches its long-lived run from the backlog, and a sensor-launched run commits batches
back to back, each its own materialization; a redelivered announcement changes nothing; the day-level products
stay on declarative automation."""

import dagster as dg
import orjson

from nautilus_assets.analytics import assets as analytics
from nautilus_assets.definitions import defs
from nautilus_assets.market_data import changes
from nautilus_assets.microstructure import assets as micro
from nautilus_assets.portfolio import assets as portfolio


def test_change_messages_merge_to_the_first_changed_minute_per_instrument():
    a = orjson.dumps(changes.message("b1", 1, [("X", 120), ("X", 60), ("Y", 600)]))
    b = orjson.dumps(changes.message("b2", 2, spans={"X": (0, 60)}))
    since, upstream, bad = changes.since_by_instrument([a, b, b"not json", b'{"schema": "other"}'])
    assert since == {"X": dg_ts(0), "Y": dg_ts(600)} and upstream == ["b1", "b2"] and bad == 2


def dg_ts(s):
    import pandas as pd

    return pd.Timestamp(s, unit="s")


def test_streaming_products_are_sensor_launched_not_automated():
    repo = defs.get_repository_def()
    for m in (analytics, micro, portfolio):
        spec = next(s for s in defs.resolve_all_asset_specs() if s.key == m.KEY)
        assert spec.automation_condition is None, m.KEY  # eager would wait behind the long-lived ingest runs
        sensor = repo.get_sensor_def(f"{m.PRODUCT.name}_stream_sensor")
        assert sensor.job_name == f"stream_{m.PRODUCT.name}"
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
