"""Decode and validate market-data messages (pure: no I/O). Bad messages become quarantine rows."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from .schema import COUNT, MAX_MESSAGE_BYTES, NONNEG, NS, POSITIVE, TEXT, TEXT_LIST, Feed

FUTURE_TOLERANCE_NS = 60 * 1_000_000_000


@dataclass(frozen=True)
class RawMessage:
    """One message as tests and tools write it; a batch of them becomes a RawBatch."""

    payload: bytes
    message_id: str  # ledger:entry:batch_index
    ledger_id: int
    entry_id: int
    publish_time_ms: int = 0
    replay: bool = False  # part of a marked historical replay: exempt from the lateness bound


@dataclass
class RawBatch:
    """A micro-batch as columns (cheap to build from Pulsar messages: no object per message)."""

    payloads: list
    message_ids: list
    ledger_ids: list
    entry_ids: list
    publish_ms: list
    is_replay: Callable[[int], bool] = lambda i: False  # looked up lazily, only for late messages

    @classmethod
    def of(cls, msgs: list[RawMessage]) -> RawBatch:
        return cls(
            [m.payload for m in msgs],
            [m.message_id for m in msgs],
            [m.ledger_id for m in msgs],
            [m.entry_id for m in msgs],
            [m.publish_time_ms for m in msgs],
            lambda i: msgs[i].replay,
        )


@dataclass
class Decoded:
    table: pa.Table
    quarantine: list[dict] = field(default_factory=list)  # message_id, reason, payload, publish_time_ms
    duplicates: int = 0  # same message id seen twice in this batch

    def move_to_quarantine(self, raw: RawBatch, reasons: dict[str, str]) -> int:
        """Take the rows of these message ids out of the table into the quarantine, each with its reason."""
        if not reasons:
            return 0
        at = {mid: i for i, mid in enumerate(raw.message_ids) if mid in reasons}
        for mid, why in reasons.items():
            i = at[mid]
            self.quarantine.append(
                {"message_id": mid, "reason": why, "payload": raw.payloads[i], "publish_time_ms": raw.publish_ms[i]}
            )
        self.table = self.table.filter(
            pc.invert(pc.is_in(self.table["message_id"], pa.array(list(reasons), pa.string())))
        )
        return len(reasons)


def _check(kind: str, value) -> str | None:
    """Why `value` is not acceptable for a field of this kind, or None."""
    if kind in (POSITIVE, NONNEG):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {type(value).__name__}"
        if not math.isfinite(value) or value < 0 or (kind == POSITIVE and value == 0):
            return f"must be a finite number {'>' if kind == POSITIVE else '>='} 0, got {value!r}"
    elif kind == TEXT:
        if not isinstance(value, str) or not value.strip():
            return "expected a non-empty string"
    elif kind == TEXT_LIST:
        if not _text_list(value):
            return "expected a non-empty list of non-empty strings"
    elif isinstance(kind, tuple):
        if value not in kind:
            return f"expected one of {sorted(kind)}, got {value!r}"
    elif kind == COUNT:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**63:
            return "expected an integer >= 0"
    elif kind == NS:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value >= 2**63:
            return "expected a positive int64 of UTC nanoseconds"
    return None


def validate(
    feed: Feed, payload: bytes, ref_ns: int, lateness_ns: int, is_replay: Callable[[], bool] = lambda: False
) -> tuple[dict | None, str | None]:
    """(record, None) for a valid message, (None, reason) otherwise. Event times are judged against `ref_ns`, the
    broker's publish time of the message (`reference_times`): not the worker's clock, which may be off, and not
    the time of consumption, which an outage delays."""
    if len(payload) > MAX_MESSAGE_BYTES:
        return None, f"too_large: {len(payload)} bytes > {MAX_MESSAGE_BYTES}"
    try:
        rec = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        return None, f"invalid_json: {e}"
    if not isinstance(rec, dict):
        return None, f"invalid_json: expected an object, got {type(rec).__name__}"
    version = rec.get("schema_version")
    if type(version) is not int or not 1 <= version <= feed.version:  # 1.0, "1", true are not version 1
        return None, f"unknown_schema_version: {version!r}"
    checks = [(n, kind) for n, _, _, _, kind in feed.fields] + [("ts_event", NS), ("ts_init", NS)]
    for name, kind in checks:
        if name in feed.optional and rec.get(name) is None:  # a field a later version added: absent is null
            rec[name] = None
            continue
        if name not in rec:
            return None, f"missing_field: {name}"
        why = _check(kind, rec[name])
        if why:
            return None, f"bad_value: {name} {why}"
    ts = rec["ts_event"]
    if ts > ref_ns + FUTURE_TOLERANCE_NS:
        return None, f"future_ts_event: {(ts - ref_ns) / 1e9:.1f}s after its publish time"
    if ts < ref_ns - lateness_ns and not is_replay():
        return None, (
            f"too_late: published {(ref_ns - ts) / 1e9:.0f}s after its event, lateness bound {lateness_ns / 1e9:.0f}s"
        )
    if feed.bid_ask and float(rec[feed.bid_ask[0]]) > float(rec[feed.bid_ask[1]]):  # as stored (float64)
        return None, f"crossed_quote: {feed.bid_ask[0]} > {feed.bid_ask[1]}"
    if feed.book and not book_deltas_ok(*(np.array([rec[n]]) for n in BOOK_FIELDS))[0]:
        return None, f"bad_value: {BOOK_RULE}"
    return rec, None


BOOK_FIELDS = ("action", "side", "price", "size")
BOOK_RULE = (
    "an ADD or UPDATE needs side BUY or SELL, price > 0 and size > 0; a DELETE side BUY or SELL and price > 0; "
    "a CLEAR side NO_ORDER_SIDE"
)


def book_deltas_ok(action: np.ndarray, side: np.ndarray, price: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Where an order-book delta's fields fit its action (NautilusTrader's OrderBookDelta), field kinds aside."""
    bid_or_ask = (side == "BUY") | (side == "SELL")
    return np.where(
        action == "CLEAR",
        side == "NO_ORDER_SIDE",
        bid_or_ask & (price > 0) & ((action == "DELETE") | (size > 0)),
    )


