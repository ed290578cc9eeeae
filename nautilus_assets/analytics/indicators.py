"""Technical indicators over one instrument's 1-minute bars (pure: no I/O), computed with TA-Lib.

Exponential indicators depend on all earlier bars; computing them over a look-back of LOOKBACK_BARS
before the first bar that changed reproduces the full-history values to far below 1e-9 relative: the
slowest decay, Wilder's 13/14 per bar, leaves (13/14)**1000 ~ 1e-32 of the seed.
"""
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


def indicators(bars: pd.DataFrame) -> pd.DataFrame:
    """Indicators for bars of ONE instrument sorted by minute (columns minute, high, low, close, vwap, volume).
    NaN where TA-Lib has no value yet. The first bar of a UTC day must be present for its session VWAP."""
    close = bars["close"].to_numpy(np.float64)
    high, low = bars["high"].to_numpy(np.float64), bars["low"].to_numpy(np.float64)
    macd, signal, hist = talib.MACD(close, 12, 26, 9)
    upper, middle, lower = talib.BBANDS(close, 20, 2.0, 2.0)
    cols = {"sma_20": talib.SMA(close, 20), "ema_20": talib.EMA(close, 20), "rsi_14": talib.RSI(close, 14),
            "macd": macd, "macd_signal": signal, "macd_hist": hist, "bb_upper": upper, "bb_middle": middle,
            "bb_lower": lower, "atr_14": talib.ATR(high, low, close, 14),
            "session_vwap": session_vwap(bars["minute"], bars["vwap"].to_numpy(np.float64),
                                         bars["volume"].to_numpy(np.float64))}
    return pd.DataFrame(cols, index=bars.index)


def session_vwap(minute, vwap: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Σ price·size / Σ size since 00:00 UTC: running sums that restart at each UTC day (Σ price·size of a bar
    is its vwap · volume)."""
    day = pd.DatetimeIndex(minute).as_unit("ns").asi8 // 86_400_000_000_000   # epoch ns (UTC) -> day number
    n = day.size
    if n == 0:
        return np.empty(0)
    first = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
    seg = np.repeat(first, np.diff(np.r_[first, n]))          # index of each bar's first bar of the day
    pv, v = np.cumsum(vwap * volume), np.cumsum(volume)
    pv0, v0 = np.r_[0.0, pv][seg], np.r_[0.0, v][seg]
    return (pv - pv0) / (v - v0)
