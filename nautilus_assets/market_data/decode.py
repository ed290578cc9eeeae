"""Decode and validate market-data messages (pure: no I/O). Bad messages become quarantine rows."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import orjson
import pyarrow as pa

from .schema import MAX_MESSAGE_BYTES, NS, POSITIVE, SCHEMA_VERSION, SIDE, TEXT, TRADES, Feed

SIDES = {"BUYER", "SELLER", "NO_AGGRESSOR"}
FUTURE_TOLERANCE_NS = 60 * 1_000_000_000


@dataclass(frozen=True)
class RawMessage:
    payload: bytes
    message_id: str          # ledger:entry:batch_index
    ledger_id: int
    entry_id: int
    publish_time_ms: int = 0
    replay: bool = False     # part of a marked historical replay: exempt from the lateness bound


@dataclass
class Decoded:
    table: pa.Table
    quarantine: list[dict] = field(default_factory=list)   # message_id, reason, payload, publish_time_ms
    duplicates: int = 0                                     # same message id seen twice in this batch


def _check(kind: str, value) -> str | None:
    """Why `value` is not acceptable for a field of this kind, or None."""
    if kind == POSITIVE:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {type(value).__name__}"
        if not math.isfinite(value) or value <= 0:
            return f"must be a finite number > 0, got {value!r}"
    elif kind == TEXT:
        if not isinstance(value, str) or not value.strip():
            return "expected a non-empty string"
    elif kind == SIDE:
        if value not in SIDES:
            return f"expected one of {sorted(SIDES)}, got {value!r}"
    elif kind == NS:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value >= 2**63:
            return "expected a positive int64 of UTC nanoseconds"
    return None


def validate(feed: Feed, msg: RawMessage, now_ns: int, lateness_ns: int) -> tuple[dict | None, str | None]:
    """(record, None) for a valid message, (None, reason) otherwise."""
    if len(msg.payload) > MAX_MESSAGE_BYTES:
        return None, f"too_large: {len(msg.payload)} bytes > {MAX_MESSAGE_BYTES}"
    try:
        rec = orjson.loads(msg.payload)
    except orjson.JSONDecodeError as e:
        return None, f"invalid_json: {e}"
    if not isinstance(rec, dict):
        return None, f"invalid_json: expected an object, got {type(rec).__name__}"
    version = rec.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        return None, f"unknown_schema_version: {version!r}"
    checks = [(n, kind) for n, _, _, _, kind in feed.fields] + [("ts_event", NS), ("ts_init", NS)]
    for name, kind in checks:
        if name not in rec:
            return None, f"missing_field: {name}"
        why = _check(kind, rec[name])
        if why:
            return None, f"bad_value: {name} {why}"
    ts = rec["ts_event"]
    if ts > now_ns + FUTURE_TOLERANCE_NS:
        return None, f"future_ts_event: {(ts - now_ns) / 1e9:.1f}s ahead of ingestion"
    if not msg.replay and ts < now_ns - lateness_ns:
        return None, f"too_late: {(now_ns - ts) / 1e9:.0f}s old, lateness bound {lateness_ns / 1e9:.0f}s"
    if "bid_price" in rec and rec["bid_price"] > rec["ask_price"]:
        return None, "crossed_quote: bid_price > ask_price"
    return rec, None


def decode(feed: Feed, messages: list[RawMessage], topic: str, batch_id: str, now_ns: int,
           lateness_ns: int) -> Decoded:
    """Validated rows of one micro-batch as an Arrow table in `feed.arrow_schema`, plus quarantine rows."""
    out = Decoded(table=feed.arrow_schema.empty_table())
    rows: list[tuple[RawMessage, dict]] = []
    seen_msg: set[str] = set()
    seen_trade: set[tuple[str, str]] = set()
    for m in messages:
        if m.message_id in seen_msg:
            out.duplicates += 1
            continue
        seen_msg.add(m.message_id)
        rec, why = validate(feed, m, now_ns, lateness_ns)
        if rec is not None and feed is TRADES:
            key = (rec["instrument_id"], rec["trade_id"])
            if key in seen_trade:
                rec, why = None, f"duplicate_trade_id: {key[1]} already used in this batch"
            seen_trade.add(key)
        if rec is None:
            out.quarantine.append({"message_id": m.message_id, "reason": why, "payload": m.payload,
                                   "publish_time_ms": m.publish_time_ms})
        else:
            rows.append((m, rec))
    if not rows:
        return out
    cols = {name: pa.array([r[name] for _, r in rows], typ) for name, typ, *_ in feed.fields}
    out.table = build_table(
        feed, cols, ts_event=pa.array([r["ts_event"] for _, r in rows], pa.int64()),
        ts_init=pa.array([r["ts_init"] for _, r in rows], pa.int64()), topic=topic, batch_id=batch_id, now_ns=now_ns,
        message_id=pa.array([m.message_id for m, _ in rows], pa.string()),
        ledger_id=pa.array([m.ledger_id for m, _ in rows], pa.int64()),
        entry_id=pa.array([m.entry_id for m, _ in rows], pa.int64()))
    return out


def build_table(feed: Feed, fields: dict, *, ts_event, ts_init, topic: str, batch_id: str, now_ns: int,
                message_id, ledger_id, entry_id) -> pa.Table:
    """A stored table: the feed's fields plus derived timestamps and provenance, in `feed.arrow_schema`."""
    n = len(ts_event)
    ts = pa.array(ts_event, pa.int64()).cast(pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("us", tz="UTC"), safe=False)
    data = {**fields, "ts_event": ts_event, "ts_init": ts_init, "ts": ts, "date": ts.cast(pa.date32()),
            "ingested_at": pa.array([now_ns // 1000] * n, pa.timestamp("us", tz="UTC")),
            "topic": pa.array([topic] * n, pa.string()), "message_id": message_id, "ledger_id": ledger_id,
            "entry_id": entry_id, "batch_id": pa.array([batch_id] * n, pa.string()),
            "schema_version": pa.array([SCHEMA_VERSION] * n, pa.int32())}
    return pa.table(data, schema=feed.arrow_schema)