_NUM = (int, float)


def _text_list(value) -> bool:
    return type(value) is list and bool(value) and all(type(v) is str and v.strip() for v in value)


def reference_times(publish_ms: list, now_ns: int) -> np.ndarray:
    """Each message's publish time in ns (the broker's clock); now_ns where a message has none (tools, tests)."""
    ms = np.asarray(publish_ms, dtype=np.int64)
    return np.where(ms > 0, ms * 1_000_000, now_ns)


def _kind_mask(kind, col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """Where a column's values are of their field's kind (`_check`, column-wise); None sends the batch the
    record-by-record way (a list with an empty or null element)."""
    if kind in (POSITIVE, NONNEG):
        return pc.and_(pc.is_finite(col), (pc.greater if kind == POSITIVE else pc.greater_equal)(col, 0))
    if kind == TEXT:
        return pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)
    if kind == TEXT_LIST:
        items = pc.list_flatten(col)
        if items.null_count or not pc.all(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(items)), 0)).as_py():
            return None
        return pc.greater(pc.list_value_length(col), 0)
    if isinstance(kind, tuple):
        return pc.is_in(col, pa.array(kind))
    if kind == COUNT:
        return pc.greater_equal(col, 0)
    return pc.is_valid(col)  # no kind (a derived table's field): anything present


