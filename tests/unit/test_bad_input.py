"""Property-based bad input (hypothesis) through the real decode path.

Mixed batches of valid and invalid messages, in any order: every invalid one is quarantined with its reason,
every valid one becomes exactly one row with its values, redeliveries (same message id) are counted and
dropped, and decoding never raises. A model written here, independent of decode.py, says what each message is.
"""

import json
import math
import time

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nautilus_assets.market_data.decode import FUTURE_TOLERANCE_NS, RawMessage, decode
from nautilus_assets.market_data.schema import MAX_MESSAGE_BYTES, QUOTES, TRADES

NOW = time.time_ns() // 10**6 * 10**6  # a whole millisecond: messages carry it as their publish time
LATENESS = 7 * 86400 * 10**9
SIDES = ["BUYER", "SELLER", "NO_AGGRESSOR"]
NUMERIC = {"price", "size"}
TEXT = {"instrument_id", "trade_id"}
NS = {"ts_event", "ts_init"}
TRADE_FIELDS = ["schema_version", "instrument_id", "price", "size", "aggressor_side", "trade_id", "ts_event", "ts_init"]
SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# Text with at least one character that is not whitespace for Python (the validator's definition).
nonblank = st.text(min_size=1, max_size=12).filter(lambda s: s.strip())
blank = st.text(
    alphabet=" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000", max_size=4
)
positive = st.one_of(
    st.floats(min_value=0, exclude_min=True, allow_infinity=False, allow_nan=False), st.integers(1, 10**25)
)
nonpositive = st.one_of(st.floats(max_value=0, allow_infinity=False, allow_nan=False), st.integers(-(10**18), 0))
valid_ts = st.integers(NOW - LATENESS, NOW + FUTURE_TOLERANCE_NS)
wrong_for = {
    "numeric": st.one_of(
        st.text(max_size=8),
        st.none(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ),
    "text": st.one_of(
        blank,
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.none(),
        st.booleans(),
        st.lists(st.text(max_size=3), max_size=2),
    ),
    "side": st.one_of(
        st.text(max_size=12).filter(lambda s: s not in SIDES),
        st.integers(),
        st.none(),
        st.sampled_from(["buyer", " BUYER", "BUYER "]),
    ),
    "ns": st.one_of(
        st.integers(-(2**63), 0),
        st.integers(2**63, 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        st.none(),
        st.booleans(),
    ),
}


def kind_of(field: str) -> str:
    return "numeric" if field in NUMERIC else "text" if field in TEXT else "ns" if field in NS else "side"


@st.composite
def valid_trade(draw, trade_id: str) -> dict:
    return {
        "schema_version": 1,
        "instrument_id": draw(st.sampled_from(["AAPL.XNAS", "SPY.ARCX"]) | nonblank),
        "price": draw(positive),
        "size": draw(positive),
        "aggressor_side": draw(st.sampled_from(SIDES)),
        "trade_id": trade_id,
        "ts_event": draw(valid_ts),
        "ts_init": draw(st.integers(1, 2**63 - 1)),
    }


def dumps(rec: dict) -> bytes:
    """JSON as any producer might write it (the standard library: integers of any size, non-ASCII as is)."""
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def not_json(b: bytes) -> bool:
    try:
        return not isinstance(orjson.loads(b), dict)
    except orjson.JSONDecodeError:
        return True


# Each spec: (payload, expected reason prefix or None for valid, record if valid, replay flag)
@st.composite
def message(draw, n: int, earlier_valid: list[dict]):
    """The n-th message of a batch: what it is, and what decoding must make of it."""
    kinds = [
        "valid",
        "valid",
        "valid",
        "not_json",
        "wrong_type",
        "missing",
        "schema",
        "nan",
        "nonpositive",
        "future",
        "late",
        "replay",
        "too_large",
        "blank_text",
    ]
    if earlier_valid:
        kinds += ["reuse", "redelivery"]
    kind = draw(st.sampled_from(kinds))
    rec = draw(valid_trade(f"t{n}-" + draw(st.text(max_size=4))))
    if kind == "valid":
        return dumps(rec), None, rec, False
    if kind == "not_json":
        payload = draw(
            st.binary(max_size=40).filter(not_json)
            | st.sampled_from(
                [
                    b"",
                    b"   ",
                    b"\xff\xfe{}",
                    b"[]",
                    b"null",
                    b"1",
                    b'"x"',
                    b"\xef\xbb\xbf" + dumps(rec),
                    dumps(rec) + b" " + dumps(rec),
                    dumps(rec)[:-1],
                    dumps(rec).replace(b'"price"', b"price"),
                ]
            )
        )
        return payload, "invalid_json", None, False
    if kind in ("wrong_type", "blank_text"):
        field = draw(st.sampled_from(TRADE_FIELDS[1:]) if kind == "wrong_type" else st.sampled_from(sorted(TEXT)))
        value = draw(wrong_for[kind_of(field)] if kind == "wrong_type" else blank)
        return dumps({**rec, field: value}), f"bad_value: {field}", None, False
    if kind == "missing":
        field = draw(st.sampled_from(TRADE_FIELDS))
        why = "unknown_schema_version" if field == "schema_version" else f"missing_field: {field}"
        return dumps({k: v for k, v in rec.items() if k != field}), why, None, False
    if kind == "schema":
        version = draw(
            st.one_of(
                st.integers().filter(lambda v: not 1 <= v <= TRADES.version),  # trades read versions 1 and 2
                st.just(1.0),
                st.just("1"),
                st.none(),
                st.booleans(),
                st.floats(allow_nan=False, allow_infinity=False),
            )
        )
        return dumps({**rec, "schema_version": version}), "unknown_schema_version", None, False
    if kind == "nan":
        field = draw(st.sampled_from(["price", "size"]))
        token = draw(st.sampled_from([b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400", b"nan", b"inf"]))
        payload = dumps({**rec, field: 12345.5}).replace(b"12345.5", token)
        return payload, "invalid_json", None, False
    if kind == "nonpositive":
        field = draw(st.sampled_from(["price", "size"]))
        return dumps({**rec, field: draw(nonpositive)}), f"bad_value: {field}", None, False
    if kind == "future":
        rec["ts_event"] = draw(st.integers(NOW + FUTURE_TOLERANCE_NS + 1, 2**63 - 1))
        return dumps(rec), "future_ts_event", None, False
    if kind in ("late", "replay"):
        rec["ts_event"] = draw(st.integers(1, NOW - LATENESS - 1))
        return (dumps(rec), None, rec, True) if kind == "replay" else (dumps(rec), "too_late", None, False)
    if kind == "too_large":
        pad = MAX_MESSAGE_BYTES + 1 - len(dumps({**rec, "pad": ""}))
        rec["pad"] = "x" * (pad + draw(st.integers(0, 1000)))
        return dumps(rec), "too_large", None, False
    original = draw(st.sampled_from(earlier_valid))
    if kind == "reuse":  # a new message (new id) reusing a stored trade id of the same instrument
        rec.update(instrument_id=original["rec"]["instrument_id"], trade_id=original["rec"]["trade_id"])
        return dumps(rec), "duplicate_trade_id", None, False
    return original, "redelivery", None, False


@st.composite
def batch(draw, max_size: int = 25):
    """[(RawMessage, expected reason or None, record or None)], in publication order."""
    out, valid = [], []
    for n in range(draw(st.integers(1, max_size))):
        payload, why, rec, replay = draw(message(n, valid))
        if why == "redelivery":
            out.append((payload["msg"], "redelivery", None))
            continue
        m = RawMessage(payload, f"7:{n}:0", 7, n, publish_time_ms=NOW // 10**6, replay=replay)
        out.append((m, why, rec))
        if rec is not None:
            valid.append({"msg": m, "rec": rec})
    return out


def check(feed, items, lateness=LATENESS):
    msgs = [m for m, _, _ in items]
    d = decode(feed, msgs, feed.topic, "b-prop", NOW, lateness)  # must never raise
    expected_rows = {m.message_id: rec for m, why, rec in items if why is None}
    expected_bad = {m.message_id: why for m, why, _ in items if why not in (None, "redelivery")}
    rows = {r["message_id"]: r for r in d.table.to_pylist()}
    bad = {q["message_id"]: q["reason"] for q in d.quarantine}
    assert set(rows) == set(expected_rows), (set(rows) ^ set(expected_rows), bad)
    assert set(bad) == set(expected_bad), set(bad) ^ set(expected_bad)
    for mid, why in expected_bad.items():
        assert bad[mid].startswith(why), (mid, bad[mid], why)
    assert d.duplicates == sum(why == "redelivery" for _, why, _ in items)
    assert d.table.num_rows + len(d.quarantine) + d.duplicates == len(msgs)
    for mid, rec in expected_rows.items():
        row = rows[mid]
        for name in rec:
            want = (
                float(rec[name])
                if name in NUMERIC or (feed is QUOTES and name.endswith(("price", "size")))
                else rec[name]
            )
            assert row[name] == want or (isinstance(want, float) and math.isclose(row[name], want, rel_tol=1e-15)), (
                mid,
                name,
                row[name],
                want,
            )
        assert row["batch_id"] == "b-prop" and row["topic"] == feed.topic
    for q in d.quarantine:
        assert q["payload"] == next(m.payload for m, _, _ in items if m.message_id == q["message_id"])
    return d


@SETTINGS
@given(batch())
def test_mixed_batches_quarantine_every_bad_message_and_keep_every_valid_one(items):
    check(TRADES, items)


@SETTINGS
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=40, unique=True), st.data())
def test_all_valid_batches_take_the_fast_path_and_lose_nothing(ids, data):
    """Batches with nothing wrong go through the Arrow fast path: values must match the record path's."""
    items = []
    for n, i in enumerate(ids):
        rec = data.draw(valid_trade(f"T{i}"))
        items.append((RawMessage(dumps(rec), f"3:{n}:0", 3, n), None, rec))
    check(TRADES, items)
    # One bad message added anywhere: the record path must produce the same rows for the valid ones.
    at = data.draw(st.integers(0, len(items)))
    bad = (RawMessage(b"\xff", "3:999999:0", 3, 999999), "invalid_json", None)
    check(TRADES, items[:at] + [bad] + items[at:])


@SETTINGS
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=30), st.data())
def test_arbitrary_bytes_never_crash_and_never_lose_a_valid_message(junk, data):
    """Any bytes at all (including several JSON objects in one message, or none) beside valid messages."""
    items = []
    for n, b in enumerate(junk):
        rec = data.draw(valid_trade(f"V{n}"))
        items.append((RawMessage(dumps(rec), f"5:{2 * n}:0", 5, 2 * n), None, rec))
        m = RawMessage(b, f"5:{2 * n + 1}:0", 5, 2 * n + 1)
        if not_json(b):
            items.append((m, "invalid_json", None))
        else:  # a JSON object: whatever it is, decoding it alone decides; it must not disturb the others
            alone = decode(TRADES, [m], TRADES.topic, "x", NOW, LATENESS)
            if alone.table.num_rows:
                continue
            items.append((m, alone.quarantine[0]["reason"].split(":")[0], None))
    check(TRADES, items)


@st.composite
def quote_msg(draw, n: int):
    q = {
        "schema_version": 1,
        "instrument_id": draw(nonblank),
        "bid_price": draw(positive),
        "ask_price": draw(positive),
        "bid_size": draw(positive),
        "ask_size": draw(positive),
        "ts_event": draw(valid_ts),
        "ts_init": draw(st.integers(1, 2**63 - 1)),
    }
    crossed = float(q["bid_price"]) > float(q["ask_price"])
    m = RawMessage(dumps(q), f"9:{n}:0", 9, n)
    return (m, "crossed_quote", None) if crossed else (m, None, q)


@SETTINGS
@given(st.integers(1, 30).flatmap(lambda k: st.tuples(*[quote_msg(n) for n in range(k)])))
def test_quotes_crossed_or_valid(items):
    check(QUOTES, list(items))
