"""The topic map (tenant, namespaces with retention, every topic of the architecture) on the broker, and the
platform's messages read back with real consumers: one system/events message per materialization, one
system/alerts message per batch with quarantined messages."""

import time
import uuid
import warnings

import dagster as dg
import orjson
import pulsar
import pytest
import requests

from nautilus_assets.definitions import defs
from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.market_data.simulator import MarketSimulator, messages
from resources import schemas, topics
from sensors.system_events import system_events_sensor


def test_broker_has_tenant_namespaces_retention_and_topics(settings):
    admin = settings["PULSAR_ADMIN_URL"]
    if not admin:
        pytest.skip("pulsar-lite: no admin API (topics are created on first use)")
    assert sorted(requests.get(f"{admin}/admin/v2/namespaces/nautilus", timeout=10).json()) == sorted(
        f"nautilus/{ns}" for ns in topics.NAMESPACES
    )
    for ns in topics.NAMESPACES.values():
        assert topics.retention(admin, ns.name) == {
            "retentionTimeInMinutes": ns.retention_minutes,
            "retentionSizeInMB": ns.retention_mb,
        }
        listed = set(requests.get(f"{admin}/admin/v2/namespaces/{ns.path}/topics", timeout=10).json())
        assert {ns.topic(t) for t in ns.topics} <= listed
    assert topics.ensure(admin)["created"] == []  # idempotent


def _subscribe(client, topic):
    # Shared: pulsar-lite delivers duplicates on Exclusive subscriptions
    return client.subscribe(
        topic,
        f"test-{uuid.uuid4().hex[:8]}",
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Latest,
    )


def _drain(consumer, idle_ms=3000) -> list[dict]:
    out = []
    while True:
        try:
            m = consumer.receive(timeout_millis=idle_ms)
        except pulsar.Timeout:
            return out
        out.append(orjson.loads(m.data()))
        consumer.acknowledge(m)


def _last_storage_id(instance) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recs = instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION), limit=1, ascending=False
        )
    return recs[0].storage_id if recs else 0


def test_batch_with_quarantine_alerts_and_every_materialization_is_an_event(clean, instance):
    res = clean
    trades, _ = MarketSimulator(["AAPL.XNAS"], seed=5, start_ns=time.time_ns() - 60 * 10**9).take(50, 1)
    good = list(messages(trades))
    with res["pulsar"].client() as client:
        alerts, events = _subscribe(client, topics.SYSTEM_ALERTS), _subscribe(client, topics.SYSTEM_EVENTS)
        p = schemas.create_producer(client, TRADES.topic)
        for payload in [*good[:25], b"not json", b'{"schema_version": 1, "price": -1}', *good[25:]]:
            p.send(payload)
        p.close()

        cursor = str(_last_storage_id(instance))
        batch_id = f"alerts-{uuid.uuid4().hex[:6]}"
        result = defs.resolve_job_def("ingest_trades").execute_in_process(
            instance=instance, tags={"nautilus/batch_id": batch_id}
        )
        assert result.success
        got = [a for a in _drain(alerts) if a["batch_id"] == f"{batch_id}.1"]  # the run's first batch
        assert len(got) == 1, got
        a = got[0]
        assert a["type"] == "quarantine" and a["topic"] == TRADES.topic
        assert (a["consumed"], a["valid"], a["quarantined"]) == (52, 50, 2) and sum(a["reasons"].values()) == 2

        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"pulsar": res["pulsar"]})
        system_events_sensor(ctx)
        evs = [e for e in _drain(events) if e["run_id"] == result.run_id]
        assert {e["asset_key"] for e in evs} == {"market_data_feed/trades", "market_data_feed/bars_1m"}, evs
        trades_ev = next(e for e in evs if e["asset_key"] == "market_data_feed/trades")
        assert trades_ev["metadata"]["quarantined"] == 2 and trades_ev["metadata"]["batch_id"] == f"{batch_id}.1"
        assert trades_ev["data_version"] and trades_ev["event_id"] > int(cursor)
        assert int(ctx.cursor) >= max(e["event_id"] for e in evs)
        # a second tick from the new cursor publishes nothing again
        system_events_sensor(
            dg.build_sensor_context(instance=instance, cursor=ctx.cursor, resources={"pulsar": res["pulsar"]})
        )
        assert [e for e in _drain(events, idle_ms=1500) if e["run_id"] == result.run_id] == []
        alerts.close()
        events.close()
