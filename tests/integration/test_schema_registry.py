"""Pulsar's schema registry on the real broker: every produced topic's schema registered at set-up under the
namespaces' policy; producers and consumers that declare a schema still carry the raw JSON bytes; the broker
refuses an incompatible schema and takes a compatible version 2 while version 1 producers go on.

Scratch topics (in the real namespaces, so the real policy applies) carry the trades schema: the platform's own
topics and subscriptions are left as they were."""

import json
import time
import uuid

import pulsar
import pytest
import requests

from nautilus_assets.market_data import changes
from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.market_data.simulator import MarketSimulator, messages
from resources import schemas, topics
from tests.unit.test_schemas import CASES, V1

VERSION_0 = b"\0" * 8  # Message.schema_version(): the registry's version, 8 bytes big-endian


@pytest.fixture
def admin(settings) -> str:
    if not settings["PULSAR_ADMIN_URL"]:
        pytest.skip("pulsar-lite: no admin API, and it accepts and ignores schemas")
    return settings["PULSAR_ADMIN_URL"]


@pytest.fixture
def client(res):
    with res["pulsar"].client() as c:
        yield c


def _delete_topic(admin: str, topic: str) -> None:
    requests.delete(f"{admin}/admin/v2/persistent/{topic.split('://')[1]}?force=true", timeout=30)


@pytest.fixture
def scratch(settings, monkeypatch):
    """A fresh topic in nautilus/market-data declared with the trades schema (registered on Apache Pulsar)."""
    topic = topics.MARKET_DATA.topic(f"schema-test-{uuid.uuid4().hex[:8]}")
    declared = {**schemas.declared(), topic: schemas.schema_for(TRADES.topic)}
    monkeypatch.setattr(schemas, "declared", lambda: declared)
    admin = settings["PULSAR_ADMIN_URL"]
    if admin:
        assert schemas.register(admin, [topic]) == {topic: 0}
    yield topic
    if admin:
        _delete_topic(admin, topic)


@pytest.fixture
def namespace(admin):
    """A scratch namespace under the tenant, for policies the platform's namespaces do not have."""
    ns = f"schema-test-{uuid.uuid4().hex[:8]}"
    assert requests.put(f"{admin}/admin/v2/namespaces/{topics.TENANT}/{ns}", timeout=30).status_code == 204
    made = []
    yield ns, made
    for t in made:
        _delete_topic(admin, t)
    requests.delete(f"{admin}/admin/v2/namespaces/{topics.TENANT}/{ns}", timeout=30)


def _set(admin: str, ns: str, strategy: str | None = None, enforced: bool | None = None) -> None:
    base = f"{admin}/admin/v2/namespaces/{topics.TENANT}/{ns}"
    if strategy is not None:
        assert requests.put(f"{base}/schemaCompatibilityStrategy", json=strategy, timeout=30).status_code == 204
    if enforced is not None:
        assert requests.post(f"{base}/schemaValidationEnforced", json=enforced, timeout=30).status_code == 204


def _drain(consumer, n: int, timeout_ms: int = 10_000) -> list:
    out = []
    while len(out) < n:
        m = consumer.receive(timeout_millis=timeout_ms)
        consumer.acknowledge(m)
        out.append(m)
    return out


def _sub(name: str) -> str:
    return f"test-schemas-{name}-{uuid.uuid4().hex[:6]}"


SHARED = {"consumer_type": pulsar.ConsumerType.Shared, "initial_position": pulsar.InitialPosition.Earliest}


def test_every_produced_topic_has_its_schema_under_the_namespace_policy(admin):
    for ns in topics.NAMESPACES:
        assert schemas.policies(admin, ns) == {
            "compatibility": topics.SCHEMA_COMPATIBILITY,
            "validation_enforced": topics.SCHEMA_VALIDATION_ENFORCED,
            "auto_update": True,  # a compatible new version registers with its first producer (item 5)
        }
    for topic, schema in schemas.declared().items():
        reg = schemas.registered(admin, topic)
        assert reg is not None and reg["type"] == "JSON", topic
        # the declared schema is one of the versions (the latest may be an older producer's compatible one: the
        # schema-evolution test's version-1 trades producer registers it)
        versions = [json.loads(v["data"]) for v in schemas.history(admin, topic)]
        assert schema.record in versions, topic
    before = {t: len(schemas.history(admin, t)) for t in schemas.declared()}
    assert topics.ensure(admin)["created"] == []  # set-up again: nothing new, no new schema version
    assert {t: len(schemas.history(admin, t)) for t in schemas.declared()} == before


