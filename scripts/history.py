"""History mode: write N past days of simulated ticks straight into the lake's bronze Delta tables."""
from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa

from nautilus_assets.market_data import sinks
from nautilus_assets.market_data.decode import build_table
from nautilus_assets.market_data.schema import QUOTES, TRADES
from nautilus_assets.market_data.simulator import NS_PER_DAY, MarketSimulator
from resources.lake import LakeResource


def day_tables(instruments: list[str], day: date, events_per_day: int, seed: int) -> dict:
    start_ns = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
    sim = MarketSimulator(instruments, seed=seed, start_ns=start_ns, events_per_second=events_per_day / 86_400)
    parts = {TRADES.name: [], QUOTES.name: []}
    while sim.now_ns < start_ns + NS_PER_DAY:
        trades, quotes = sim.chunk()
        parts[TRADES.name].append(trades)
        parts[QUOTES.name].append(quotes)
    out = {}
    for feed in (TRADES, QUOTES):
        t = pa.concat_tables(parts[feed.name])
        t = t.filter(pa.compute.less(t["ts_event"], start_ns + NS_PER_DAY))
        n = t.num_rows
        out[feed.name] = build_table(
            feed, {name: t[name] for name, *_ in feed.fields}, ts_event=t["ts_event"], ts_init=t["ts_init"],
            topic="history", batch_id=f"history-{day}", now_ns=time.time_ns(),
            message_id=pa.array([f"h:{day}:{i}" for i in range(n)], pa.string()),
            ledger_id=pa.array([-1] * n, pa.int64()), entry_id=pa.array(range(n), pa.int64()))
    return out


def write_history(lake: LakeResource, instruments: list[str], days: int, events_per_day: int = 40_000,
                  seed: int = 11, end: date | None = None) -> dict:
    """Days end-days .. end-1 (UTC); idempotent (rows de-duplicate on their message ids)."""
    end = end or datetime.now(timezone.utc).date()
    totals = {TRADES.name: 0, QUOTES.name: 0}
    t0 = time.time()
    for k in range(days, 0, -1):
        day = end - timedelta(days=k)
        tables = day_tables(instruments, day, events_per_day, seed + day.toordinal())
        for feed in (TRADES, QUOTES):
            added, _ = sinks.write_delta(lake, feed, tables[feed.name], f"history-{day}")
            totals[feed.name] += added
        done = days - k + 1
        if done % 10 == 0 or done == days:
            print(f"[history] {done}/{days} days written ({totals}) in {time.time() - t0:.0f}s", flush=True)
    return totals