def _fast_path(feed: Feed, payloads: list[bytes], ref_ns: np.ndarray, lateness_ns: int) -> pa.Table | None:
    """The whole batch parsed by Arrow's JSON reader and checked column-wise, when every message is valid;
    None as soon as anything is off (the record-by-record path then finds and names each problem)."""
    # Arrow reads one row per JSON object, not per line: a payload holding two objects (or none) would shift
    # every later row onto the wrong message id. Only payloads that start with "{" (so at least one object)
    # and hold no newline take this path; with the row count equal to the payload count, each gave one row.
    if not payloads or any(len(p) > MAX_MESSAGE_BYTES or p[:1] != b"{" or b"\n" in p for p in payloads):
        return None
    schema = pa.schema(
        [("schema_version", pa.int64())]
        + [(n, t) for n, t, *_ in feed.fields]
        + [("ts_event", pa.int64()), ("ts_init", pa.int64())]
    )
    try:
        t = pj.read_json(
            io.BytesIO(b"\n".join(payloads)),
            read_options=pj.ReadOptions(block_size=1 << 26),
            parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if t.num_rows != len(payloads) or any(t[c].null_count for c in t.column_names if c not in feed.optional):
        return None
    ok = pc.and_(pc.greater_equal(t["schema_version"], 1), pc.less_equal(t["schema_version"], feed.version))
    for name, _, _, _, kind in feed.fields:
        good = _kind_mask(kind, t[name])
        if good is None:
            return None
        # a field a later version added is null where a message lacks it (and_kleene: null and true is null)
        ok = pc.and_(ok, pc.or_kleene(pc.is_null(t[name]), good) if name in feed.optional else good)
    for name in ("ts_event", "ts_init"):
        ok = pc.and_(ok, pc.greater(t[name], 0))
    ok = pc.and_(ok, pc.less_equal(t["ts_event"], pa.array(ref_ns + FUTURE_TOLERANCE_NS)))
    ok = pc.and_(ok, pc.greater_equal(t["ts_event"], pa.array(ref_ns - lateness_ns)))
    if feed.bid_ask:
        ok = pc.and_(ok, pc.less_equal(t[feed.bid_ask[0]], t[feed.bid_ask[1]]))
    if feed.book:
        ok = pc.and_(ok, pa.array(book_deltas_ok(*(t[n].to_numpy(zero_copy_only=False) for n in BOOK_FIELDS))))
    if not pc.all(ok).as_py():
        return None
    if (
        feed.unique_key
        and pc.count_distinct(
            pc.binary_join_element_wise(*(t[k].cast(pa.string()) for k in feed.unique_key), "\x00")
        ).as_py()
        != t.num_rows
    ):
        return None
    return t


def _screen(feed: Feed, recs: list[dict], ref_ns: np.ndarray, lateness_ns: int) -> np.ndarray:
    """Vectorised fast path: True where a record certainly passes `validate` (which stays the authority and
    names the reason for everything else). Field by field over the batch instead of record by record."""
    n = len(recs)
    ok = np.fromiter(
        (
            type(r) is dict and type(r.get("schema_version")) is int and 1 <= r["schema_version"] <= feed.version
            for r in recs
        ),
        bool,
        n,
    )
    for name, _, _, _, kind in feed.fields:
        vals = [r.get(name) if type(r) is dict else None for r in recs]
        if name in feed.optional:  # validate() fills in an absent one and checks a present one
            ok &= np.fromiter((v is None for v in vals), bool, n)
            continue
        if kind in (POSITIVE, NONNEG):
            x = np.fromiter((v if type(v) in _NUM else -1.0 for v in vals), float, n)
            ok &= np.isfinite(x) & ((x > 0) if kind == POSITIVE else (x >= 0))
        elif kind == TEXT:
            ok &= np.fromiter((type(v) is str and bool(v.strip()) for v in vals), bool, n)
        elif kind == TEXT_LIST:
            ok &= np.fromiter((_text_list(v) for v in vals), bool, n)
        elif isinstance(kind, tuple):
            ok &= np.fromiter((type(v) is str and v in kind for v in vals), bool, n)
        elif kind == COUNT:
            ok &= np.fromiter((type(v) is int and 0 <= v < 2**63 for v in vals), bool, n)
    ts = {}
    for name in ("ts_event", "ts_init"):
        vals = [r.get(name) if type(r) is dict else None for r in recs]
        good = np.fromiter((type(v) is int and 0 < v < 2**63 for v in vals), bool, n)
        ts[name] = np.fromiter((v if g else 0 for v, g in zip(vals, good)), np.int64, n)
        ok &= good
    ok &= (ts["ts_event"] <= ref_ns + FUTURE_TOLERANCE_NS) & (ts["ts_event"] >= ref_ns - lateness_ns)
    if feed.bid_ask:
        bid, ask = (
            np.fromiter((r.get(name, 0) if ok[i] else 0 for i, r in enumerate(recs)), float, n) for name in feed.bid_ask
        )
        ok &= bid <= ask
    if feed.book:  # the field checks above passed where ok: their values are safe to compare
        action, side, price, size = (
            np.array([r[name] if ok[i] else "" for i, r in enumerate(recs)], dtype=object)
            if name in ("action", "side")
            else np.fromiter((r[name] if ok[i] else 0 for i, r in enumerate(recs)), float, n)
            for name in BOOK_FIELDS
        )
        ok &= book_deltas_ok(action, side, price, size)
    return ok


def decode(
    feed: Feed, raw: RawBatch | list[RawMessage], topic: str, batch_id: str, now_ns: int, lateness_ns: int
) -> Decoded:
    """Validated rows of one micro-batch as an Arrow table in `feed.arrow_schema`, plus quarantine rows.
    now_ns stamps `ingested_at`; event times are judged against each message's publish time (`validate`)."""
    raw = raw if isinstance(raw, RawBatch) else RawBatch.of(raw)
    out = Decoded(table=feed.arrow_schema.empty_table())
    first = {}
    for i, mid in enumerate(raw.message_ids):
        first.setdefault(mid, i)
    idx = list(first.values())  # first occurrence of each message id, in order
    out.duplicates = len(raw.message_ids) - len(idx)
    ref = reference_times([raw.publish_ms[i] for i in idx], now_ns)
    fast_table = _fast_path(feed, [raw.payloads[i] for i in idx], ref, lateness_ns)
    if fast_table is not None:
        out.table = build_table(
            feed,
            {name: fast_table[name] for name, *_ in feed.fields},
            ts_event=fast_table["ts_event"],
            ts_init=fast_table["ts_init"],
            topic=topic,
            batch_id=batch_id,
            now_ns=now_ns,
            message_id=pa.array([raw.message_ids[i] for i in idx], pa.string()),
            ledger_id=pa.array([raw.ledger_ids[i] for i in idx], pa.int64()),
            entry_id=pa.array([raw.entry_ids[i] for i in idx], pa.int64()),
            schema_version=fast_table["schema_version"],
        )
        return out
    recs = []
    for i in idx:
        p = raw.payloads[i]
        try:
            recs.append(orjson.loads(p) if len(p) <= MAX_MESSAGE_BYTES else None)
        except orjson.JSONDecodeError:
            recs.append(None)
    fast = _screen(feed, recs, ref, lateness_ns)
    keep: list[int] = []
    seen_keys: set = set()
    for k, i in enumerate(idx):
        rec, why = recs[k], None
        if not fast[k]:
            rec, why = validate(feed, raw.payloads[i], int(ref[k]), lateness_ns, lambda i=i: raw.is_replay(i))
            recs[k] = rec
        if rec is not None and feed.unique_key:
            key = tuple(rec[k] for k in feed.unique_key)
            if key in seen_keys:
                rec, why = None, f"{duplicate_key(feed, key)} already used in this batch"
            seen_keys.add(key)
        if rec is None:
            out.quarantine.append(
                {
                    "message_id": raw.message_ids[i],
                    "reason": why,
                    "payload": raw.payloads[i],
                    "publish_time_ms": raw.publish_ms[i],
                }
            )
        else:
            keep.append(k)
    if not keep:
        return out
    rows = [recs[k] for k in keep]
    pos = [idx[k] for k in keep]
    # floats via float(): an integer price such as 2**53 + 1 is valid, but pa.array refuses it for float64
    cols = {
        name: pa.array(
            [None if r.get(name) is None else float(r[name]) for r in rows]
            if typ == pa.float64()
            else [r.get(name) for r in rows],
            typ,
        )
        for name, typ, *_ in feed.fields
    }
    out.table = build_table(
        feed,
        cols,
        ts_event=pa.array([r["ts_event"] for r in rows], pa.int64()),
        ts_init=pa.array([r["ts_init"] for r in rows], pa.int64()),
        topic=topic,
        batch_id=batch_id,
        now_ns=now_ns,
        message_id=pa.array([raw.message_ids[i] for i in pos], pa.string()),
        ledger_id=pa.array([raw.ledger_ids[i] for i in pos], pa.int64()),
        entry_id=pa.array([raw.entry_ids[i] for i in pos], pa.int64()),
        schema_version=[r["schema_version"] for r in rows],
    )
    return out


def build_table(
    feed: Feed,
    fields: dict,
    *,
    ts_event,
    ts_init,
    topic: str,
    batch_id: str,
    now_ns: int,
    message_id,
    ledger_id,
    entry_id,
    schema_version=None,
) -> pa.Table:
    """A stored table: the feed's fields plus derived timestamps and provenance, in `feed.arrow_schema`. A field a
    later version added that `fields` lacks is null; `schema_version`: each message's (default 1)."""
    n = len(ts_event)
    fields = {**{name: pa.nulls(n, typ) for name, typ, *_ in feed.fields if name in feed.optional}, **fields}
    ts = (
        pa.array(ts_event, pa.int64()).cast(pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("us", tz="UTC"), safe=False)
    )
    data = {
        **fields,
        "ts_event": ts_event,
        "ts_init": ts_init,
        "ts": ts,
        "date": ts.cast(pa.date32()),
        "ingested_at": pa.array([now_ns // 1000] * n, pa.timestamp("us", tz="UTC")),
        "topic": pa.array([topic] * n, pa.string()),
        "message_id": message_id,
        "ledger_id": ledger_id,
        "entry_id": entry_id,
        "batch_id": pa.array([batch_id] * n, pa.string()),
        "schema_version": pa.array([1] * n, pa.int32())
        if schema_version is None
        else pa.array(schema_version, pa.int64()).cast(pa.int32()),
    }
    return pa.table(data, schema=feed.arrow_schema)


def duplicate_key(feed: Feed, key: tuple) -> str:
    """A reused key's reason, named by the key's last field (trades: "duplicate_trade_id: T-1")."""
    return f"duplicate_{feed.unique_key[-1]}: {key[-1]}"


def reject_reused_keys(feed: Feed, dec: Decoded, raw: RawBatch, stored: dict) -> int:
    """Move to quarantine the decoded rows whose unique key (trades: instrument, trade id) is already stored under
    another message id (`stored`: key -> message ids holding it). A redelivery (same message id) stays: the sinks
    de-duplicate it. Returns how many were moved."""
    if not stored or dec.table.num_rows == 0:
        return 0
    keys = zip(*(dec.table[k].to_pylist() for k in feed.unique_key))
    return dec.move_to_quarantine(
        raw,
        {
            mid: f"{duplicate_key(feed, key)} already stored as message {min(stored[key])}"
            for key, mid in zip(keys, dec.table["message_id"].to_pylist())
            if key in stored and mid not in stored[key]
        },
    )
