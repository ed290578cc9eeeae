"""indicators() without services: every column equals the direct TA-Lib call, value for value, and the session
VWAP a per-day exact sum, on bars spanning several UTC days (with gaps), in each datetime unit and with a time zone."""

import math

import numpy as np
import pandas as pd
import pytest
import talib

from nautilus_assets.analytics.indicators import COLUMNS, indicators


def _bars(n: int, unit: str = "ns", tz: str | None = None, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-03-01 21:17", tz=tz)
    steps = np.cumsum(rng.choice([1, 1, 1, 2, 7, 1500], n))  # gaps, some longer than a day
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    return pd.DataFrame(
        {
            "minute": (start + pd.to_timedelta(steps, "min")).as_unit(unit),
            "close": close,
            "high": close * (1 + rng.random(n) * 1e-3),
            "low": close * (1 - rng.random(n) * 1e-3),
            "vwap": close * (1 + rng.normal(0, 1e-4, n)),
            "volume": rng.gamma(2.0, 500.0, n),
        },
        index=pd.RangeIndex(5, 5 + n),
    )


def _session_vwap(bars: pd.DataFrame) -> np.ndarray:
    """Σ vwap·volume / Σ volume since each bar's UTC midnight, summed exactly."""
    minute = pd.DatetimeIndex(bars["minute"])
    day = (minute.tz_convert("UTC") if minute.tz else minute).floor("D")
    out, pv, v, prev = [], [], [], None
    for d, p, q in zip(day, bars["vwap"], bars["volume"]):
        if d != prev:
            pv, v, prev = [], [], d
        pv.append(p * q)
        v.append(q)
        out.append(math.fsum(pv) / math.fsum(v))
    return np.array(out)


@pytest.mark.parametrize(
    "n, unit, tz",
    [
        (0, "ns", None),
        (1, "ns", None),
        (30, "us", None),
        (3000, "s", "UTC"),
        (3000, "ms", "America/New_York"),
        (60_000, "us", None),
    ],
)
def test_equals_talib_and_the_exact_session_vwap(n, unit, tz):
    bars = _bars(n, unit, tz)
    ind = indicators(bars)
    assert list(ind.columns) == [c[0] for c in COLUMNS] and (ind.dtypes == np.float64).all()
    assert ind.index.equals(bars.index)
    c, h, lo = bars["close"].to_numpy(), bars["high"].to_numpy(), bars["low"].to_numpy()
    if n == 0:
        return
    expected = {
        "sma_20": talib.SMA(c, 20),
        "ema_20": talib.EMA(c, 20),
        "rsi_14": talib.RSI(c, 14),
        "atr_14": talib.ATR(h, lo, c, 14),
    }
    expected.update(zip(["macd", "macd_signal", "macd_hist"], talib.MACD(c, 12, 26, 9)))
    expected.update(zip(["bb_upper", "bb_middle", "bb_lower"], talib.BBANDS(c, 20, 2.0, 2.0)))
    for name, values in expected.items():
        np.testing.assert_array_equal(ind[name].to_numpy(), values, err_msg=name)
    np.testing.assert_allclose(ind["session_vwap"].to_numpy(), _session_vwap(bars), rtol=1e-13, atol=0)


def test_the_first_bar_of_each_day_is_its_own_vwap():
    bars = _bars(5000, seed=3)
    ind = indicators(bars)
    t = pd.DatetimeIndex(bars["minute"]).asi8 // 86_400_000_000_000
    first = np.r_[True, t[1:] != t[:-1]]
    assert first.sum() > 10
    np.testing.assert_allclose(ind["session_vwap"].to_numpy()[first], bars["vwap"].to_numpy()[first], rtol=1e-15)
