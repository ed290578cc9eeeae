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

# erf as a table of Taylor polynomials: degree 5 about centres 1/128 apart on [-6, 6] (the Lagrange remainder is
# below 2e-16), so one evaluation is a handful of whole-array operations instead of a Python call per element.
# Beyond |x| = 6 erf rounds to ±1 in doubles.
_ERF_DEGREE, _ERF_STEPS, _ERF_LIMIT = 5, 128, 6.0
# vpin() pours this many bars at a time: its temporaries then stay small enough for the allocator to reuse, where
# whole-history ones are fresh pages on every call (page faults cost more than the arithmetic).
_CHUNK = 1 << 16


def _erf_table() -> list[np.ndarray]:
    """Row k: erf^(k)(c) / k! · (1/128)^k at every centre c, i.e. the coefficients of the polynomial in
    u = 128·(x − c); erf^(k)(c) = 2/√π · (−1)^(k−1) · H_{k−1}(c) · e^(−c²) with H the physicists' Hermite
    polynomials."""
    h = 1.0 / _ERF_STEPS
    c = np.arange(int(2 * _ERF_LIMIT * _ERF_STEPS) + 1) * h - _ERF_LIMIT  # exact binary fractions; 0 is a centre
    rows = [np.array([math.erf(v) for v in c])]
    g = 2 / math.sqrt(math.pi) * np.exp(-c * c)
    h_prev, h_k = np.zeros_like(c), np.ones_like(c)  # H_{k-2}, H_{k-1}
    for k in range(1, _ERF_DEGREE + 1):
        rows.append((-1) ** (k - 1) * h_k * g / math.factorial(k) * h**k)
        h_prev, h_k = h_k, 2 * c * h_k - 2 * (k - 1) * h_prev
    return rows


_ERF_ROWS = _erf_table()


def erf(x) -> np.ndarray:
    """math.erf element-wise, within 4e-16 absolute and 2e-15 relative (NaN stays NaN)."""
    x = np.asarray(x, np.float64)
    t = x.reshape(-1).clip(-_ERF_LIMIT, _ERF_LIMIT)
    t *= _ERF_STEPS  # exact: a power of two
    centre = t + (_ERF_LIMIT * _ERF_STEPS + 0.5)
    np.floor(centre, out=centre)  # index of the nearest centre
    with np.errstate(invalid="ignore"):  # NaN: any index will do, its u is NaN
        i = centre.astype(np.intp)
    centre -= _ERF_LIMIT * _ERF_STEPS
    t -= centre  # u ∈ [−½, ½], exact: erf keeps its relative accuracy near 0
    out = _ERF_ROWS[-1].take(i, mode="clip")
    for row in _ERF_ROWS[-2::-1]:  # Horner
        out *= t
        out += row.take(i, out=centre, mode="clip")
    return out.reshape(x.shape)


def bvc_buy_volume(close: np.ndarray, volume: np.ndarray, sigma: float, prev_close: float | None = None) -> np.ndarray:
    """Bulk volume classification: buy_i = volume_i · Z(dP_i / sigma), dP_0 = 0 (or close_0 - prev_close)."""
    close = np.asarray(close, np.float64)
    volume = np.asarray(volume, np.float64)
    if close.size == 0:
        return close
    if sigma <= 0:
        return volume * 0.5
    z = np.empty_like(close)
    z[0] = close[0] - (close[0] if prev_close is None else prev_close)
    np.subtract(close[1:], close[:-1], out=z[1:])
    z /= sigma
    z /= math.sqrt(2.0)
    share = erf(z)
    share += 1.0
    buy = volume * 0.5
    buy *= share
    return buy


def pour(buy: np.ndarray, sell: np.ndarray, bucket_volume: float, fill: float = 0.0, fill_buy: float = 0.0):
    """Completed buckets' (buy, sell) volumes, and the open bucket's (volume, buy) afterwards.
    `fill`/`fill_buy` is the open bucket carried in from earlier bars."""
    buy, sell = np.asarray(buy, np.float64), np.asarray(sell, np.float64)
    return _pour(buy, buy + sell, bucket_volume, fill, fill_buy)


def _pour(buy: np.ndarray, vol: np.ndarray, bucket_volume: float, fill: float, fill_buy: float):
    """pour() given the bars' volumes rather than their sell volumes."""
    nz = vol > 0
    if not nz.all():  # a bar without volume adds no point to the curve
        buy, vol = buy[nz], vol[nz]
    xy = _curve(vol, buy, fill, fill_buy)
    x_end, y_end = xy[-1].real, xy[-1].imag
    k = math.floor(x_end / bucket_volume + 1e-12)
    cum_buy = _buy_at_multiples(xy, bucket_volume, k)
    b = np.diff(cum_buy)
    return b, bucket_volume - b, float(x_end - bucket_volume * k), float(y_end - cum_buy[-1])


