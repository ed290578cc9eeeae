"""SLAs measured and alerted: the window figures against hand-worked examples, then the real probe sensor against
the real API with ClickHouse stopped (an availability breach on persistent://nautilus/system/alerts, read back
with a consumer), and a product that fell behind its freshness policy."""

import time
import uuid

import dagster as dg
import orjson
import pulsar

from nautilus_assets.analytics import assets as analytics
from nautilus_assets.api import sla
from nautilus_assets.audit.lineage import build_report
from nautilus_assets.definitions import defs
from resources.topics import SYSTEM_ALERTS
from scripts import services
from sensors import sla as sla_sensors


def alerts_consumer(client):
    return client.subscribe(
        SYSTEM_ALERTS, f"test-{uuid.uuid4().hex[:8]}", initial_position=pulsar.InitialPosition.Latest
    )


def read_alerts(consumer, want, timeout_s: float = 20) -> list[dict]:
    out, deadline = [], time.time() + timeout_s
    while time.time() < deadline and not want(out):
        try:
            m = consumer.receive(timeout_millis=1000)
        except pulsar.Timeout:
            continue
        consumer.acknowledge(m)
        out.append(orjson.loads(m.data()))
    return out


def tick(sensor, instance, res, cursor=None):
    return sensor(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources={"pulsar": res["pulsar"]}, definitions=defs)
    )


def test_a_stopped_backend_is_an_availability_breach_alerted_and_recorded(api, res, settings, instance, clean):
    with res["pulsar"].client() as client:
        consumer = alerts_consumer(client)
        first = tick(sla_sensors.sla_probe_sensor, instance, res)
        services.stop_one(settings, "clickhouse")  # /latest of the ClickHouse products: 5xx once they need the store
        res["redis"].client().flushdb()  # (the cache would answer meanwhile)
        try:
            t0 = time.time()
            second = tick(sla_sensors.sla_probe_sensor, instance, res, first.cursor)
            alerts = read_alerts(consumer, lambda got: any(a["product"] == "market_analytics" for a in got))
            elapsed = time.time() - t0
        finally:
            services.start_clickhouse(settings)
        consumer.close()
    breach = next(a for a in alerts if a["product"] == "market_analytics" and a["figure"] == "availability")
    assert breach["type"] == "sla_breach" and breach["severity"] == "error" and breach["target"] == 0.999
    assert breach["value"] < 0.999 and breach["asset"] == "market_analytics/indicators_1m"
    assert elapsed < 60
    evals = {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in second.asset_events
        if isinstance(e, dg.AssetCheckEvaluation)
    }
    assert not evals[("market_analytics/indicators_1m", sla.AVAILABILITY)].passed
    assert evals[("market_data_feed/quotes", sla.AVAILABILITY)].passed is not None
    # the daemon stores what a tick returns: do the same, then the lineage audit's SLA history has both
    for e in second.asset_events:
        instance.report_runless_asset_event(e)
    rep = build_report(instance, defs, history_days=1)
    a = next(p for p in rep["products"] if p["product"] == "market_analytics")["assets"][
        "market_analytics/indicators_1m"
    ]
    assert a["freshness"]["sla_checks"][sla.AVAILABILITY]["passed"] is False
    assert any(x["nautilus/alert"] == "sla_breach" and x["figure"] == "availability" for x in a["freshness"]["alerts"])


def test_a_product_behind_its_freshness_policy_is_alerted(res, instance, monkeypatch):
    key = analytics.KEY  # fail window 5 minutes
    instance.report_runless_asset_event(dg.AssetMaterialization(key))
    now = time.time()
    with res["pulsar"].client() as client:
        consumer = alerts_consumer(client)
        monkeypatch.setattr(sla_sensors, "_now", lambda: now + 30)
        quiet = tick(sla_sensors.freshness_alerts_sensor, instance, res)
        assert not [e for e in quiet.asset_events if e.asset_key == key]
        monkeypatch.setattr(sla_sensors, "_now", lambda: now + 301)  # the product fell behind
        late = tick(sla_sensors.freshness_alerts_sensor, instance, res, quiet.cursor)
        got = read_alerts(consumer, lambda xs: any(x["asset"] == key.to_user_string() for x in xs))
        monkeypatch.setattr(sla_sensors, "_now", lambda: now + 302)
        again = tick(sla_sensors.freshness_alerts_sensor, instance, res, late.cursor)
        consumer.close()
    a = next(x for x in got if x["asset"] == key.to_user_string())
    assert a["type"] == "freshness_failure" and a["product"] == "market_analytics"
    assert a["value"] > 300 and a["target"] == 300
    assert not [e for e in again.asset_events if e.asset_key == key]  # alerted once, not every tick
