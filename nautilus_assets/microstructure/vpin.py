"""VPIN (Easley, López de Prado, O'Hara 2012) with bulk volume classification. Pure: no I/O.

Bars are poured in time order into buckets of exactly `bucket_volume`; a bar that overflows a bucket is
split pro rata (its buy share stays the same in every piece). Cumulative buy volume is therefore a
piecewise-linear function of cumulative volume, and each bucket boundary is one interpolation.
`VpinState` carries the open bucket and the last window-1 buckets, so feeding bars batch by batch gives
exactly the buckets and values of one pass over the full history.
"""
import math
from dataclasses import asdict, dataclass, field

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def bvc_buy_volume(close: np.ndarray, volume: np.ndarray, sigma: float, prev_close: float | None = None) -> np.ndarray:
    """Bulk volume classification: buy_i = volume_i · Z(dP_i / sigma), dP_0 = 0 (or close_0 - prev_close)."""
    close = np.asarray(close, np.float64)
    volume = np.asarray(volume, np.float64)
    if close.size == 0:
        return close
    dp = np.diff(close, prepend=close[0] if prev_close is None else prev_close)
    if sigma <= 0:
        return volume * 0.5
    z = (dp / sigma) / math.sqrt(2.0)
    return volume * 0.5 * (1.0 + _erf(z).astype(np.float64))


def pour(buy: np.ndarray, sell: np.ndarray, bucket_volume: float, fill: float = 0.0, fill_buy: float = 0.0):
    """Completed buckets' (buy, sell) volumes, and the open bucket's (volume, buy) afterwards.
    `fill`/`fill_buy` is the open bucket carried in from earlier bars."""
    buy, sell = np.asarray(buy, np.float64), np.asarray(sell, np.float64)
    vol = buy + sell
    nz = vol > 0
    x = np.concatenate([[0.0, fill], fill + np.cumsum(vol[nz])])
    y = np.concatenate([[0.0, fill_buy], fill_buy + np.cumsum(buy[nz])])
    if fill == 0.0:
        x, y = x[1:], y[1:]
    k = int(math.floor(x[-1] / bucket_volume + 1e-12))
    edges = bucket_volume * np.arange(k + 1)
    cum_buy = np.interp(edges, x, y)
    b = np.diff(cum_buy)
    s = bucket_volume - b
    return b, s, float(x[-1] - edges[-1]), float(y[-1] - cum_buy[-1])


def rolling_vpin(imbalance: np.ndarray, volumes: np.ndarray, window: int, prior_imb=(), prior_vol=()) -> np.ndarray:
    """VPIN per bucket: Σ |S−B| / Σ bucket volume over the last `window` buckets (= window · V for constant V);
    NaN until `window` buckets exist (counting `prior_*`, the buckets before these)."""
    imb = np.concatenate([np.asarray(prior_imb, np.float64), imbalance])
    vol = np.concatenate([np.asarray(prior_vol, np.float64), volumes])
    ci, cv = np.concatenate([[0.0], np.cumsum(imb)]), np.concatenate([[0.0], np.cumsum(vol)])
    n = imb.size
    out = np.full(n, np.nan)
    if n >= window:
        out[window - 1:] = (ci[window:] - ci[:-window]) / (cv[window:] - cv[:-window])
    return out[len(prior_imb):]


def vpin(close, volume, bucket_volume: float, sigma: float, window: int = 50) -> np.ndarray:
    """One VPIN value per completed bucket (NaN for the first window−1 buckets)."""
    volume = np.asarray(volume, np.float64)
    buy = bvc_buy_volume(close, volume, sigma)
    b, s, _, _ = pour(buy, volume - buy, bucket_volume)
    return rolling_vpin(np.abs(s - b), np.full(b.size, float(bucket_volume)), window)


@dataclass
class VpinState:
    """Everything VPIN needs from earlier bars: the last close, the open bucket, the last window−1 buckets."""
    window: int = 50
    last_close: float | None = None
    fill: float = 0.0
    fill_buy: float = 0.0
    recent_imb: list = field(default_factory=list)
    recent_vol: list = field(default_factory=list)
    buckets: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VpinState":
        return cls(**d)

    def advance(self, close: np.ndarray, volume: np.ndarray, bucket_volume: float, sigma: float | None = None,
                buy: np.ndarray | None = None) -> dict:
        """Pour bars in; returns the completed buckets (buy, sell, order imbalance, vpin, bar index of the close).
        BVC when `sigma` is given; otherwise `buy` is the bars' (aggressor) buy volume."""
        close, volume = np.asarray(close, np.float64), np.asarray(volume, np.float64)
        if buy is None:
            buy = bvc_buy_volume(close, volume, sigma, self.last_close)
        sell = volume - buy
        fill0 = self.fill
        b, s, self.fill, self.fill_buy = pour(buy, sell, bucket_volume, self.fill, self.fill_buy)
        imb = np.abs(s - b)
        vols = np.full(b.size, float(bucket_volume))
        v = rolling_vpin(imb, vols, self.window, self.recent_imb, self.recent_vol)
        keep = self.window - 1
        self.recent_imb = (list(self.recent_imb) + imb.tolist())[-keep:] if keep else []
        self.recent_vol = (list(self.recent_vol) + vols.tolist())[-keep:] if keep else []
        # the bar in which each bucket completed
        ends = np.searchsorted(fill0 + np.cumsum(volume), bucket_volume * np.arange(1, b.size + 1) - 1e-9 * bucket_volume)
        seq = np.arange(self.buckets, self.buckets + b.size)
        self.buckets += b.size
        if close.size:
            self.last_close = float(close[-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            oi = (b - s) / (b + s)
        return {"bucket_seq": seq, "bar_index": np.minimum(ends, max(close.size - 1, 0)), "buy": b, "sell": s,
                "bucket_volume": vols, "order_imbalance": oi, "vpin": v}
