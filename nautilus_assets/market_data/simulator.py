"""A synthetic market with the stylized facts, deterministic for (instruments, seed, start_ns, settings).

Models (`model=`):
- "stylized" (default): Student-t innovations (fat tails), a daily GARCH(1,1) variance per instrument
  (volatility clustering), a common market factor (correlated instruments), Kyle-style price impact (each trade
  moves the mid by `impact` per-event standard deviations per mean-size share, in its direction), and toxic
  bursts of one-sided flow that therefore move the price: order-flow imbalance and VPIN carry information
  about the next bars.
- "gaussian": normal innovations, constant variance, balanced flow (no bursts): instruments' daily log returns
  are i.i.d. multivariate normal, so historical, parametric and Monte Carlo VaR must agree.
- "random_walk": like "gaussian" but the bursts stay in the flow and the flow moves nothing: nothing about the
  next bar is learnable from the past.
In every model events arrive with an intraday U-shaped intensity over the UTC day (volume and, with constant
variance per event, volatility are highest at the open and close of the day).

Events come in chunks of `CHUNK` (state carries over), as Arrow tables of trades and quotes in the message
field layout of `schema.py`; `messages()` renders them as JSON payloads.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa

from .schema import SCHEMA_VERSION

CHUNK = 10_000
NS_PER_DAY = 86_400 * 1_000_000_000
BASE_PRICES = {"AAPL": 230.0, "MSFT": 420.0, "SPY": 590.0, "ESZ6": 5950.0, "BTCUSDT": 95000.0}
MODELS = ("stylized", "gaussian", "random_walk")
# events per instrument and day (trades, quotes) of a named volume; "small" keeps the caller's rate
VOLUMES = {"small": None, "realistic": (100_000, 1_000_000)}
SIZE_MU, SIZE_SIGMA = 3.0, 1.0  # trade sizes ~ lognormal: mean e^3.5 ≈ 33 shares
MEAN_SIZE = float(np.exp(SIZE_MU + SIZE_SIGMA**2 / 2))
SIZE_M2 = float(np.exp(SIZE_SIGMA**2))  # E[size²] / E[size]²
# intraday intensity u(f) = a + c·(2f − 1)² over the UTC day fraction f, mean 1: 2.0 at the open and close,
# 0.5 at midday. Events are drawn at a constant rate in "business time" Λ(f) = ∫u and mapped back to the clock.
U_FLOOR, U_CURVE = 0.5, 1.5
_F_GRID = np.linspace(0.0, 1.0, 8193)
_LAMBDA = U_FLOOR * _F_GRID + U_CURVE * ((2 * _F_GRID - 1) ** 3 + 1) / 6


def intraday_intensity(frac):
    """The intraday profile u(f) (mean 1 over the day): expected event rate relative to the day's average."""
    return U_FLOOR + U_CURVE * (2 * np.asarray(frac, np.float64) - 1) ** 2


def volume_settings(volume: str, instruments: int) -> dict:
    """MarketSimulator keyword arguments for a named volume ("small": none, the caller's rate stands)."""
    if volume not in VOLUMES:
        raise ValueError(f"volume {volume!r}: one of {', '.join(VOLUMES)}")
    if VOLUMES[volume] is None:
        return {}
    trades, quotes = VOLUMES[volume]
    return {"events_per_second": instruments * (trades + quotes) / 86_400, "trade_share": trades / (trades + quotes)}


