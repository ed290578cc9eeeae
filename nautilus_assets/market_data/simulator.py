"""A synthetic market: random-walk prices with intraday (U-shaped) volatility, top-of-book quotes and
trades, and bursts of one-sided (toxic) flow. Pure and deterministic for (instruments, seed, start_ns).

Events come in chunks of `CHUNK` (state carries over), as Arrow tables of trades and quotes in the
message field layout of `schema.py`; `messages()` renders them as JSON payloads.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa

from .schema import SCHEMA_VERSION

CHUNK = 10_000
NS_PER_DAY = 86_400 * 1_000_000_000
BASE_PRICES = {"AAPL": 230.0, "MSFT": 420.0, "SPY": 590.0, "ESZ6": 5950.0, "BTCUSDT": 95000.0}


@dataclass
class MarketSimulator:
    instruments: list[str]
    seed: int = 7
    start_ns: int = 0
    events_per_second: float = 200.0    # event density in simulated time (all instruments)
    trade_share: float = 0.5             # fraction of events that are trades (the rest are quote updates)
    daily_vol: float = 0.02              # per-instrument daily volatility of log price (off-burst)
    burst_rate: float = 1 / 4000         # chance per event that a toxic burst starts on its instrument
    burst_events: int = 600              # events per burst
    burst_move: float = 0.01             # log-price drift of a whole burst in its direction (1%)
    _state: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if not self.instruments:
            raise ValueError("at least one instrument")
        self._rng = np.random.default_rng([self.seed, self.start_ns % 2**63])
        self._t = self.start_ns
        # unique across simulator runs (a restarted simulator must not reuse trade ids), deterministic for the inputs
        self._id_prefix = f"S{self.seed}T{self.start_ns // 1_000_000}-"
        k = len(self.instruments)
        self._log_mid = np.log([BASE_PRICES.get(i.split(".")[0], 100.0 + 50 * (zlib.crc32(i.encode()) % 10))
                                for i in self.instruments])
        self._trade_seq = np.zeros(k, np.int64)
        self._burst_left = np.zeros(k, np.int64)
        self._burst_side = np.ones(k, np.int64)

    @property
    def now_ns(self) -> int:
        return self._t

    def chunk(self, n: int = CHUNK) -> tuple[pa.Table, pa.Table]:
        """The next n events as (trades, quotes)."""
        rng, k = self._rng, len(self.instruments)
        gaps = rng.exponential(1e9 / self.events_per_second, n).astype(np.int64) + 1
        ts = self._t + np.cumsum(gaps)
        self._t = int(ts[-1])
        inst = rng.integers(0, k, n)
        is_trade = rng.random(n) < self.trade_share
        # intraday volatility: U-shaped over the UTC day, twice as high at the open/close as at midday
        frac = (ts % NS_PER_DAY) / NS_PER_DAY
        u_shape = 0.6 + 1.6 * (2 * frac - 1) ** 2
        sigma = self.daily_vol / np.sqrt(self.events_per_second / k * 86_400)  # per event: a day gives daily_vol
        side_in_burst, in_burst = self._bursts(inst, rng)
        shocks = rng.standard_normal(n) * sigma * u_shape * np.where(in_burst, 1.5, 1.0)
        # toxic flow moves the price its way: `burst_move` over a burst, whatever the event density
        shocks += np.where(in_burst, side_in_burst * self.burst_move / self.burst_events, 0.0)
        log_mid = np.empty(n)
        for j in range(k):
            idx = np.flatnonzero(inst == j)
            if idx.size:
                path = self._log_mid[j] + np.cumsum(shocks[idx])
                log_mid[idx] = path
                self._log_mid[j] = path[-1]
        mid = np.exp(log_mid)
        tick = np.where(mid > 1000, 0.25, 0.01)
        half_spread = tick * (1 + rng.integers(0, 3, n))
        bid = np.round((mid - half_spread) / tick) * tick
        ask = np.maximum(np.round((mid + half_spread) / tick) * tick, bid + tick)
        # aggressor side: toxic bursts are 90% one-sided, otherwise balanced
        buyer = np.where(in_burst, rng.random(n) < np.where(side_in_burst > 0, 0.9, 0.1), rng.random(n) < 0.5)
        size = np.ceil(rng.lognormal(3.0, 1.0, n) * np.where(in_burst, 3.0, 1.0))
        ts_init = ts + rng.integers(20_000, 2_000_000, n)
        names = np.array(self.instruments, dtype=object)

        t = np.flatnonzero(is_trade)
        seq = np.empty(t.size, np.int64)
        for j in range(k):
            sel = inst[t] == j
            cnt = int(sel.sum())
            seq[sel] = self._trade_seq[j] + np.arange(1, cnt + 1)
            self._trade_seq[j] += cnt
        trades = pa.table({
            "instrument_id": pa.array(names[inst[t]], pa.string()),
            "price": np.round(np.where(buyer[t], ask[t], bid[t]), 8),
            "size": size[t],
            "aggressor_side": pa.array(np.where(buyer[t], "BUYER", "SELLER"), pa.string()),
            "trade_id": pa.array([f"{self._id_prefix}{s}" for s in seq], pa.string()),
            "ts_event": ts[t], "ts_init": ts_init[t]})
        q = np.flatnonzero(~is_trade)
        quotes = pa.table({
            "instrument_id": pa.array(names[inst[q]], pa.string()),
            "bid_price": np.round(bid[q], 8), "ask_price": np.round(ask[q], 8),
            "bid_size": np.ceil(rng.lognormal(4.0, 0.8, q.size)), "ask_size": np.ceil(rng.lognormal(4.0, 0.8, q.size)),
            "ts_event": ts[q], "ts_init": ts_init[q]})
        return trades, quotes

    def _bursts(self, inst: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        """Per event: the burst side (+1 buy / -1 sell) and whether its instrument is in a toxic burst."""
        n = inst.size
        starts = rng.random(n) < self.burst_rate
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
            in_new = (last >= 0) & (pos - last < self.burst_events)
            carry = (last < 0) & (pos < self._burst_left[j])               # a burst running from the last chunk
            active[idx] = in_new | carry
            side[idx] = np.where(in_new, new_side[idx][np.maximum(last, 0)], self._burst_side[j])
            if last[-1] >= 0:
                self._burst_left[j] = max(0, self.burst_events - (m - last[-1]))
                self._burst_side[j] = new_side[idx][last[-1]]
            else:
                self._burst_left[j] = max(0, int(self._burst_left[j]) - m)
        return side, active

    def take(self, n_trades: int, n_quotes: int) -> tuple[pa.Table, pa.Table]:
        """At least the first n_trades trades and n_quotes quotes, cut to exactly those counts."""
        ts, qs, nt, nq = [], [], 0, 0
        while nt < n_trades or nq < n_quotes:
            t, q = self.chunk()
            ts.append(t); qs.append(q); nt += t.num_rows; nq += q.num_rows
        return pa.concat_tables(ts).slice(0, n_trades), pa.concat_tables(qs).slice(0, n_quotes)


def messages(table: pa.Table) -> list[bytes]:
    """JSON payloads (schema-versioned) for the rows of a trades or quotes table."""
    rows = table.to_pylist()
    return [orjson.dumps({"schema_version": SCHEMA_VERSION, **r}) for r in rows]
