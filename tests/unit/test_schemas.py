"""The topics' registered schemas, without a broker: derived from the feed declarations, written for the other
topics from the code that builds their messages (checked against real payloads), and Avro's compatibility rules
under the namespaces' policy (the integration test shows the broker applying the same verdicts)."""

import dataclasses
import json
import time
from types import SimpleNamespace

import _pulsar
import dagster as dg
import orjson
import pyarrow as pa
import pytest

from nautilus_assets.market_data import changes
from nautilus_assets.market_data.schema import FEEDS, NS, QUOTES, TRADES
from nautilus_assets.market_data.simulator import MarketSimulator, messages
from nautilus_assets.portfolio.models import fill_messages, model_fills
from resources import schemas, system_topics, topics


# ---- a JSON value against an Avro type (what the payloads on the wire must satisfy) -----------------------------
def problems(value, avro, at: str = "") -> list[str]:
    if isinstance(avro, list):
        tries = [problems(value, b, at) for b in avro]
        return [] if any(not p for p in tries) else [f"{at}: {value!r} fits no branch of {avro}"]
    kind = avro["type"] if isinstance(avro, dict) else avro
    simple = {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "long": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),  # a JSON number
        "double": isinstance(value, int | float) and not isinstance(value, bool),
        "string": isinstance(value, str),
    }
    if kind in simple:
        return [] if simple[kind] else [f"{at}: {value!r} is not {kind}"]
    if kind == "array":
        if not isinstance(value, list):
            return [f"{at}: {value!r} is not an array"]
        return [p for i, v in enumerate(value) for p in problems(v, avro["items"], f"{at}[{i}]")]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{at}: {value!r} is not a map"]
        return [p for k, v in value.items() for p in problems(v, avro["values"], f"{at}.{k}")]
    assert kind == "record", avro
    if not isinstance(value, dict):
        return [f"{at}: {value!r} is not a record"]
    names = {f["name"] for f in avro["fields"]}
    out = [f"{at}.{k}: not in the schema" for k in value if k not in names]
    for f in avro["fields"]:
        if f["name"] in value:
            out += problems(value[f["name"]], f["type"], f"{at}.{f['name']}")
        elif "default" not in f:
            out.append(f"{at}.{f['name']}: missing")
    return out


def on_the_wire(payload: bytes) -> dict:
    return orjson.loads(payload)


# ---- derived from the feed declarations ---------------------------------------------------------------------------
def test_feed_record_is_its_declared_fields_times_and_version():
    for feed in FEEDS.values():
        rec = schemas.feed_record(feed)
        names = [f["name"] for f in rec["fields"]]
        assert names == ["schema_version", *(n for n, *_ in feed.fields), "ts_event", "ts_init"]
        assert {f["name"]: f["type"] for f in rec["fields"]}["ts_event"] == "long"
        # required, but for the fields a later version added (the feed's `optional`): unions with null
        optional = {f["name"] for f in rec["fields"] if isinstance(f["type"], list)}
        assert optional == set(getattr(feed, "optional", ())), feed.name
        assert rec["namespace"] == "nautilus.market_data" and rec["type"] == "record"
    trades = {f["name"]: f for f in schemas.feed_record(TRADES)["fields"]}
    assert schemas.feed_record(TRADES)["name"] == "Trades" and schemas.feed_record(QUOTES)["name"] == "Quotes"
    assert (trades["price"]["type"], trades["instrument_id"]["type"], trades["schema_version"]["type"]) == (
        "double",
        "string",
        "int",
    )
    assert trades["price"]["doc"] == "Trade price"  # the declaration's description


def test_arrow_types_map_to_avro():
    cases = {
        pa.string(): "string",
        pa.float64(): "double",
        pa.float32(): "float",
        pa.int64(): "long",
        pa.int32(): "int",
        pa.int8(): "int",
        pa.bool_(): "boolean",
        pa.list_(pa.string()): {"type": "array", "items": "string"},
        pa.dictionary(pa.int32(), pa.string()): "string",
    }
    for arrow, avro in cases.items():
        assert schemas.avro_type(arrow) == avro, arrow
    with pytest.raises(TypeError, match="no Avro type"):
        schemas.avro_type(pa.timestamp("us"))  # a new feed with an unmapped type fails here, not on the broker