def _curve(vol: np.ndarray, buy: np.ndarray, fill: float, fill_buy: float) -> np.ndarray:
    """Cumulative (volume, buy) as complex points x + iy: the origin, the open bucket (if any), then each bar's end.
    One complex cumsum is two independent float cumsums with the same roundings, in the time of one."""
    head = 2 if fill != 0.0 else 1  # no open bucket: the origin stands for it (buy = its residue)
    xy = np.empty(vol.size + head, np.complex128)
    xy[0] = 0.0
    xy[head - 1] = complex(fill, fill_buy)
    bars = xy[head:]
    bars.real[:], bars.imag[:] = vol, buy
    np.cumsum(bars, out=bars)
    if xy[head - 1] != 0:
        bars += xy[head - 1]
    return xy


def _buy_at_multiples(xy: np.ndarray, bucket_volume: float, k: int) -> np.ndarray:
    """Cumulative buy at cumulative volume 0, V, …, kV: np.interp on the curve, but each multiple's segment comes from
    floor(x / V) (a pass over the points, then a search among small integers) rather than a binary search over all
    points per bucket. Beyond the last point the value holds, as in np.interp."""
    out = np.empty(k + 1)
    out[0] = xy[0].imag
    if k == 0:
        return out
    x = xy.real
    whole = (x / bucket_volume).astype(np.intp)  # floor (x >= 0), non-decreasing like x
    lo = np.searchsorted(whole, np.arange(1, k + 1)) - 1  # the last point below each multiple
    np.minimum(lo, x.size - 2, out=lo)
    a, b = xy[lo], xy[lo + 1]
    edges = bucket_volume * np.arange(1, k + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[1:] = (b.imag - a.imag) / (b.real - a.real) * (edges - a.real) + a.imag
    if edges[-1] >= x[-1]:
        out[-1] = xy[-1].imag
    return out


def rolling_vpin(imbalance: np.ndarray, volumes: np.ndarray, window: int, prior_imb=(), prior_vol=()) -> np.ndarray:
    """VPIN per bucket: Σ |S−B| / Σ bucket volume over the last `window` buckets (= window · V for constant V);
    NaN until `window` buckets exist (counting `prior_*`, the buckets before these)."""
    imb = np.concatenate([np.asarray(prior_imb, np.float64), imbalance])
    vol = np.concatenate([np.asarray(prior_vol, np.float64), volumes])
    ci, cv = np.concatenate([[0.0], np.cumsum(imb)]), np.concatenate([[0.0], np.cumsum(vol)])
    n = imb.size
    out = np.full(n, np.nan)
    if n >= window:
        out[window - 1 :] = (ci[window:] - ci[:-window]) / (cv[window:] - cv[:-window])
    return out[len(prior_imb) :]


def vpin(close, volume, bucket_volume: float, sigma: float, window: int = 50) -> np.ndarray:
    """One VPIN value per completed bucket (NaN for the first window−1 buckets)."""
    close, volume = np.asarray(close, np.float64), np.asarray(volume, np.float64)
    parts, fill, fill_buy = [np.empty(0)], 0.0, 0.0
    for i in range(0, close.size, _CHUNK):  # in chunks, carrying the open bucket as VpinState does
        c, v = close[i : i + _CHUNK], volume[i : i + _CHUNK]
        buy = bvc_buy_volume(c, v, sigma, close[i - 1] if i else None)
        b, _, fill, fill_buy = _pour(buy, v, bucket_volume, fill, fill_buy)
        parts.append(b)
    b = np.concatenate(parts)
    return rolling_vpin(np.abs(bucket_volume - 2 * b), np.full(b.size, float(bucket_volume)), window)


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

    def advance(
        self,
        close: np.ndarray,
        volume: np.ndarray,
        bucket_volume: float,
        sigma: float | None = None,
        buy: np.ndarray | None = None,
    ) -> dict:
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
        ends = np.searchsorted(
            fill0 + np.cumsum(volume), bucket_volume * np.arange(1, b.size + 1) - 1e-9 * bucket_volume
        )
        seq = np.arange(self.buckets, self.buckets + b.size)
        self.buckets += b.size
        if close.size:
            self.last_close = float(close[-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            oi = (b - s) / (b + s)
        return {
            "bucket_seq": seq,
            "bar_index": np.minimum(ends, max(close.size - 1, 0)),
            "buy": b,
            "sell": s,
            "bucket_volume": vols,
            "order_imbalance": oi,
            "vpin": v,
        }


def vpin_straightforward(close, volume, V, sigma, window=50):
    """vpin() in its straightforward form (BVC with a Python math.erf call per bar, np.interp at each bucket edge):
    the reference the tests and bench/compute.py compare the fast path with."""
    close, volume = np.asarray(close, np.float64), np.asarray(volume, np.float64)
    z = np.diff(close, prepend=close[0]) / sigma / math.sqrt(2.0) if sigma > 0 else np.zeros_like(close)
    buy = volume * 0.5 * (1.0 + np.frompyfunc(math.erf, 1, 1)(z).astype(np.float64))
    x, y = np.r_[0.0, np.cumsum(volume[volume > 0])], np.r_[0.0, np.cumsum(buy[volume > 0])]
    b = np.diff(np.interp(V * np.arange(int(x[-1] / V + 1e-12) + 1), x, y))
    imb = np.r_[0.0, np.cumsum(np.abs(V - 2 * b))]
    out = np.full(b.size, np.nan)
    out[window - 1 :] = (imb[window:] - imb[:-window]) / (window * V)
    return out
