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
from nautilus_assets.market_data.schema import FEEDS, TRADES
from nautilus_assets.market_data.simulator import MarketSimulator, messages
from nautilus_assets.portfolio.models import FILLS_TOPIC
from resources import topics
from sensors.system_events import system_events_sensor

ARCHITECTURE = {
    "market-data": {"level1-quotes", "level2-orderbook", "trades", "news-feeds", "bars-changes"},
    "engines": {"risk-metrics", "analytics-signals", "ml-predictions", "portfolio-positions", "vpin-microstructure"},
    "system": {"alerts", "commands", "events"},
}


def test_topic_map_covers_the_architecture_and_every_topic_in_use():
    for ns, names in ARCHITECTURE.items():
        assert names <= set(topics.NAMESPACES[ns].topics)
    in_use = {f.topic for f in FEEDS.values()} | {FILLS_TOPIC, topics.SYSTEM_EVENTS, topics.SYSTEM_ALERTS}
    for asset in defs.resolve_all_asset_specs():
        if t := (asset.metadata or {}).get("nautilus/engine_topic"):
            in_use.add(t)
    assert in_use <= set(topics.all_topics()), in_use - set(topics.all_topics())
    assert {t.rsplit("/", 1)[1] for t in in_use if "/engines/" in t} >= ARCHITECTURE["engines"]


def test_broker_setting_picks_admin_api_or_metrics(monkeypatch, tmp_path):
    from resources.settings import load
    for var in ("PULSAR_SERVICE_URL", "PULSAR_ADMIN_URL", "PULSAR_METRICS_URL", "NAUTILUS_MANAGED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NAUTILUS_HOME", str(tmp_path))
    monkeypatch.setenv("NAUTILUS_PORT_BASE", "30000")
    monkeypatch.delenv("NAUTILUS_PULSAR_BROKER", raising=False)
    s = load()  # the default: Apache Pulsar, backlog from its admin API
    assert (s["NAUTILUS_PULSAR_BROKER"], s["PULSAR_ADMIN_URL"], s["PULSAR_METRICS_URL"]) == \
        ("apache", "http://127.0.0.1:30013", "") and "pulsar" in s.managed
    monkeypatch.setenv("NAUTILUS_PULSAR_BROKER", "lite")
    s = load()
    assert (s["PULSAR_ADMIN_URL"], s["PULSAR_METRICS_URL"]) == ("", "http://127.0.0.1:30011/metrics")
    monkeypatch.setenv("NAUTILUS_PULSAR_BROKER", "kafka")
    with pytest.raises(ValueError):
        load()
    monkeypatch.setenv("NAUTILUS_PULSAR_BROKER", "apache")
    monkeypatch.setenv("PULSAR_SERVICE_URL", "pulsar://pulsar.internal:6650")
    s = load()  # a production broker: nothing managed, admin URL only if given
    assert "pulsar" not in s.managed and s["PULSAR_ADMIN_URL"] == ""


def test_broker_config_binds_loopback_and_derives_ports(tmp_path):
    from types import SimpleNamespace

    from resources.settings import PORTS
    from scripts import pulsar_broker
    s = SimpleNamespace(instance="t", home=tmp_path, port=lambda name: 30000 + PORTS[name])
    conf = dict(line.split("=", 1) for line in pulsar_broker.config_text(s).splitlines() if "=" in line
                and not line.startswith("#"))
    assert (conf["bindAddress"], conf["advertisedAddress"], conf["listeningInterface"]) == ("127.0.0.1", "127.0.0.1", "lo")
    assert (conf["brokerServicePort"], conf["webServicePort"], conf["bookiePort"]) == ("30010", "30013", "30014")
    assert conf["functionsWorkerEnabled"] == "false" and "zookeeperServers" not in conf
    argv = pulsar_broker.argv(s)
    assert "--no-functions-worker" in argv and "--no-stream-storage" in argv and "-Xmx1g" in argv
    assert str(tmp_path / "pulsar" / "metadata") in argv


def test_broker_has_tenant_namespaces_retention_and_topics(settings):
    admin = settings["PULSAR_ADMIN_URL"]
    if not admin:
        pytest.skip("pulsar-lite: no admin API (topics are created on first use)")
    assert sorted(requests.get(f"{admin}/admin/v2/namespaces/nautilus", timeout=10).json()) == \
        sorted(f"nautilus/{ns}" for ns in topics.NAMESPACES)
    for ns in topics.NAMESPACES.values():
        assert topics.retention(admin, ns.name) == {"retentionTimeInMinutes": ns.retention_minutes,
                                                      "retentionSizeInMB": ns.retention_mb}
        listed = set(requests.get(f"{admin}/admin/v2/namespaces/{ns.path}/topics", timeout=10).json())
        assert {ns.topic(t) for t in ns.topics} <= listed
    assert topics.ensure(admin)["created"] == []  # idempotent


def _subscribe(client, topic):
    # Shared: pulsar-lite delivers duplicates on Exclusive subscriptions
    return client.subscribe(topic, f"test-{uuid.uuid4().hex[:8]}", consumer_type=pulsar.ConsumerType.Shared,
                            initial_position=pulsar.InitialPosition.Latest)


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
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION), limit=1, ascending=False)
    return recs[0].storage_id if recs else 0


def test_batch_with_quarantine_alerts_and_every_materialization_is_an_event(clean, instance):
    res = clean
    trades, _ = MarketSimulator(["AAPL.XNAS"], seed=5, start_ns=time.time_ns() - 60 * 10**9).take(50, 1)
    good = list(messages(trades))
    with res["pulsar"].client() as client:
        alerts, events = _subscribe(client, topics.SYSTEM_ALERTS), _subscribe(client, topics.SYSTEM_EVENTS)
        p = client.create_producer(TRADES.topic)
        for payload in [*good[:25], b"not json", b'{"schema_version": 1, "price": -1}', *good[25:]]:
            p.send(payload)
        p.close()

        cursor = str(_last_storage_id(instance))
        batch_id = f"alerts-{uuid.uuid4().hex[:6]}"
        result = defs.resolve_job_def("ingest_trades").execute_in_process(
            instance=instance, tags={"nautilus/batch_id": batch_id})
        assert result.success
        got = [a for a in _drain(alerts) if a["batch_id"] == f"{batch_id}.1"]   # the run's first batch
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
        system_events_sensor(dg.build_sensor_context(instance=instance, cursor=ctx.cursor,
                                                     resources={"pulsar": res["pulsar"]}))
        assert [e for e in _drain(events, idle_ms=1500) if e["run_id"] == result.run_id] == []
        alerts.close()
        events.close()
