"""Decoding and validation: every kind of bad message is quarantined with its reason; the rest pass."""

import math
import time

import orjson
import pyarrow as pa
import pytest

from nautilus_assets.market_data.decode import RawMessage, decode
from nautilus_assets.market_data.schema import NEWS, ORDERBOOK_DELTAS, QUOTES, TRADES

NOW = time.time_ns()
WEEK = 7 * 86400 * 10**9


def trade(**over):
    rec = {
        "schema_version": 1,
        "instrument_id": "AAPL.XNAS",
        "price": 230.5,
        "size": 100.0,
        "aggressor_side": "BUYER",
        "trade_id": "T1",
        "ts_event": NOW - 10**9,
        "ts_init": NOW - 10**9 + 5000,
    }
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not ...}


def msg(payload, i=0, replay=False):
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return RawMessage(data, f"0:{i}:0", 0, i, replay=replay)


def run(*msgs, feed=TRADES):
    return decode(feed, list(msgs), feed.topic, "b1", NOW, WEEK)


def test_valid_trade_becomes_a_row_with_provenance():
    d = run(msg(trade()))
    assert d.quarantine == [] and d.table.num_rows == 1
    row = d.table.to_pylist()[0]
    assert row["price"] == 230.5 and row["message_id"] == "0:0:0" and row["batch_id"] == "b1"
    assert row["topic"] == TRADES.topic and row["ts_event"] == NOW - 10**9
    # µs in the table (ns truncated) and a float of ~1.8e9 s: allow a µs plus rounding
    assert row["ts"].timestamp() == pytest.approx((NOW - 10**9) / 1e9, abs=2e-6)
    assert row["date"] == row["ts"].date()


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"\xff\xfe not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'{"schema_version": 1, "price": NaN}', "invalid_json"),
        (trade(schema_version=3), "unknown_schema_version"),  # trades read versions 1 and 2
        (trade(schema_version=2, condition=""), "bad_value: condition"),
        (trade(schema_version=2, condition=7), "bad_value: condition"),
        (trade(schema_version=2, price=...), "missing_field: price"),  # a removed field stays refused
        (trade(schema_version=...), "unknown_schema_version"),
        (trade(price=...), "missing_field: price"),
        (trade(price="230.5"), "bad_value: price"),
        (trade(price=0), "bad_value: price"),
        (trade(price=-1.0), "bad_value: price"),
        (trade(size=0), "bad_value: size"),
        (trade(size=1e400), "bad_value: size"),
        (trade(size=True), "bad_value: size"),
        (trade(aggressor_side="UP"), "bad_value: aggressor_side"),
        (trade(trade_id=""), "bad_value: trade_id"),
        (trade(ts_event=1.5e18), "bad_value: ts_event"),
        (trade(ts_event=NOW + 120 * 10**9), "future_ts_event"),
        (trade(ts_event=NOW - WEEK - 10**9), "too_late"),
        (b"{" + b" " * (64 * 1024) + b"}", "too_large"),
    ],
)
def test_bad_messages_are_quarantined_with_a_reason(payload, reason):
    d = run(msg(payload), msg(trade(trade_id="ok"), i=1))
    assert d.table.num_rows == 1 and d.table["trade_id"][0].as_py() == "ok"  # the rest of the batch proceeds
    assert len(d.quarantine) == 1
    assert d.quarantine[0]["reason"].startswith(reason), d.quarantine[0]["reason"]
    assert d.quarantine[0]["message_id"] == "0:0:0" and d.quarantine[0]["payload"]  # raw payload kept


def test_historical_replay_is_exempt_from_the_lateness_bound():
    old = trade(ts_event=NOW - 30 * 86400 * 10**9)
    assert run(msg(old, replay=True)).table.num_rows == 1
    assert run(msg(old)).quarantine[0]["reason"].startswith("too_late")


def test_event_times_are_judged_against_the_publish_time_not_the_worker_clock():
    """issue 13 item 1: a worker clock 61 s slow (or 8 days fast) and an outage longer than the lateness bound
    quarantine nothing; a message published long after its event is still too late, and one stamped more than the
    tolerance after its publish time is in the future, whatever the worker's clock says."""
    pub_ms = NOW // 10**6

    def at(rec, publish_ms, i=0):
        return RawMessage(orjson.dumps(rec), f"0:{i}:0", 0, i, publish_time_ms=publish_ms)

    fresh = trade(ts_event=pub_ms * 10**6 - 10**6)
    for worker_now in (NOW - 61 * 10**9, NOW + WEEK + 86400 * 10**9):
        d = decode(TRADES, [at(fresh, pub_ms)], TRADES.topic, "b", worker_now, WEEK)
        assert d.quarantine == [] and d.table.num_rows == 1, worker_now
    backlog_ms = pub_ms - 9 * 86400 * 1000  # published 9 days ago, consumed now (an outage)
    old = [at(trade(trade_id=f"o{i}", ts_event=backlog_ms * 10**6 - i), backlog_ms, i) for i in range(3)]
    d = decode(TRADES, old, TRADES.topic, "b", NOW, WEEK)
    assert d.quarantine == [] and d.table.num_rows == 3
    late = decode(TRADES, [at(trade(ts_event=pub_ms * 10**6 - WEEK - 10**9), pub_ms)], TRADES.topic, "b", NOW, WEEK)
    assert late.quarantine[0]["reason"].startswith("too_late: published")
    ahead = decode(
        TRADES, [at(trade(ts_event=pub_ms * 10**6 + 61 * 10**9), pub_ms)], TRADES.topic, "b", NOW + 3600 * 10**9, WEEK
    )
    assert ahead.quarantine[0]["reason"].startswith("future_ts_event")


