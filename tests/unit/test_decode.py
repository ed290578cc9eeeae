"""Decoding and validation: every kind of bad message is quarantined with its reason; the rest pass."""

import math
import time

import orjson
import pytest

from nautilus_assets.market_data.decode import RawMessage, decode
from nautilus_assets.market_data.schema import QUOTES, TRADES

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
        (trade(schema_version=2), "unknown_schema_version"),
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
