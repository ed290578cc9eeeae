"""The topic map (tenant, namespaces with retention, every topic of the architecture) on the broker, and the
platform's messages read back with real consumers: one system/events message per materialization, one
system/alerts message per batch with quarantined messages."""

import pytest

from nautilus_assets.definitions import defs
from nautilus_assets.market_data.schema import FEEDS
from nautilus_assets.portfolio.models import FILLS_TOPIC
from resources import topics

ARCHITECTURE = {
    "market-data": {"level1-quotes", "level2-orderbook", "trades", "news-feeds", "bars-changes"},
    "engines": {"risk-metrics", "analytics-signals", "ml-predictions", "portfolio-positions", "vpin-microstructure"},
    # the source architecture's system/commands is dropped on purpose (README, Pulsar topics: no second,
    # unauthenticated control plane beside Dagster's)
    "system": {"alerts", "events"},
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
    assert (s["NAUTILUS_PULSAR_BROKER"], s["PULSAR_ADMIN_URL"], s["PULSAR_METRICS_URL"]) == (
        "apache",
        "http://127.0.0.1:30013",
        "",
    ) and "pulsar" in s.managed
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
    from resources.settings import instance_environ, load
    from scripts import pulsar_broker

    s = load(instance_environ("t", 30000, NAUTILUS_HOME=str(tmp_path)))
    conf = dict(
        line.split("=", 1)
        for line in pulsar_broker.config_text(s).splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert (conf["bindAddress"], conf["advertisedAddress"], conf["listeningInterface"]) == (
        "127.0.0.1",
        "127.0.0.1",
        "lo",
    )
    assert (conf["brokerServicePort"], conf["webServicePort"], conf["bookiePort"]) == ("30010", "30013", "30014")
    assert conf["functionsWorkerEnabled"] == "false" and "zookeeperServers" not in conf
    argv = pulsar_broker.argv(s)
    assert "--no-functions-worker" in argv and "--no-stream-storage" in argv and "-Xmx1g" in argv
    assert str(tmp_path / "pulsar" / "metadata") in argv