def trades_v2() -> dict:
    """Item 5's example: version 2 of the trades message adds one optional field."""
    v2 = dataclasses.replace(TRADES, fields=[*TRADES.fields, ("venue_seq", pa.int64(), "Int64", "Venue sequence", NS)])
    return schemas.feed_record(v2, optional=(*getattr(TRADES, "optional", ()), "venue_seq"))


def test_an_optional_field_is_a_union_with_null_defaulting_to_null():
    added = trades_v2()["fields"][-3]
    assert added == {"name": "venue_seq", "type": ["null", "long"], "default": None, "doc": "Venue sequence"}
    assert schemas.field("x", ["double", "string"], optional=True)["type"] == ["null", "double", "string"]
    with pytest.raises(ValueError, match="not fields of the feed"):
        schemas.feed_record(TRADES, optional=("no_such_field",))


# ---- compatibility (Avro's rules; the broker applies them to JSON schemas with Avro definitions) ----------------
V1 = schemas.feed_record(TRADES)


def variant(drop: str = "", retype: tuple[str, str] = ("", ""), add: dict | None = None) -> dict:
    fields = [{**f, "type": retype[1]} if f["name"] == retype[0] else f for f in V1["fields"] if f["name"] != drop] + (
        [add] if add else []
    )
    return {**V1, "fields": fields}


CASES = {  # name -> (new schema, refused under FULL_TRANSITIVE, refused under BACKWARD_TRANSITIVE)
    "v2 adds an optional field": (trades_v2(), False, False),
    "retypes price to string": (variant(retype=("price", "string")), True, True),
    "removes a required field": (variant(drop="size"), True, False),  # why the policy is FULL_TRANSITIVE
    "adds a required field": (variant(add={"name": "venue", "type": "string"}), True, True),
    "adds an optional field without a default": (
        variant(add={"name": "venue", "type": ["null", "string"]}),
        True,
        True,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_policy_refuses_removed_or_retyped_fields_and_accepts_an_added_optional_one(case):
    new, full, backward = CASES[case]
    assert bool(schemas.compatibility_problems(new, [V1], "FULL_TRANSITIVE")) is full
    assert bool(schemas.compatibility_problems(new, [V1], "BACKWARD_TRANSITIVE")) is backward
    assert topics.SCHEMA_COMPATIBILITY == "FULL_TRANSITIVE"


def test_transitive_checks_every_earlier_version_and_promotions_go_one_way():
    x = {"name": "x", "type": "long"}
    a = {"type": "record", "name": "R", "fields": [x]}
    b = {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["null", "long"], "default": None}]}
    c = {"type": "record", "name": "R", "fields": []}
    assert schemas.compatibility_problems(c, [a, b], "FULL") == []  # against the latest only
    assert schemas.compatibility_problems(c, [a, b], "FULL_TRANSITIVE")  # a's readers need x
    as_double = {"type": "record", "name": "R", "fields": [{"name": "x", "type": "double"}]}
    assert schemas.compatibility_problems(as_double, [a], "BACKWARD") == []  # long widens to double
    assert schemas.compatibility_problems(as_double, [a], "FULL")  # a double is not read as a long
    assert schemas.compatibility_problems(a, [], "FULL_TRANSITIVE") == []


# ---- every produced topic, and its payloads -----------------------------------------------------------------------
def test_every_topic_the_platform_produces_to_has_a_schema():
    from nautilus_assets.definitions import defs

    declared = schemas.declared()
    produced = {f.topic for f in FEEDS.values()} | {
        topics.BARS_CHANGES,
        topics.PORTFOLIO_FILLS,
        topics.SYSTEM_EVENTS,
        topics.SYSTEM_ALERTS,
    }
    produced |= {t for a in defs.resolve_all_asset_specs() if (t := (a.metadata or {}).get("nautilus/engine_topic"))}
    assert produced <= set(declared), produced - set(declared)
    # the map's topics without one: market-data feeds the architecture names and no feed declares yet
    for t in set(topics.all_topics()) - set(declared):
        assert t.startswith(topics.MARKET_DATA.topic("")) and t not in {f.topic for f in FEEDS.values()}, t
    with pytest.raises(KeyError, match="no declared schema"):
        schemas.schema_for("persistent://nautilus/system/nothing")