@dataclass
class MarketSimulator:
    instruments: list[str]
    seed: int = 7
    start_ns: int = 0
    events_per_second: float = 200.0  # average event density in simulated time (all instruments)
    trade_share: float = 0.5  # fraction of events that are trades (the rest are quote updates)
    daily_vol: float = 0.02  # unconditional daily volatility of each instrument's log price
    model: str = "stylized"
    tail_df: float = 5.0  # Student-t degrees of freedom of the innovations and of each day's
    #                                      return given its GARCH variance (stylized: GARCH(1,1)-t)
    garch: tuple[float, float] = (0.08, 0.90)  # daily GARCH(1,1) (α, β) (stylized); ω keeps daily_vol²
    market_share: float = 0.4  # share of each instrument's variance from the common market factor
    impact: float = 0.3  # Kyle λ: log-mid move of a mean-size trade, in per-event std devs
    bursts_per_day: float = 8.0  # toxic (informed, one-sided) bursts per instrument and day
    burst_minutes: float = 15.0  # a burst's length in (business-time) minutes
    burst_move: float = 0.28  # a burst's expected log-price drift in daily std devs (Kyle: the
    #                                      informed trade just enough to move it; at most burst_buy one-sided)
    burst_buy: float = 0.9  # the most one-sided a burst's trades get
    burst_size: float = 3.0  # size multiplier of a burst's trades (informed trade bigger)
    intraday_profile: bool = True  # U-shaped event intensity (off: a flat rate, e.g. for load tests)

    def __post_init__(self):
        if not self.instruments:
            raise ValueError("at least one instrument")
        if self.model not in MODELS:
            raise ValueError(f"model {self.model!r}: one of {MODELS}")
        a, b = self.garch
        if not (a >= 0 and b >= 0 and a + b < 1):
            raise ValueError(f"garch {self.garch}: need α, β >= 0 and α + β < 1")
        stylized = self.model == "stylized"
        self._impact = 0.0 if self.model == "random_walk" else self.impact
        self._bursts_on = self.model != "gaussian" and self.bursts_per_day > 0
        self._garch = self.garch if stylized else (0.0, 0.0)
        self._tails = self.tail_df if stylized else None
        n_j = self.events_per_instrument_day
        # bursts counted in their instrument's events; their one-sidedness set so a burst drifts burst_move daily
        # std devs (informed volume ∝ √(noise volume), as in Kyle 1985), capped at burst_buy
        self._burst_events = max(1, round(n_j * self.burst_minutes / 1440))
        self._burst_rate = self.bursts_per_day / n_j if self._bursts_on else 0.0
        push = self.impact * self.burst_size * self.trade_share * self._burst_events / np.sqrt(n_j)
        self._burst_p = 0.5 + 0.5 * min(2 * self.burst_buy - 1, self.burst_move / push if push else 1.0)
        # the variance the flow's impact adds (balanced trades, and the bursts' drift: both in units of the day's
        # variance); the noise has the rest, so a day's variance stays h
        flow = self._impact**2 * self.trade_share * SIZE_M2
        if self._impact and self._bursts_on:
            flow += self.bursts_per_day * ((2 * self._burst_p - 1) * push) ** 2
        self._noise = 1.0 - flow
        if self._noise < 0.2:
            raise ValueError(
                f"impact {self.impact} with {self.bursts_per_day} bursts a day explains {flow:.0%} "
                "of the variance; at most 80% leaves room for noise"
            )
        self._rng = np.random.default_rng([self.seed, self.start_ns % 2**63])
        k = len(self.instruments)
        self._t = self.start_ns
        day0 = self.start_ns // NS_PER_DAY * NS_PER_DAY
        frac = (self.start_ns - day0) / NS_PER_DAY
        self._b = day0 + int(self._business(frac) * NS_PER_DAY)  # business time of the start
        # unique across simulator runs (a restarted simulator must not reuse trade ids), deterministic for the inputs
        self._id_prefix = f"S{self.seed}T{self.start_ns // 1_000_000}-"
        self._log_mid = np.log(
            [BASE_PRICES.get(i.split(".")[0], 100.0 + 50 * (zlib.crc32(i.encode()) % 10)) for i in self.instruments]
        )
        self._day = self._b // NS_PER_DAY
        self._h = np.full(k, self.daily_vol**2)  # today's GARCH variance per instrument
        self._day_scale, self._day_scale_day = np.ones(k), None  # today's inverse-χ² multiplier of h
        self._day_open = self._log_mid.copy()
        self._factor = 0.0
        self._factor_last = np.zeros(k)
        self._trade_seq = np.zeros(k, np.int64)
        self._burst_left = np.zeros(k, np.int64)
        self._burst_side = np.ones(k, np.int64)

    @property
    def now_ns(self) -> int:
        return self._t

    @property
    def events_per_instrument_day(self) -> float:
        return self.events_per_second * 86_400 / len(self.instruments)

    def _business(self, frac):
        return np.interp(frac, _F_GRID, _LAMBDA) if self.intraday_profile else frac

    def _clock(self, b: np.ndarray) -> np.ndarray:
        """Clock times (strictly increasing int64 ns) of business times `b`."""
        day0 = b // NS_PER_DAY * NS_PER_DAY
        frac = (b - day0) / NS_PER_DAY
        if self.intraday_profile:
            frac = np.interp(frac, _LAMBDA, _F_GRID)
        ts = day0 + (frac * NS_PER_DAY).astype(np.int64)
        i = np.arange(ts.size + 1)
        return (np.maximum.accumulate(np.r_[self._t, ts] - i) + i)[1:]  # at least 1 ns apart

    def _innovations(self, n: int) -> np.ndarray:
        """Unit-variance shocks: Student-t (scaled) in the stylized model, else normal."""
        if self._tails is None:
            return self._rng.standard_normal(n)
        return self._rng.standard_t(self._tails, n) * np.sqrt((self._tails - 2) / self._tails)

    def _roll_day(self, day: int) -> None:
        """GARCH(1,1) on each instrument's daily log return: h ← ω + α r² + β h, for each day passed; the new
        day's variance is h times an inverse-χ² draw of mean 1 (stylized), so a day's return given h is Student-t."""
        a, b = self._garch
        while self._day < day:
            r = self._log_mid - self._day_open
            self._h = self.daily_vol**2 * (1 - a - b) + a * r**2 + b * self._h
            self._day_open = self._log_mid.copy()
            self._day += 1
        if self._tails is not None and self._day_scale_day != day:
            self._day_scale = (self._tails - 2) / self._rng.chisquare(self._tails, len(self.instruments))
            self._day_scale_day = day

    def chunk(self, n: int = CHUNK) -> tuple[pa.Table, pa.Table]:
        """The next n events as (trades, quotes)."""
        rng, k = self._rng, len(self.instruments)
        gaps = rng.exponential(1e9 / self.events_per_second, n).astype(np.int64) + 1
        b = self._b + np.cumsum(gaps)
        self._b = int(b[-1])
        ts = self._clock(b)
        self._t = int(ts[-1])
        inst = rng.integers(0, k, n)
        is_trade = rng.random(n) < self.trade_share
        side_in_burst, in_burst = self._bursts(inst, rng)
        # aggressor side: toxic bursts are mostly one-sided, otherwise balanced
        buy_p = np.where(in_burst, np.where(side_in_burst > 0, self._burst_p, 1 - self._burst_p), 0.5)
        buyer = rng.random(n) < buy_p
        size = np.ceil(rng.lognormal(SIZE_MU, SIZE_SIGMA, n) * np.where(in_burst, self.burst_size, 1.0))
        # the market factor: a (fat-tailed) random walk in business time with unit variance per day
        factor = self._factor + np.cumsum(self._innovations(n) * np.sqrt(gaps / NS_PER_DAY))
        self._factor = float(factor[-1])
        idio = self._innovations(n) / np.sqrt(self.events_per_instrument_day)
        signed = np.where(is_trade, np.where(buyer, 1.0, -1.0) * size / MEAN_SIZE, 0.0)
        log_mid = np.empty(n)
        day = b // NS_PER_DAY
        bounds = np.flatnonzero(np.diff(day)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, n]):  # one segment per UTC day
            self._roll_day(int(day[lo]))
            for j in range(k):
                idx = lo + np.flatnonzero(inst[lo:hi] == j)
                if not idx.size:
                    continue
                sd_day = np.sqrt(self._h[j] * self._day_scale[j])
                d_factor = np.diff(factor[idx], prepend=self._factor_last[j])
                self._factor_last[j] = factor[idx[-1]]
                shocks = (
                    np.sqrt(self._noise)
                    * sd_day
                    * (np.sqrt(self.market_share) * d_factor + np.sqrt(1 - self.market_share) * idio[idx])
                )
                # Kyle: signed order flow moves the mid its way
                shocks += self._impact * sd_day / np.sqrt(self.events_per_instrument_day) * signed[idx]
                path = self._log_mid[j] + np.cumsum(shocks)
                log_mid[idx] = path
                self._log_mid[j] = path[-1]
        mid = np.exp(log_mid)
        tick = np.where(mid > 1000, 0.25, 0.01)
        half_spread = tick * (1 + rng.integers(0, 3, n))
        bid = np.round((mid - half_spread) / tick) * tick
        ask = np.maximum(np.round((mid + half_spread) / tick) * tick, bid + tick)
        ts_init = ts + rng.integers(20_000, 2_000_000, n)
        names = np.array(self.instruments, dtype=object)

        t = np.flatnonzero(is_trade)
        seq = np.empty(t.size, np.int64)
        for j in range(k):
            sel = inst[t] == j
            cnt = int(sel.sum())
            seq[sel] = self._trade_seq[j] + np.arange(1, cnt + 1)
            self._trade_seq[j] += cnt
        trades = pa.table(
            {
                "instrument_id": pa.array(names[inst[t]], pa.string()),
                "price": np.round(np.where(buyer[t], ask[t], bid[t]), 8),
                "size": size[t],
                "aggressor_side": pa.array(np.where(buyer[t], "BUYER", "SELLER"), pa.string()),
                "trade_id": pa.array([f"{self._id_prefix}{s}" for s in seq], pa.string()),
                "ts_event": ts[t],
                "ts_init": ts_init[t],
            }
        )
        q = np.flatnonzero(~is_trade)
        quotes = pa.table(
            {
                "instrument_id": pa.array(names[inst[q]], pa.string()),
                "bid_price": np.round(bid[q], 8),
                "ask_price": np.round(ask[q], 8),
                "bid_size": np.ceil(rng.lognormal(4.0, 0.8, q.size)),
                "ask_size": np.ceil(rng.lognormal(4.0, 0.8, q.size)),
                "ts_event": ts[q],
                "ts_init": ts_init[q],
            }
        )
        return trades, quotes

    def _bursts(self, inst: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        """Per event: the burst side (+1 buy / -1 sell) and whether its instrument is in a toxic burst."""
        n = inst.size
        starts = rng.random(n) < self._burst_rate
        new_side = np.where(rng.random(n) < 0.5, 1, -1)
        side = np.zeros(n, np.int64)
        active = np.zeros(n, bool)
        for j in range(len(self.instruments)):
            idx = np.flatnonzero(inst == j)
            m = idx.size
            if not m:
                continue
            pos = np.arange(m)
            last = np.maximum.accumulate(np.where(starts[idx], pos, -1))  # latest burst start so far
            in_new = (last >= 0) & (pos - last < self._burst_events)
            carry = (last < 0) & (pos < self._burst_left[j])  # a burst running from the last chunk
            active[idx] = in_new | carry
            side[idx] = np.where(in_new, new_side[idx][np.maximum(last, 0)], self._burst_side[j])
            if last[-1] >= 0:
                self._burst_left[j] = max(0, self._burst_events - (m - last[-1]))
                self._burst_side[j] = new_side[idx][last[-1]]
            else:
                self._burst_left[j] = max(0, int(self._burst_left[j]) - m)
        return side, active

    def take(self, n_trades: int, n_quotes: int) -> tuple[pa.Table, pa.Table]:
        """At least the first n_trades trades and n_quotes quotes, cut to exactly those counts."""
        ts, qs, nt, nq = [], [], 0, 0
        while nt < n_trades or nq < n_quotes:
            t, q = self.chunk()
            ts.append(t)
            qs.append(q)
            nt += t.num_rows
            nq += q.num_rows
        return pa.concat_tables(ts).slice(0, n_trades), pa.concat_tables(qs).slice(0, n_quotes)


NEWS_SOURCES = ("Reuters", "Bloomberg", "Dow Jones", "PR Newswire")
_NEWS_WHAT = (
    "beats estimates",
    "misses estimates",
    "guidance raised",
    "guidance cut",
    "upgraded",
    "downgraded",
    "announces buyback",
    "under investigation",
    "names new CEO",
    "in merger talks",
)


class NewsSimulator:
    """News items (id, headline, instruments, source) arriving as a Poisson process of `per_hour` in event time,
    each about one instrument or, one time in five, two. Deterministic for (instruments, seed, start_ns); ids never
    repeat across simulator runs (they carry the start time, as trade ids do)."""

    def __init__(self, instruments: list[str], seed: int = 7, start_ns: int = 0, per_hour: float = 120.0):
        self.instruments, self.per_hour = list(instruments), per_hour
        self._rng = np.random.default_rng([seed, start_ns % 2**63, 0x4E45])
        self._next = start_ns + self._gap()
        self._prefix, self._n = f"N{seed}T{start_ns // 1_000_000}-", 0

    def _gap(self) -> int:
        return 1 + int(self._rng.exponential(3600e9 / self.per_hour))

    def until(self, end_ns: int) -> pa.Table:
        """The items with event times before end_ns not given yet, in time order."""
        rows = []
        while self._next < end_ns:
            k = 2 if self._rng.random() < 0.2 and len(self.instruments) > 1 else 1
            about = sorted(self._rng.choice(self.instruments, k, replace=False).tolist())
            self._n += 1
            what = _NEWS_WHAT[int(self._rng.integers(len(_NEWS_WHAT)))]
            rows.append(
                {
                    "news_id": f"{self._prefix}{self._n}",
                    "headline": f"{' and '.join(i.split('.')[0] for i in about)} {what}",
                    "instruments": about,
                    "source": NEWS_SOURCES[int(self._rng.integers(len(NEWS_SOURCES)))],
                    "ts_event": self._next,
                    "ts_init": self._next + int(self._rng.integers(50_000_000, 2_000_000_000)),
                }
            )
            self._next += self._gap()
        schema = pa.schema(
            [
                ("news_id", pa.string()),
                ("headline", pa.string()),
                ("instruments", pa.list_(pa.string())),
                ("source", pa.string()),
                ("ts_event", pa.int64()),
                ("ts_init", pa.int64()),
            ]
        )
        return pa.Table.from_pylist(rows, schema=schema)


def messages(table: pa.Table) -> list[bytes]:
    """JSON payloads (schema-versioned) for the rows of a feed's table (trades, quotes, book deltas, news)."""
    rows = table.to_pylist()
    return [orjson.dumps({"schema_version": SCHEMA_VERSION, **r}) for r in rows]