def test_redelivered_message_is_counted_not_duplicated():
    d = run(msg(trade()), msg(trade()))
    assert d.table.num_rows == 1 and d.duplicates == 1 and d.quarantine == []


def test_new_message_reusing_a_trade_id_is_quarantined():
    d = run(msg(trade(trade_id="X")), msg(trade(trade_id="X"), i=1))
    assert d.table.num_rows == 1 and d.quarantine[0]["reason"].startswith("duplicate_trade_id")


def test_quotes_validation():
    q = {
        "schema_version": 1,
        "instrument_id": "AAPL.XNAS",
        "bid_price": 10.0,
        "ask_price": 10.01,
        "bid_size": 5.0,
        "ask_size": 7.0,
        "ts_event": NOW,
        "ts_init": NOW,
    }
    d = run(msg(q), msg({**q, "bid_price": 10.02}, i=1), msg({**q, "ask_size": -1}, i=2), feed=QUOTES)
    assert d.table.num_rows == 1 and math.isclose(d.table["ask_price"][0].as_py(), 10.01)
    assert [r["reason"].split(":")[0] for r in d.quarantine] == ["crossed_quote", "bad_value"]


def book_delta(**over):
    rec = {
        "schema_version": 1,
        "instrument_id": "AAPL.XNAS",
        "action": "ADD",
        "side": "BUY",
        "price": 230.5,
        "size": 100.0,
        "order_id": 0,
        "flags": 16,
        "sequence": 7,
        "ts_event": NOW,
        "ts_init": NOW,
    }
    return {**rec, **over}


@pytest.mark.parametrize("fast", [True, False])  # the batch's Arrow path, and the record-by-record one
def test_order_book_deltas_follow_their_action(fast):
    good = [
        book_delta(),
        book_delta(action="UPDATE", sequence=8),
        book_delta(action="DELETE", size=0.0, sequence=9),
        book_delta(action="CLEAR", side="NO_ORDER_SIDE", price=0, size=0, flags=48, sequence=10),
    ]
    bad = [
        (book_delta(action="ADD", size=0.0, sequence=11), "bad_value: an ADD or UPDATE needs"),
        (book_delta(action="DELETE", side="NO_ORDER_SIDE", sequence=12), "bad_value: an ADD or UPDATE needs"),
        (book_delta(action="CLEAR", sequence=13), "bad_value: an ADD or UPDATE needs"),
        (book_delta(action="MODIFY", sequence=14), "bad_value: action expected one of"),
        (book_delta(sequence=-1), "bad_value: sequence expected an integer >= 0"),
        (book_delta(flags=1.5, sequence=15), "bad_value: flags expected an integer >= 0"),
        (book_delta(sequence=8), "duplicate_sequence: 8 already used in this batch"),
    ]
    msgs = [msg(r, i) for i, r in enumerate(good if fast else good + [r for r, _ in bad])]
    d = run(*msgs, feed=ORDERBOOK_DELTAS)
    assert d.table["sequence"].to_pylist() == [7, 8, 9, 10] and d.table["flags"].type == pa.int32()
    assert len(d.quarantine) == (0 if fast else len(bad))
    assert all(q["reason"].startswith(r) for q, (_, r) in zip(d.quarantine, bad))


@pytest.mark.parametrize("fast", [True, False])
def test_news_items_need_instruments(fast):
    item = {
        "schema_version": 1,
        "news_id": "N1",
        "headline": "AAPL beats estimates",
        "instruments": ["AAPL.XNAS"],
        "source": "Reuters",
        "ts_event": NOW,
        "ts_init": NOW,
    }
    good = [item, {**item, "news_id": "N2", "instruments": ["AAPL.XNAS", "SPY.ARCX"]}]
    bad = [
        ({**item, "news_id": "N3", "instruments": []}, "bad_value: instruments expected a non-empty list"),
        ({**item, "news_id": "N4", "instruments": ["AAPL.XNAS", " "]}, "bad_value: instruments expected a non-empty"),
        ({**item, "news_id": "N5", "instruments": "AAPL.XNAS"}, "bad_value: instruments expected a non-empty list"),
        ({**item, "headline": "again"}, "duplicate_news_id: N1 already used in this batch"),
    ]
    d = run(*[msg(r, i) for i, r in enumerate(good if fast else good + [r for r, _ in bad])], feed=NEWS)
    assert d.table["instruments"].to_pylist() == [["AAPL.XNAS"], ["AAPL.XNAS", "SPY.ARCX"]]
    assert len(d.quarantine) == (0 if fast else len(bad))
    assert all(q["reason"].startswith(r) for q, (_, r) in zip(d.quarantine, bad))


@pytest.mark.parametrize("fast", [True, False])
def test_version_1_and_2_trades_are_read_together(fast):
    """Item 5: version 2 adds an optional `condition`; version 1 messages (without it) keep coming. Both are rows,
    each with its own schema_version; a version 1 row's condition is null. Nothing is quarantined."""
    msgs = [
        msg(trade(trade_id="a")),
        msg(trade(trade_id="b", schema_version=2, condition="ODD_LOT"), 1),
        msg(trade(trade_id="c", schema_version=2), 2),  # version 2 without the optional field
        msg(trade(trade_id="d", schema_version=2, condition=None), 3),
    ]
    if not fast:  # one bad message sends the batch the record-by-record way
        msgs.append(msg(b"not json", 4))
    d = run(*msgs)
    assert d.table["trade_id"].to_pylist() == ["a", "b", "c", "d"]
    assert d.table["condition"].to_pylist() == [None, "ODD_LOT", None, None]
    assert d.table["schema_version"].to_pylist() == [1, 2, 2, 2]
    assert len(d.quarantine) == (0 if fast else 1)