def test_real_payloads_fit_their_topics_schemas():
    trades, quotes = MarketSimulator(["AAPL.XNAS", "MSFT.XNAS"], seed=3, start_ns=time.time_ns()).take(400, 200)
    fills = fill_messages(model_fills(trades, every=20))
    assert fills
    record = SimpleNamespace(
        storage_id=42,
        event_log_entry=SimpleNamespace(
            run_id="r1",
            job_name="j",
            step_key=None,
            timestamp=time.time(),
            dagster_event=SimpleNamespace(
                step_materialization_data=SimpleNamespace(
                    materialization=dg.AssetMaterialization(
                        dg.AssetKey(["market_data", "trades"]),
                        metadata={"rows": 3, "ratio": 0.5, "ok": True, "note": "x", "big": dg.MetadataValue.json({})},
                        tags={"dagster/data_version": "v7"},
                    )
                )
            ),
        ),
    )
    from sensors.sla import alert

    by_topic = {
        TRADES.topic: messages(trades),
        QUOTES.topic: messages(quotes),
        topics.PORTFOLIO_FILLS: fills,
        topics.BARS_CHANGES: [
            orjson.dumps(changes.message("b1", 3, keys=[("AAPL.XNAS", 60), ("AAPL.XNAS", 120)])),
            orjson.dumps(changes.message("b2", 4, spans={"MSFT.XNAS": (60, 600)})),  # no keys: a bulk load's
        ],
        topics.SYSTEM_EVENTS: [orjson.dumps(system_topics.materialization_event(record), default=str)],
        topics.SYSTEM_ALERTS: [
            orjson.dumps(
                system_topics.quarantine_alert(
                    TRADES.topic, "b1", 10, 8, [{"message_id": "1:2:0", "reason": "bad: x"}, {"reason": "y"}]
                )
            ),
            orjson.dumps(alert("sla_breach", "error", "p", dg.AssetKey("a"), "p99_latency_ms", 12.5, 10.0, requests=3)),
            orjson.dumps(alert("freshness_failure", "error", "p", dg.AssetKey("a"), "s", 99.0, "cron deadline")),
        ],
        topics.ENGINES.topic("risk-metrics"): [orjson.dumps({"product": "risk", "asset": "a/b", "run_id": "r"})],
    }
    for topic, payloads in by_topic.items():
        rec = schemas.schema_for(topic).record
        for p in payloads:
            assert problems(on_the_wire(p), rec) == [], (topic, p)
    # and the check itself bites: a retyped or missing field does not fit
    bad = {**on_the_wire(messages(trades)[0]), "price": "1.5"}
    assert problems(bad, schemas.schema_for(TRADES.topic).record)
    assert problems({"schema": "x"}, schemas.BARS_CHANGE)


def test_every_feeds_rendered_messages_fit_its_schema():
    """Each declared feed (new ones included), a row of its declared Arrow types rendered as the publisher does."""
    samples = {"string": "x", "double": 1.5, "float": 1.5, "long": 7, "int": 7, "boolean": True}

    def sample(t: pa.DataType):
        a = schemas.avro_type(t)
        return [samples[a["items"]]] if isinstance(a, dict) else samples[a]

    for feed in FEEDS.values():
        cols = [(n, a) for n, a, *_ in feed.fields] + [("ts_event", pa.int64()), ("ts_init", pa.int64())]
        row = pa.table({n: pa.array([sample(a)], a) for n, a in cols})
        (payload,) = messages(row)
        assert problems(on_the_wire(payload), schemas.feed_record(feed)) == [], feed.name


# ---- the pulsar.schema.Schema the producers and consumers carry ---------------------------------------------------
def test_json_bytes_declares_json_and_passes_payloads_through():
    s = schemas.schema_for(TRADES.topic)
    info = s.schema_info()
    assert info.schema_type() == _pulsar.SchemaType.JSON and json.loads(info.schema()) == s.record
    payload = b'{"schema_version": 1, "price": 1.5}'
    assert s.encode(payload) is payload and s.decode(payload) is payload
    assert json.loads(s.definition) == s.record


def test_consumer_schema_per_topic_set():
    eng = [topics.ENGINES.topic("risk-metrics"), topics.ENGINES.topic("ml-predictions")]
    assert schemas.consumer_schema(TRADES.topic) is schemas.schema_for(TRADES.topic)
    assert schemas.consumer_schema([topics.BARS_CHANGES]) is schemas.schema_for(topics.BARS_CHANGES)
    assert schemas.consumer_schema(eng) is schemas.schema_for(eng[0])  # one schema over both
    mixed = schemas.consumer_schema([topics.BARS_CHANGES, topics.PORTFOLIO_FILLS])
    assert mixed.schema_info().schema_type() == _pulsar.SchemaType.AUTO_CONSUME
