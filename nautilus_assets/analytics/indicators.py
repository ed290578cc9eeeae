"""Technical indicators over one instrument's 1-minute bars (pure: no I/O), computed with TA-Lib.

Exponential indicators depend on all earlier bars; computing them over a look-back of LOOKBACK_BARS
before the first bar that changed reproduces the full-history values to far below 1e-9 relative: the
slowest decay, Wilder's 13/14 per bar, leaves (13/14)**1000 ~ 1e-32 of the seed.
"""

import itertools

import numpy as np
import pandas as pd
import talib

LOOKBACK_BARS = 1000

COLUMNS = [  # name, ClickHouse type, description, bar columns it is computed from
    ("sma_20", "Float64", "Simple moving average of close, 20 bars", ["close"]),
    ("ema_20", "Float64", "Exponential moving average of close, 20 bars (TA-Lib seeding)", ["close"]),
    ("rsi_14", "Float64", "Wilder RSI of close, 14 bars", ["close"]),
    ("macd", "Float64", "MACD line: EMA12 - EMA26 of close", ["close"]),
    ("macd_signal", "Float64", "EMA9 of the MACD line", ["close"]),
    ("macd_hist", "Float64", "MACD - signal", ["close"]),
    ("bb_upper", "Float64", "Bollinger upper band: SMA20 + 2 sd", ["close"]),
    ("bb_middle", "Float64", "Bollinger middle band: SMA20", ["close"]),
    ("bb_lower", "Float64", "Bollinger lower band: SMA20 - 2 sd", ["close"]),
    ("atr_14", "Float64", "Wilder average true range, 14 bars", ["high", "low", "close"]),
    ("session_vwap", "Float64", "Σ price·size / Σ size of the UTC day's trades up to this minute", ["vwap", "volume"]),
]

_NAMES = [c[0] for c in COLUMNS]
_UNITS_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def indicators(bars: pd.DataFrame) -> pd.DataFrame:
    """Indicators for bars of ONE instrument sorted by minute (columns minute, high, low, close, vwap, volume).
    NaN where TA-Lib has no value yet. The first bar of a UTC day must be present for its session VWAP.

    The columns are the rows of one float64 block that becomes the frame without a copy; each TA-Lib result is copied
    in and dropped at once, so that the next call reuses its memory (fresh pages cost more than the arithmetic)."""
    close = bars["close"].to_numpy(np.float64)
    high, low = bars["high"].to_numpy(np.float64), bars["low"].to_numpy(np.float64)
    out = np.empty((len(_NAMES), close.size))
    col = dict(zip(_NAMES, out))
    # first, while rows 0-1 are free to hold the running sums
    session_vwap(
        bars["minute"],
        bars["vwap"].to_numpy(np.float64),
        bars["volume"].to_numpy(np.float64),
        out=col["session_vwap"],
        work=out[:2].reshape(-1).view(np.complex128),
    )
    col["macd"][:], col["macd_signal"][:], col["macd_hist"][:] = talib.MACD(close, 12, 26, 9)
    col["bb_upper"][:], col["bb_middle"][:], col["bb_lower"][:] = talib.BBANDS(close, 20, 2.0, 2.0)
    col["sma_20"][:] = col["bb_middle"]  # BBANDS' middle band is TA-Lib's SMA20, value for value
    col["ema_20"][:] = talib.EMA(close, 20)
    col["rsi_14"][:] = talib.RSI(close, 14)
    col["atr_14"][:] = talib.ATR(high, low, close, 14)
    return pd.DataFrame(out.T, index=bars.index, columns=_NAMES, copy=False)


def session_vwap(
    minute, vwap: np.ndarray, volume: np.ndarray, out: np.ndarray | None = None, work: np.ndarray | None = None
) -> np.ndarray:
    """Σ price·size / Σ size since 00:00 UTC (Σ price·size of a bar is its vwap · volume), minutes sorted: running sums
    restarted at each UTC day. `work`: optional complex128 scratch of the bars' length."""
    n = len(vwap)
    out = np.empty(n) if out is None else out
    sums = np.empty(n, np.complex128) if work is None else work
    np.multiply(vwap, volume, out=sums.real)  # one complex cumsum is both float cumsums, in the time of one
    sums.imag[:] = volume
    for start, end in itertools.pairwise(_day_bounds(minute)):
        day = sums[start:end]
        np.add.accumulate(day, out=day)
    return np.divide(sums.real, sums.imag, out=out)


def _day_bounds(minute) -> list[int]:
    """0, the index of each later UTC day's first bar, and the bar count (minutes sorted)."""
    a = minute.array if isinstance(minute, pd.Series) else None
    if not isinstance(a, pd.arrays.DatetimeArray):
        a = pd.DatetimeIndex(minute).array
    t, day = a.asi8, _UNITS_PER_DAY[a.unit]  # epoch (UTC) in the minutes' own unit: no conversion
    if t.size == 0:
        return [0]
    midnights = np.arange(t[0] // day + 1, t[-1] // day + 1) * day
    return list(dict.fromkeys([0, *np.searchsorted(t, midnights).tolist(), t.size]))  # days without bars: once
