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
    out = pd.DataFrame(index=bars.index)
    out["sma_20"] = talib.SMA(close, 20)
    out["ema_20"] = talib.EMA(close, 20)
    out["rsi_14"] = talib.RSI(close, 14)
    out["macd"], out["macd_signal"], out["macd_hist"] = talib.MACD(close, 12, 26, 9)
    out["bb_upper"], out["bb_middle"], out["bb_lower"] = talib.BBANDS(close, 20, 2.0, 2.0)
    out["atr_14"] = talib.ATR(high, low, close, 14)
    day = pd.to_datetime(bars["minute"]).dt.floor("D")
    pv = (bars["vwap"] * bars["volume"]).groupby(day).cumsum()
    out["session_vwap"] = pv / bars["volume"].groupby(day).cumsum()
    return out