def test_schema_producer_sends_the_json_bytes_consumers_receive_them_intact(settings, client, scratch):
    """On both brokers: the helpers' producer and consumer, and a consumer that declares no schema (as the ingest
    subscribes until it uses schemas.subscribe), get the bytes as sent, including ones that are not JSON (the broker
    does not look into payloads: the ingest's decode quarantines them)."""
    trades, _ = MarketSimulator(["AAPL.XNAS"], seed=11, start_ns=time.time_ns()).take(500, 1)
    payloads = [*messages(trades), b"not json", b'{"schema_version": 1, "price": "x"}']
    typed = schemas.subscribe(client, scratch, _sub("typed"), **SHARED)
    plain = client.subscribe(scratch, _sub("plain"), **SHARED)
    errors = []
    p = schemas.create_producer(client, scratch, block_if_queue_full=True, batching_enabled=True)
    for b in payloads:
        p.send_async(b, lambda res, _id: res != pulsar.Result.Ok and errors.append(res))
    p.flush()
    p.close()
    assert errors == []
    for consumer in (typed, plain):
        got = _drain(consumer, len(payloads))
        assert sorted(m.data() for m in got) == sorted(payloads)
        assert all(m.value() == m.data() for m in got)
        if settings["PULSAR_ADMIN_URL"]:  # Apache Pulsar stamps each message with its schema version
            assert {m.schema_version().encode("latin-1") for m in got} == {VERSION_0}
        consumer.close()  # the scratch topic goes with its subscriptions (pulsar-lite fails an unsubscribe)


@pytest.mark.parametrize("strategy", ["FULL_TRANSITIVE", "BACKWARD_TRANSITIVE"])
@pytest.mark.parametrize("case", CASES)
def test_broker_refuses_incompatible_schemas_and_takes_an_added_optional_field(
    admin, client, scratch, namespace, case, strategy
):
    """FULL_TRANSITIVE is the platform's policy (on nautilus/market-data); BACKWARD_TRANSITIVE, on a scratch
    namespace, shows why not that one: it lets a producer drop a required field. The broker's verdicts are those of
    the offline rules (tests/unit/test_schemas.py)."""
    new, refused_full, refused_backward = CASES[case]
    if strategy == topics.SCHEMA_COMPATIBILITY:
        topic, refused = scratch, refused_full
    else:
        ns, made = namespace
        _set(admin, ns, strategy)
        topic, refused = f"persistent://{topics.TENANT}/{ns}/trades", refused_backward
        made.append(topic)
        schemas.post(admin, topic, schemas.schema_for(TRADES.topic))
    assert bool(schemas.compatibility_problems(new, [V1], strategy)) is refused
    v1, schema = schemas.schema_for(TRADES.topic), schemas.JsonBytes(new)
    if refused:
        with pytest.raises(pulsar.IncompatibleSchema):
            client.create_producer(topic, schema=schema)
        with pytest.raises(pulsar.IncompatibleSchema):
            client.subscribe(topic, _sub("refused"), schema=schema)
        with pytest.raises(schemas.IncompatibleSchemaError, match=f"with strategy {strategy}"):
            schemas.post(admin, topic, schema)
        assert len(schemas.history(admin, topic)) == 1
        return
    # accepted: the new version registers with its producer; version 1 producers go on; both reach the consumers
    consumer = client.subscribe(topic, _sub("both"), **SHARED)
    v1_msg = b'{"schema_version": 1, "price": 1.0}'
    v2_msg = b'{"schema_version": 1, "price": 2.0, "venue_seq": 7}'
    p2 = client.create_producer(topic, schema=schema, batching_enabled=False)
    p2.send(v2_msg)
    p1 = client.create_producer(topic, schema=v1, batching_enabled=False)
    p1.send(v1_msg)
    p1.close()
    p2.close()
    assert [json.loads(h["data"]) for h in schemas.history(admin, topic)] == [V1, new]
    got = {m.data(): m.schema_version().encode("latin-1") for m in _drain(consumer, 2)}
    assert got == {v2_msg: (1).to_bytes(8, "big"), v1_msg: VERSION_0}
    consumer.unsubscribe()
    # a consumer declaring a version is let in if it reads every registered one: after a dropped required field
    # (BACKWARD_TRANSITIVE took it), consumers written against version 1 are locked out
    v1_locked_out = bool(schemas.read_problems(V1, new))
    assert v1_locked_out is (case == "removes a required field")
    if v1_locked_out:
        with pytest.raises(pulsar.IncompatibleSchema):
            client.subscribe(topic, _sub("v1"), schema=v1)
    else:
        client.subscribe(topic, _sub("v1"), schema=v1).unsubscribe()
    client.subscribe(topic, _sub("new"), schema=schema).unsubscribe()


