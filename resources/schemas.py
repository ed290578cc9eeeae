"""The registered schema of every topic the platform produces to (Apache Pulsar's schema registry).

Payloads stay the JSON bytes they are (producers render them with orjson, the ingest decodes batches of them with
Arrow's JSON reader), so each topic's schema is Pulsar's JSON schema type, whose definition is an Avro record
(what `pulsar.schema.JsonSchema` registers), on a `pulsar.schema.Schema` that passes the bytes through: the broker
gets the declaration and its compatibility checks, `Message.data()` stays the raw bytes, and a send costs no
extra encoding.

- market-data feeds: derived from the feed declarations (`nautilus_assets.market_data.schema.FEEDS`), so a new
  feed gets its schema with no extra work. Fields named in a feed's `optional` (read with getattr: fields a later
  version adds) are unions with null and default null, which is what keeps a version that adds one compatible.
- the other produced topics: written out below, from the code that builds their messages.

The namespaces' policy (resources/topics.py: SCHEMA_COMPATIBILITY, FULL_TRANSITIVE) makes the broker refuse a
producer or consumer whose schema removes or retypes a field, or adds one without a default. `register` (called by
`topics.ensure` at set-up) registers every schema up front: a consumer that declares a schema is refused on a topic
that holds messages but no schema. pulsar-lite ignores schemas (it accepts and drops them): the helpers work
there unchanged, and it has no admin API to register with.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Iterable

import _pulsar
import pulsar
import pyarrow as pa
import requests
from pulsar.schema import Schema

from .topics import (
    BARS_CHANGES,
    BOOK_CHANGES,
    ENGINES,
    PORTFOLIO_FILLS,
    SCHEMA_COMPATIBILITY,
    SYSTEM_ALERTS,
    SYSTEM_EVENTS,
    TENANT,
    all_topics,
)


class JsonBytes(Schema):
    """Pulsar's JSON schema type with an Avro record definition, on payloads already encoded as JSON bytes."""

    def __init__(self, record: dict):
        super().__init__(bytes, _pulsar.SchemaType.JSON, record, "JSON")
        self.record = record

    def encode(self, obj: bytes) -> bytes:
        return obj  # the producer checks it is bytes

    def decode(self, data: bytes) -> bytes:
        return data

    @property
    def definition(self) -> str:
        """The schema text the client sends, and `register` posts (the broker matches versions by content)."""
        return self.schema_info().schema()

    def __str__(self) -> str:
        return f"JsonBytes({self.record.get('namespace', '')}.{self.record['name']})"


class AutoConsume(Schema):
    """A consumer of several topics with different schemas: reads with whatever each topic registered (the broker
    checks nothing; a single JSON schema on such a consumer is refused). Payloads pass through as bytes."""

    def __init__(self):
        super().__init__(bytes, _pulsar.SchemaType.AUTO_CONSUME, None, "AUTO_CONSUME")

    def encode(self, obj: bytes) -> bytes:
        raise TypeError("AUTO_CONSUME is for consumers")

    def decode(self, data: bytes) -> bytes:
        return data


# ---- Avro record definitions --------------------------------------------------------------------------------------
def field(name: str, avro: str | dict | list, doc: str = "", optional: bool = False) -> dict:
    """An Avro field; optional: a union with null, default null (a field added later must be, for compatibility)."""
    union = avro if isinstance(avro, list) else [avro]  # Avro unions do not nest
    f: dict = {"name": name, "type": ["null", *union] if optional else avro}
    if optional:
        f["default"] = None
    if doc:
        f["doc"] = doc
    return f


def record(name: str, namespace: str, fields: list[dict], doc: str = "") -> dict:
    # the name and namespace stay fixed across versions: they are the record's identity in Avro
    return {"type": "record", "name": name, "namespace": namespace, **({"doc": doc} if doc else {}), "fields": fields}


def array(items: str | dict | list) -> dict:
    return {"type": "array", "items": items}


def map_of(values: str | dict | list) -> dict:
    return {"type": "map", "values": values}


