"""Bar building by hand, late trades, and the simulator's replay and history modes."""

import time
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pytest

from nautilus_assets.market_data import sinks
from nautilus_assets.market_data.decode import build_table
from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.market_data.simulator import MarketSimulator
from resources import schemas
from scripts.history import write_history
from scripts.publisher import replay
from tests.helpers import assert_bars_equal, batch, counts, reference_bars, reset_state, stored_bars

MIN = 60 * 10**9


def _trade(i, price, size, side, ts):
    return {
        "schema_version": 1,
        "instrument_id": "AAPL.XNAS",
        "price": price,
        "size": size,
        "aggressor_side": side,
        "trade_id": f"h-{i}",
        "ts_event": ts,
        "ts_init": ts + 1,
    }


def _publish_raw(res, recs):
    with res["pulsar"].client() as client:
        p = schemas.create_producer(client, TRADES.topic)
        for r in recs:
            p.send(orjson.dumps(r))
        p.close()


def test_bars_by_hand_and_late_trades_recompute_their_minute(clean):
    res = clean
    m0 = (time.time_ns() // MIN - 3) * MIN  # a whole minute, three minutes ago
    _publish_raw(
        res,
        [
            _trade(1, 10.0, 100, "BUYER", m0 + 1),
            _trade(2, 12.0, 50, "SELLER", m0 + 2),
            _trade(3, 9.0, 50, "BUYER", m0 + 3),
            _trade(4, 11.0, 100, "SELLER", m0 + MIN + 1),
        ],
    )
    assert batch(res, TRADES, "b-hand").valid == 4
    bars = stored_bars(res["clickhouse"])
    first = bars.iloc[0]
    assert (first.open, first.high, first.low, first.close) == (10.0, 12.0, 9.0, 9.0)
    assert first.volume == 200 and first.trade_count == 3 and (first.buy_volume, first.sell_volume) == (150, 50)
    assert abs(first.vwap - (10 * 100 + 12 * 50 + 9 * 50) / 200) < 1e-12
    # a late trade for the first minute, earlier than all others: it becomes the open, and the bar is recomputed
    _publish_raw(res, [_trade(5, 20.0, 200, "BUYER", m0)])
    assert batch(res, TRADES, "b-late").valid == 1
    bars = stored_bars(res["clickhouse"])
    assert len(bars) == 2 and bars.iloc[0].open == 20.0 and bars.iloc[0].high == 20.0 and bars.iloc[0].volume == 400
    assert bars.iloc[1].volume == 100  # the other minute is untouched


def test_replay_of_a_csv_file_is_ingested_despite_its_age(clean, tmp_path):
    res = clean
    old = time.time_ns() - 30 * 86400 * 10**9  # a month old: beyond the 7-day lateness bound
    trades, quotes = MarketSimulator(["MSFT.XNAS"], seed=5, start_ns=old).take(300, 200)
    path = tmp_path / "ticks.csv"
    pcsv.write_csv(
        pa.concat_tables(
            [
                trades.append_column("type", pa.array(["trade"] * 300)),
                quotes.append_column("type", pa.array(["quote"] * 200)),
            ],
            promote_options="permissive",
        ),
        path,
    )
    sent = replay(res["pulsar"], path)  # per feed of the publisher: the others sent nothing
    assert {k: n for k, n in sent.items() if n} == {"trades": 300, "quotes": 200}
    out = batch(res, TRADES, "b-replay")
    assert out.valid == 300 and out.quarantined == 0
    assert_bars_equal(stored_bars(res["clickhouse"]), reference_bars(trades))


def test_history_mode_writes_past_days_into_the_lake_idempotently(clean):
    res = clean
    end = datetime.now(UTC).date()
    totals = write_history(res["lake"], ["AAPL.XNAS", "SPY.ARCX"], days=3, events_per_day=4000)
    assert totals["trades"] > 0 and totals["quotes"] > 0
    dt = res["lake"].table(sinks.bronze_table(TRADES))
    dates = set(dt.to_pyarrow_table(columns=["date"])["date"].to_pylist())
    assert dates == {end - timedelta(days=k) for k in (1, 2, 3)}
    again = write_history(res["lake"], ["AAPL.XNAS", "SPY.ARCX"], days=3, events_per_day=4000)
    assert again == {"trades": 0, "quotes": 0, "fills": 0}
    assert counts(res, TRADES)[1] == totals["trades"]


def _bronze(res, feed):
    dt = res["lake"].table(sinks.bronze_table(feed))
    cols = [n for n, *_ in feed.fields] + ["ts_event", "ts_init", "message_id", "batch_id", "date"]
    return dt.to_pyarrow_table(columns=cols).sort_by([("message_id", "ascending")]), dt.version()


def test_history_run_again_on_a_later_day_extends_it_without_rewriting(clean):
    """issue 13 item 2: `scripts/run` on a later day adds the days since, continuing the same simulated path; the
    stored days are neither rewritten nor doubled, a day holding live ticks is left alone, and another market under
    the same ids is refused."""
    res, instr = clean, ["AAPL.XNAS", "SPY.ARCX"]
    end = datetime.now(UTC).date()
    write_history(res["lake"], instr, days=3, events_per_day=3000, end=end - timedelta(days=2))
    before, _ = _bronze(res, TRADES)
    live = build_table(
        TRADES,
        {
            "instrument_id": pa.array(["AAPL.XNAS"]),
            "price": pa.array([1.0]),
            "size": pa.array([1.0]),
            "aggressor_side": pa.array(["BUYER"]),
            "trade_id": pa.array(["live-1"]),
        },
        ts_event=pa.array([_ns(end - timedelta(days=1)) + 3600 * 10**9]),
        ts_init=pa.array([_ns(end - timedelta(days=1)) + 3600 * 10**9]),
        topic=TRADES.topic,
        batch_id="live",
        now_ns=time.time_ns(),
        message_id=pa.array(["9:1:0"]),
        ledger_id=pa.array([9]),
        entry_id=pa.array([1]),
    )
    sinks.write_delta(res["lake"], TRADES, live, "live")  # yesterday already has live ticks
    later = write_history(res["lake"], instr, days=3, events_per_day=3000, end=end)  # two days later, same days=3
    after, _ = _bronze(res, TRADES)
    days_after = pc.unique(after["date"]).to_pylist()
    assert sorted(days_after) == [end - timedelta(days=k) for k in (5, 4, 3, 2, 1)]  # extended from the same start
    old_part = after.filter(pc.is_in(after["message_id"], before["message_id"]))
    assert old_part.equals(before)  # the stored days untouched, nothing doubled
    assert after.filter(pc.equal(after["date"], end - timedelta(days=1)))["batch_id"].to_pylist() == ["live"]
    added = after.num_rows - before.num_rows - 1
    assert later["trades"] == added > 0  # only the day before yesterday was new

    # the same path as one run over all five days would have written
    reset_state(res)
    write_history(res["lake"], instr, days=5, events_per_day=3000, end=end)
    whole, _ = _bronze(res, TRADES)
    new_day = end - timedelta(days=2)
    assert (
        after.filter(pc.equal(after["date"], new_day))
        .drop_columns(["batch_id"])
        .equals(whole.filter(pc.equal(whole["date"], new_day)).drop_columns(["batch_id"]))
    )
    with pytest.raises(ValueError, match="stored history was simulated with"):
        write_history(res["lake"], instr, days=5, events_per_day=3000, end=end, model="gaussian")


def _ns(day) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**9