def test_validation_enforced_refuses_a_producer_without_schema(admin, client, scratch, namespace):
    """schemaValidationEnforced refuses producers that declare no schema (BYTES) on a topic that has one; consumers
    without one are let in either way. The platform's namespaces enforce it (topics.SCHEMA_VALIDATION_ENFORCED):
    every producer goes through schemas.create_producer."""
    ns, made = namespace
    topic = f"persistent://{topics.TENANT}/{ns}/trades"
    made.append(topic)
    _set(admin, ns, topics.SCHEMA_COMPATIBILITY, enforced=True)
    schemas.post(admin, topic, schemas.schema_for(TRADES.topic))
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(topic)
    client.create_producer(topic, schema=schemas.schema_for(TRADES.topic)).close()
    client.subscribe(topic, _sub("plain")).unsubscribe()
    _set(admin, ns, enforced=False)
    client.create_producer(topic).close()
    # and the platform's namespaces: a schema-less producer is refused on their topics (scratch, a feed, alerts)
    assert topics.SCHEMA_VALIDATION_ENFORCED
    for t in (scratch, TRADES.topic, topics.SYSTEM_ALERTS):
        with pytest.raises(pulsar.IncompatibleSchema):
            client.create_producer(t)
    schemas.create_producer(client, TRADES.topic).close()


def test_a_consumer_declaring_a_schema_needs_it_registered_first(admin, client, namespace):
    """Why set-up registers every schema: a consumer with a schema is refused on a topic that holds messages but no
    schema; one without (or AUTO_CONSUME) is not."""
    ns, made = namespace
    _set(admin, ns, topics.SCHEMA_COMPATIBILITY)
    topic = f"persistent://{topics.TENANT}/{ns}/unregistered"
    made.append(topic)
    p = client.create_producer(topic)
    p.send(b'{"schema_version": 1}')
    p.close()
    with pytest.raises(pulsar.IncompatibleSchema):
        client.subscribe(topic, _sub("typed"), schema=schemas.schema_for(TRADES.topic))
    client.subscribe(topic, _sub("auto"), schema=schemas.AutoConsume()).unsubscribe()
    schemas.post(admin, topic, schemas.schema_for(TRADES.topic))
    client.subscribe(topic, _sub("typed"), schema=schemas.schema_for(TRADES.topic)).unsubscribe()


def test_change_feed_consumers_of_several_topics_read_with_auto_consume(admin, client):
    """changes.subscribe over bars-changes and the fills (the portfolio's run) declares AUTO_CONSUME: one JSON
    schema over topics of different schemas is refused."""
    with pytest.raises(pulsar.IncompatibleSchema):
        client.subscribe(
            [topics.BARS_CHANGES, topics.PORTFOLIO_FILLS], _sub("one"), schema=schemas.schema_for(topics.BARS_CHANGES)
        )
    for extra in ([], [topics.PORTFOLIO_FILLS]):
        changes.subscribe(client, _sub("changes"), extra).unsubscribe()