def avro_type(t: pa.DataType) -> str | dict:
    """The Avro type of an Arrow type as the JSON payloads carry it."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_float64(t):
        return "double"
    if pa.types.is_float32(t) or pa.types.is_float16(t):
        return "float"
    if pa.types.is_int64(t) or pa.types.is_uint32(t) or pa.types.is_uint64(t):
        return "long"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return array(avro_type(t.value_type))
    if pa.types.is_dictionary(t):
        return avro_type(t.value_type)
    raise TypeError(f"no Avro type for Arrow {t}: add it to resources/schemas.avro_type")


def _record_name(feed_name: str) -> str:
    return "".join(p.capitalize() for p in feed_name.replace("-", "_").split("_"))


def feed_record(feed, optional: Iterable[str] | None = None) -> dict:
    """The message record of a market-data feed: its fields, ts_event, ts_init and schema_version; the fields in
    `optional` (default: the feed's `optional`, if it declares one) may be absent or null."""
    from nautilus_assets.market_data.schema import TIMES

    opt = set(getattr(feed, "optional", ()) if optional is None else optional)
    times = {n: d for n, _, _, d in TIMES}
    unknown = opt - {n for n, *_ in feed.fields}
    if unknown:
        raise ValueError(f"{feed.name}: optional fields {sorted(unknown)} are not fields of the feed")
    return record(
        _record_name(feed.name),
        "nautilus.market_data",
        [
            field("schema_version", "int", "Message schema version"),
            *(field(n, avro_type(a), d, optional=n in opt) for n, a, _c, d, _k in feed.fields),
            field("ts_event", "long", times["ts_event"]),
            field("ts_init", "long", times["ts_init"]),
        ],
        f"One {feed.name} message on {feed.topic} (nautilus_assets/market_data/schema.py)",
    )


# nautilus_assets/market_data/changes.py::message
BARS_CHANGE = record(
    "BarsChange",
    "nautilus.market_data",
    [
        field("schema", "string", "nautilus.bars.changes/1 (bars-changes) or nautilus.book.changes/1 (book-changes)"),
        field("batch_id", "string", "The batch (Dagster run) that wrote the minutes"),
        field("version", "long", "The recompute version"),
        field("instruments", map_of(array("long")), "Per instrument, [first, last] minute start touched, epoch s"),
        field("keys", array(array(["string", "long"])), "The touched [instrument, minute start] pairs", True),
    ],
    "The instrument-minutes a committed batch changed: the trades' 1-minute bars, or the order book's updates",
)

# nautilus_assets/portfolio/models.py::fill_messages
FILL = record(
    "Fill",
    "nautilus.portfolio",
    [
        field("schema_version", "int", "Message schema version"),
        field("fill_id", "string", "portfolio:instrument:trade id"),
        field("portfolio_id", "string"),
        field("instrument_id", "string"),
        field("quantity", "double", "Signed: positive buys, negative sells"),
        field("price", "double"),
        field("fee", "double"),
        field("ts_event", "long", "Event time, UTC nanoseconds"),
    ],
    "A model portfolio's fill",
)

# nautilus_assets/product.py::Product.announce
PRODUCT_EVENT = record(
    "ProductEvent",
    "nautilus.engines",
    [
        field("product", "string", "Data product"),
        field("asset", "string", "Asset key"),
        field("run_id", "string", "Dagster run or streaming batch id"),
    ],
    # JSON readers ignore fields a record does not name; the envelope is the contract
    "A materialization of a data product; each product adds its own facts (counts, days, metrics) as further "
    "top-level fields",
)

# resources/system_topics.py::materialization_event
SYSTEM_EVENT = record(
    "Event",
    "nautilus.system",
    [
        field("schema", "string", "nautilus.system.event/1"),
        field("type", "string", "asset_materialization"),
        field("event_id", "long", "Storage id of the event log record"),
        field("asset_key", "string"),
        field("partition", "string", optional=True),
        field("run_id", "string"),
        field("job_name", "string", optional=True),
        field("step_key", "string", optional=True),
        field("data_version", "string", optional=True),
        field("code_version", "string", optional=True),
        field("timestamp", "double", "Epoch seconds"),
        field("metadata", map_of(["null", "boolean", "long", "double", "string"]), "Small scalar metadata"),
    ],
    "One event per asset materialization",
)

# resources/system_topics.py::quarantine_alert and sensors/sla.py::alert: one envelope, each kind's own fields
ALERT = record(
    "Alert",
    "nautilus.system",
    [
        field("schema", "string", "nautilus.system.alert/1"),
        field("type", "string", "quarantine, sla_breach, sla_recovered, freshness_failure, freshness_recovered"),
        field("severity", "string", "info, warning, error or critical"),
        field("ts", "long", "UTC nanoseconds"),
        # quarantine
        field("topic", "string", "The topic the batch consumed", True),
        field("batch_id", "string", optional=True),
        field("consumed", "long", optional=True),
        field("valid", "long", optional=True),
        field("quarantined", "long", optional=True),
        field("reasons", map_of("long"), "Quarantined messages per reason", True),
        field(
            "examples",
            array(
                record(
                    "Example",
                    "nautilus.system",
                    [field("message_id", "string", optional=True), field("reason", "string", optional=True)],
                )
            ),
            optional=True,
        ),
        # SLA and freshness
        field("product", "string", optional=True),
        field("asset", "string", optional=True),
        field("figure", "string", "The measured figure, e.g. p99_latency_ms", True),
        field("value", "double", optional=True),
        field("target", ["double", "string"], "The target (a number, or 'cron deadline')", True),
        field("window_s", "double", optional=True),
        field("requests", "long", optional=True),
    ],
    "A platform alert: a micro-batch quarantined messages, or a product's SLA or freshness changed state",
)


@functools.cache
def declared() -> dict[str, JsonBytes]:
    """Topic -> schema, for every topic the platform produces to."""
    from nautilus_assets.market_data.schema import FEEDS

    out = {f.topic: feed_record(f) for f in FEEDS.values()}
    out.update({BARS_CHANGES: BARS_CHANGE, PORTFOLIO_FILLS: FILL, SYSTEM_EVENTS: SYSTEM_EVENT, SYSTEM_ALERTS: ALERT})
    out[BOOK_CHANGES] = BARS_CHANGE  # the same announcement, for the order book's minutes
    for t in ENGINES.topics:
        out.setdefault(ENGINES.topic(t), PRODUCT_EVENT)
    one = {id(r): JsonBytes(r) for r in out.values()}  # one object per record: topics that share it compare equal
    return {t: one[id(r)] for t, r in out.items()}


def schema_for(topic: str) -> JsonBytes:
    try:
        return declared()[topic]
    except KeyError:
        raise KeyError(f"{topic} has no declared schema (resources/schemas.py; a feed's comes from FEEDS)") from None


def create_producer(client: pulsar.Client, topic: str, **kw) -> pulsar.Producer:
    """A producer that declares the topic's schema: the broker refuses it if the schema is not compatible with the
    topic's history. `send` takes the JSON bytes as before."""
    return client.create_producer(topic, schema=schema_for(topic), **kw)


def consumer_schema(topics: str | list[str]) -> Schema:
    """One topic: its schema. Several with one schema: that; otherwise AUTO_CONSUME (the broker refuses a single
    JSON schema on topics that registered others)."""
    names = [topics] if isinstance(topics, str) else list(topics)
    if len(names) == 1:
        return schema_for(names[0])
    found = {declared().get(t) for t in names}
    return found.pop() if len(found) == 1 and None not in found else AutoConsume()


def subscribe(client: pulsar.Client, topics: str | list[str], subscription: str, **kw) -> pulsar.Consumer:
    """A consumer that declares what it reads; `Message.data()` is the raw JSON bytes."""
    return client.subscribe(topics, subscription, schema=consumer_schema(topics), **kw)


# ---- the registry (admin REST API; Apache Pulsar only) ------------------------------------------------------------
def _path(topic: str) -> str:
    return topic.split("://", 1)[-1]  # tenant/namespace/topic


def register(admin_url: str, topics: Iterable[str] | None = None, timeout: float = 30) -> dict[str, int]:
    """Register the declared schema of each topic (default: every topic of the map that has one); returns the
    schema version per topic. Idempotent: the broker answers the existing version for a schema it holds."""
    names = [t for t in all_topics() if t in declared()] if topics is None else list(topics)
    s = requests.Session()
    return {t: post(admin_url, t, schema_for(t), timeout, s) for t in names}


def post(
    admin_url: str, topic: str, schema: JsonBytes, timeout: float = 30, session: requests.Session | None = None
) -> int:
    """Register `schema` on `topic`; its version. IncompatibleSchemaError if the namespace's policy refuses it."""
    body = {"type": "JSON", "schema": schema.definition, "properties": {}}
    url = f"{admin_url.rstrip('/')}/admin/v2/schemas/{_path(topic)}/schema"
    r = (session or requests).post(url, json=body, timeout=timeout)
    if r.status_code == 409:
        raise IncompatibleSchemaError(f"{topic}: the broker refused the schema: {_reason(r)}")
    if r.status_code != 200:
        raise RuntimeError(f"Pulsar admin POST schema of {topic}: {r.status_code} {r.text[:300]}")
    return int(r.json()["version"]["version"])


class IncompatibleSchemaError(RuntimeError):
    pass


def _reason(r: requests.Response) -> str:
    try:
        return str(r.json().get("reason", ""))[:500]
    except ValueError:  # a 409 of the schema endpoint comes as an HTML page, the reason in its title
        text = html.unescape(r.text)
        return text[text.find("<title>") + 7 : text.find("</title>")][:500] if "<title>" in text else text[:300]


def registered(admin_url: str, topic: str, timeout: float = 10) -> dict | None:
    """The topic's latest schema ({"version", "type", "data" (the definition), ...}); None if it has none."""
    r = requests.get(f"{admin_url.rstrip('/')}/admin/v2/schemas/{_path(topic)}/schema", timeout=timeout)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.json()


def history(admin_url: str, topic: str, timeout: float = 10) -> list[dict]:
    """Every version the topic registered, oldest first."""
    r = requests.get(f"{admin_url.rstrip('/')}/admin/v2/schemas/{_path(topic)}/schemas", timeout=timeout)
    if r.status_code == 404:
        return []
    r.raise_for_status()
    return r.json().get("getSchemaResponses", [])


POLICIES = {  # admin path -> key in `policies`
    "schemaCompatibilityStrategy": "compatibility",
    "schemaValidationEnforced": "validation_enforced",
    "isAllowAutoUpdateSchema": "auto_update",
}


def policies(admin_url: str, namespace: str, timeout: float = 10) -> dict:
    """A namespace's schema policies: compatibility strategy, validation enforced, producers may add versions."""
    base = f"{admin_url.rstrip('/')}/admin/v2/namespaces/{TENANT}/{namespace}"
    out = {}
    for path, key in POLICIES.items():
        r = requests.get(f"{base}/{path}", timeout=timeout)
        r.raise_for_status()
        out[key] = r.json()
    return out


# ---- Avro's compatibility rules, offline (what the broker applies to JSON schemas with Avro definitions) --------
PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"}}


def _norm(t):
    return t["type"] if isinstance(t, dict) and t["type"] not in ("record", "array", "map", "enum", "fixed") else t


def read_problems(reader, writer, at: str = "") -> list[str]:
    """Why data written with `writer` cannot be read with `reader` (empty: it can), by Avro's resolution rules for
    the types used here (primitives with promotions, records, unions, arrays, maps). Record names are not compared
    (Pulsar 4.0.7 accepted a renamed record)."""
    reader, writer = _norm(reader), _norm(writer)
    if isinstance(writer, list):
        return [p for w in writer for p in read_problems(reader, w, at)]
    if isinstance(reader, list):
        tries = [read_problems(r, writer, at) for r in reader]
        return [] if any(not p for p in tries) else [f"{at or 'value'}: no branch of {reader} reads {writer}"]
    rk = reader["type"] if isinstance(reader, dict) else reader
    wk = writer["type"] if isinstance(writer, dict) else writer
    if rk != wk:
        promoted = isinstance(wk, str) and rk in PROMOTIONS.get(wk, ())
        return [] if promoted else [f"{at or 'value'}: {wk} cannot be read as {rk}"]
    if rk == "record":
        wf = {f["name"]: f for f in writer["fields"]}
        out = []
        for f in reader["fields"]:
            if f["name"] in wf:
                out += read_problems(f["type"], wf[f["name"]]["type"], f"{at}{f['name']}")
            elif "default" not in f:
                out.append(f"{at}{f['name']}: missing in the writer's schema and has no default")
        return out
    if rk == "array":
        return read_problems(reader["items"], writer["items"], f"{at}[]")
    if rk == "map":
        return read_problems(reader["values"], writer["values"], f"{at}{{}}")
    return []


def compatibility_problems(new: dict, history: list[dict], strategy: str = SCHEMA_COMPATIBILITY) -> list[str]:
    """Why the broker would refuse `new` after the versions in `history` (oldest first) under `strategy`."""
    if strategy in ("ALWAYS_COMPATIBLE", "UNDEFINED") or not history:
        return []
    if strategy == "ALWAYS_INCOMPATIBLE":
        return ["ALWAYS_INCOMPATIBLE"]
    against = history if strategy.endswith("_TRANSITIVE") else history[-1:]
    kind = strategy.removesuffix("_TRANSITIVE")
    out = []
    for old in against:
        if kind in ("BACKWARD", "FULL"):
            out += [f"new cannot read old: {p}" for p in read_problems(new, old)]
        if kind in ("FORWARD", "FULL"):
            out += [f"old cannot read new: {p}" for p in read_problems(old, new)]
    return out
