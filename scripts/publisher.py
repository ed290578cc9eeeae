"""Publish market data to Pulsar: live simulation at a chosen rate, or replay of a Parquet/CSV file."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pulsar
import pyarrow as pa
import pyarrow.compute as pc

from nautilus_assets.market_data.orderbook import BookSimulator
from nautilus_assets.market_data.schema import NEWS, ORDERBOOK_DELTAS, QUOTES, REPLAY_PROPERTY, TRADES
from nautilus_assets.market_data.simulator import MarketSimulator, NewsSimulator, messages
from nautilus_assets.portfolio.models import FILLS_TOPIC, fill_messages, model_fills
from resources import schemas
from resources.pulsar import PulsarResource


class Publisher:
    """Producers for the trades, quotes and order-book topics (and the model portfolios' fills); every send is
    checked (no silent loss)."""

    def __init__(self, client: pulsar.Client, properties: dict | None = None, fills: bool = False):
        self.properties = properties or {}
        self.errors: list = []
        topics = {
            TRADES.name: TRADES.topic,
            QUOTES.name: QUOTES.topic,
            ORDERBOOK_DELTAS.name: ORDERBOOK_DELTAS.topic,
            NEWS.name: NEWS.topic,
            **({"fills": FILLS_TOPIC} if fills else {}),
        }
        # counted from 0 for the trades and quotes (and fills); the order book and news once something is sent
        self.sent = dict.fromkeys([TRADES.name, QUOTES.name, *(["fills"] if fills else [])], 0)
        self.producers = {
            name: schemas.create_producer(
                client,
                topic,
                block_if_queue_full=True,
                batching_enabled=True,
                batching_max_messages=1000,
                max_pending_messages=20000,
            )
            for name, topic in topics.items()
        }

    def _callback(self, res, _msg_id):
        if res != pulsar.Result.Ok:
            self.errors.append(res)

    def send(self, feed_name: str, payloads: list[bytes]) -> None:
        p = self.producers[feed_name]
        for b in payloads:
            p.send_async(b, self._callback, properties=self.properties)
        self.sent[feed_name] = self.sent.get(feed_name, 0) + len(payloads)

    def flush(self) -> None:
        for p in self.producers.values():
            p.flush()
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} sends failed: {set(map(str, self.errors))}")


def publish_tables(
    res: PulsarResource,
    trades: pa.Table,
    quotes: pa.Table,
    properties: dict | None = None,
    book: pa.Table | None = None,
) -> dict:
    with res.client() as client:
        pub = Publisher(client, properties)
        pub.send(TRADES.name, messages(trades))
        pub.send(QUOTES.name, messages(quotes))
        if book is not None:
            pub.send(ORDERBOOK_DELTAS.name, messages(book))
        pub.flush()
        return pub.sent


def simulate(
    res: PulsarResource,
    instruments: list[str],
    rate: float,
    duration_s: float | None = None,
    seed: int = 7,
    progress_every_s: float = 10.0,
) -> dict:
    """Publish a live simulated market at `rate` events/s, event times paced to the wall clock: trades, quotes,
    the order book's deltas (an MBP-10 book whose top is each quote), news, and the model portfolios' fills."""
    # a flat rate: the live feed is a load the operator chooses (history carries the intraday profile)
    start_ns = time.time_ns()
    sim = MarketSimulator(instruments, seed=seed, start_ns=start_ns, events_per_second=rate, intraday_profile=False)
    books = BookSimulator(instruments, seed=seed, start_ns=start_ns)
    newswire = NewsSimulator(instruments, seed=seed, start_ns=start_ns)
    t_end = time.time() + duration_s if duration_s else float("inf")
    last_report, chunk_no = time.time(), 0
    with res.client() as client:
        pub = Publisher(client, fills=True)
        while time.time() < t_end:
            start_ns = sim.now_ns
            trades, quotes = sim.chunk(max(100, int(rate)))
            deltas = books.deltas(quotes)
            news = newswire.until(sim.now_ns + 1)
            fills = model_fills(trades, seed=seed + chunk_no)
            chunk_no += 1
            for lo_ns in range(start_ns, sim.now_ns + 1, 100_000_000):
                hi_ns = lo_ns + 100_000_000
                time.sleep(max(0.0, hi_ns / 1e9 - time.time()))
                for name, t, render in (
                    (TRADES.name, trades, messages),
                    (QUOTES.name, quotes, messages),
                    (ORDERBOOK_DELTAS.name, deltas, messages),
                    (NEWS.name, news, messages),
                    ("fills", fills, fill_messages),
                ):
                    ts = t["ts_event"].to_numpy()
                    a, b = np.searchsorted(ts, [lo_ns, hi_ns])
                    if b > a:
                        pub.send(name, render(t.slice(a, b - a)))
                if time.time() >= t_end:
                    break
            pub.flush()
            if time.time() - last_report >= progress_every_s:
                print(f"[simulator] published {pub.sent}", flush=True)
                last_report = time.time()
        pub.flush()
        return pub.sent


def load_ticks(path: Path) -> tuple[pa.Table, pa.Table]:
    """A Parquet or CSV file of ticks: a `type` column ('trade'/'quote') and the message fields."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    t = pq.read_table(path) if path.suffix == ".parquet" else pcsv.read_csv(path)
    split = {}
    for feed, kind in ((TRADES, "trade"), (QUOTES, "quote")):
        cols = [n for n, *_ in feed.fields] + ["ts_event", "ts_init"]
        part = t.filter(pc.equal(t["type"], kind)).sort_by("ts_event")
        missing = [c for c in cols if c not in part.column_names and c not in feed.optional]
        if missing and part.num_rows:
            raise ValueError(f"{path}: {kind} rows lack columns {missing}")
        split[kind] = part.select([c for c in cols if c in part.column_names])
    return split["trade"], split["quote"]


def replay(res: PulsarResource, path: Path, rate: float | None = None) -> dict:
    """Publish a file of historical ticks, marked as a historical replay (exempt from the lateness bound)."""
    trades, quotes = load_ticks(path)
    props = {REPLAY_PROPERTY: "historical"}
    if not rate:
        return publish_tables(res, trades, quotes, props)
    with res.client() as client:
        pub = Publisher(client, props)
        step = max(1, int(rate))
        for i in range(0, max(trades.num_rows, quotes.num_rows), step):
            t0 = time.time()
            pub.send(TRADES.name, messages(trades.slice(i, step)))
            pub.send(QUOTES.name, messages(quotes.slice(i, step)))
            time.sleep(max(0.0, 1 - (time.time() - t0)))
        pub.flush()
        return pub.sent
