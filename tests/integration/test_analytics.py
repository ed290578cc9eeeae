"""market_analytics: indicators computed batch by batch equal TA-Lib over the full bar history (1e-9 relative);
session VWAP equals Σ price·size / Σ size of the day's raw trades."""

import time

import dagster as dg
import numpy as np
import pandas as pd
import talib

from nautilus_assets.analytics import assets as analytics
from nautilus_assets.analytics.indicators import LOOKBACK_BARS
from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.market_data.simulator import MarketSimulator
from scripts.publisher import publish_tables
from tests.helpers import batch, reference_bars

REL = 1e-9


def full_history_reference(trades: pd.DataFrame) -> pd.DataFrame:
    """TA-Lib over each instrument's whole bar history, bars and VWAP from raw trades with pandas."""
    bars = reference_bars(pa_table(trades))
    out = []
    for inst, b in bars.groupby("instrument_id"):
        b = b.sort_values("minute").reset_index(drop=True)
        c, h, lo = b["close"].to_numpy(), b["high"].to_numpy(), b["low"].to_numpy()
        r = pd.DataFrame(
            {
                "instrument_id": inst,
                "minute": b["minute"],
                "sma_20": talib.SMA(c, 20),
                "ema_20": talib.EMA(c, 20),
                "rsi_14": talib.RSI(c, 14),
                "atr_14": talib.ATR(h, lo, c, 14),
            }
        )
        r["macd"], r["macd_signal"], r["macd_hist"] = talib.MACD(c, 12, 26, 9)
        r["bb_upper"], r["bb_middle"], r["bb_lower"] = talib.BBANDS(c, 20, 2.0, 2.0)
        out.append(r)
    ref = pd.concat(out)
    t = trades.assign(
        minute=pd.to_datetime(trades["ts_event"] // 60_000_000_000 * 60, unit="s"), pv=trades["price"] * trades["size"]
    ).sort_values("ts_event")
    t["day"] = t["minute"].dt.floor("D")
    per_min = t.groupby(["instrument_id", "day", "minute"])[["pv", "size"]].sum().reset_index()
    cum = per_min.groupby(["instrument_id", "day"])[["pv", "size"]].cumsum()
    per_min["session_vwap"] = cum["pv"] / cum["size"]
    return ref.merge(per_min[["instrument_id", "minute", "session_vwap"]], on=["instrument_id", "minute"])


def pa_table(df):
    import pyarrow as pa

    return pa.Table.from_pandas(df, preserve_index=False)


def test_batch_by_batch_equals_full_history(clean, instance):
    res = clean
    # ~1,800 one-minute bars per instrument over 5 batches: more than the look-back, across a UTC midnight
    sim = MarketSimulator(
        ["AAPL.XNAS", "BTCUSDT.BINANCE"],
        seed=21,
        start_ns=time.time_ns() - 31 * 3600 * 10**9,
        events_per_second=0.45,
        intraday_profile=False,
    )  # past at any hour
    trades, quotes = sim.take(24_000, 0)
    assert trades["ts_event"][-1].as_py() < time.time_ns()
    chunks = np.array_split(np.arange(trades.num_rows), 5)
    for k, idx in enumerate(chunks):
        publish_tables(res["pulsar"], trades.take(idx), quotes.slice(0, 0))
        assert batch(res, TRADES, f"b-{k}").valid == len(idx)
        result = dg.materialize(
            [analytics.indicators_1m],
            instance=instance,
            resources={"clickhouse": res["clickhouse"], "pulsar": res["pulsar"], "redis": res["redis"]},
        )
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    stored = res["clickhouse"].query_df(f"SELECT * FROM {analytics.TABLE} FINAL ORDER BY instrument_id, minute")
    stored["instrument_id"] = stored["instrument_id"].astype(str)
    stored["minute"] = pd.to_datetime(stored["minute"]).dt.tz_localize(None)
    ref = full_history_reference(trades.to_pandas())
    assert len(stored) == len(ref) and stored.groupby("instrument_id").size().min() > LOOKBACK_BARS
    merged = stored.merge(ref, on=["instrument_id", "minute"], suffixes=("", "_ref"))
    assert len(merged) == len(ref)
    for col in [
        "sma_20",
        "ema_20",
        "rsi_14",
        "macd",
        "macd_signal",
        "macd_hist",
        "bb_upper",
        "bb_middle",
        "bb_lower",
        "atr_14",
        "session_vwap",
    ]:
        a, b = merged[col].to_numpy(), merged[col + "_ref"].to_numpy()
        assert (np.isnan(a) == np.isnan(b)).all(), col
        ok = ~np.isnan(b)
        assert np.allclose(a[ok], b[ok], rtol=REL, atol=0), (col, np.max(np.abs(a[ok] - b[ok]) / np.abs(b[ok])))
    # each materialization was announced on the product's engine topic
    import orjson
    import pulsar

    from nautilus_assets.market_data.ingest import receive

    with res["pulsar"].client() as client:
        c = client.subscribe(
            analytics.PRODUCT.topic,
            "test-reader",
            initial_position=pulsar.InitialPosition.Earliest,
            consumer_type=pulsar.ConsumerType.Shared,
        )
        events = [orjson.loads(m.data()) for m in receive(c, 100, 10, idle_ms=1000)]
        c.close()
    assert len(events) >= 5 and {e["product"] for e in events} == {"market_analytics"}


def test_products_start_on_an_empty_store(clean, instance):
    """A fresh instance, before any bar exists: the streaming products' first batch (bootstrap) finds nothing to
    do and succeeds (chDB answers an empty query with a DataFrame that has no columns)."""
    from nautilus_assets.market_data.bars import changed_since
    from nautilus_assets.microstructure import assets as micro

    res = clean
    assert changed_since(res["clickhouse"], 0) == {}
    for product in (analytics.indicators_1m, micro.vpin_buckets):
        result = dg.materialize(
            [product],
            instance=instance,
            resources={
                "clickhouse": res["clickhouse"],
                "pulsar": res["pulsar"],
                "lake": res["lake"],
                "redis": res["redis"],
            },
        )
        assert result.success
