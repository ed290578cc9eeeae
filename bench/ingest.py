"""The micro-batch loop a long-lived run executes (ingest.Stream: receive windows, decode, validate, Delta +
ClickHouse, bars, announce, ack, the checks' ClickHouse reads; run launch and Dagster event logging excluded)
against raw pulsar-client consume+ack (the same receive windows) on the same broker and the same kind of messages.

    .venv/bin/python -m bench.ingest [--feed trades|orderbook] [--ticks 100000] [--batch 20000] [--repeats 5]
    .venv/bin/python -m bench.ingest --preload 20000000 [--batch 20000] [--repeats 5]

Rate (default): after a warm-up round, `--repeats` rounds that alternate raw and Nautilus on fresh messages each
(so both see the same broker state); prints each round, the median of each and the ratio of the medians
(goal >= 0.5), and the median seconds of each stage of a batch (the profile; "receive (bench)" is the wait for
the next window between commits, which the rate includes). --batch defaults to the runs'
NAUTILUS_BATCH_MAX_MESSAGES. Every round's trades are in the past (an earlier Feeder let half of a 100,000-trade
round lie over a minute ahead of its publish time: quarantined as future_ts_event, not stored); each round prints
the rows stored and quarantined.

--feed orderbook: the same rounds on the order-book deltas (--ticks deltas a round): one BookSimulator fed
consecutive quote chunks of one MarketSimulator across the rounds, so each round's deltas continue the stored books
(a reused (instrument, sequence) would be quarantined as a duplicate); each batch also runs the book stage (stored
states read, rebuild, depth-10 rows and states written, book-changes announced). Asserts that no round quarantines
anything and prints the rows stored (deltas, depth-10 rows) and the book counters. --profile adds one more round,
not counted, with Stream.commit under cProfile (the commit thread only; the feed's Delta write runs on a pool
thread): prints the top functions and dumps /tmp/bench-ingest-<feed>.prof.

Flat in history (--preload N): median per-batch commit seconds on empty tables, then N synthetic trades are put
into today's partition (ClickHouse trades and trade_ids, and Delta bronze/trades, in 1M-row files whose message
ids lie outside any live batch's span), then the same batches again; prints both medians and their ratio
(goal <= 1.3).

Starts its own services instance (NAUTILUS_INSTANCE=bench, ports from 17500) and removes it afterwards.
Prints figures; asserts nothing but the order-book rounds' clean books (no quarantine, gap or crossing).
"""

import argparse
import cProfile
import io
import os
import pstats
import statistics
import time

os.environ.setdefault("NAUTILUS_INSTANCE", "bench")
os.environ.setdefault("NAUTILUS_PORT_BASE", "17500")

import numpy as np
import pulsar
import pyarrow as pa
import pyarrow.compute as pc

from nautilus_assets.market_data.ingest import Stream, receive_window
from nautilus_assets.market_data.orderbook import BookSimulator
from nautilus_assets.market_data.schema import ORDERBOOK_DELTAS, TRADES
from nautilus_assets.market_data.simulator import MarketSimulator, messages
from nautilus_assets.market_data.sinks import bronze_table
from resources.settings import apply, build_resources, load, streaming
from scripts import services
from scripts.provision import setup
from scripts.publisher import Publisher

INSTRUMENTS = ["AAPL.XNAS", "MSFT.XNAS", "SPY.ARCX", "ESZ6.GLBX"]
RAW_SUB = "bench-raw"


class Feeder:
    """Fresh simulated trades (ids never repeat) published on the trades topic, which both subscriptions see."""

    def __init__(self, client):
        self.client, self.pub, self.seed = client, Publisher(client), 0

    def publish(self, n: int) -> None:
        self.seed += 1
        sim = MarketSimulator(
            INSTRUMENTS, seed=self.seed, start_ns=time.time_ns() - 1800 * 10**9, events_per_second=100
        )
        trades, _ = sim.take(n, 0)
        # n trades span about n / 50 s of event time: moved back so the last is a second old (one more than
        # FUTURE_TOLERANCE past its publish time would be quarantined as future_ts_event, not stored)
        if (late := pc.max(trades["ts_init"]).as_py() - (time.time_ns() - 10**9)) > 0:
            for c in ("ts_event", "ts_init"):
                trades = trades.set_column(trades.schema.get_field_index(c), c, pc.subtract(trades[c], late))
        ids = pa.array([f"B{self.seed}-{t}" for t in trades["trade_id"].to_pylist()])
        self.pub.send(
            TRADES.name, messages(trades.set_column(trades.schema.get_field_index("trade_id"), "trade_id", ids))
        )
        self.pub.flush()


class BookFeeder:
    """Fresh order-book deltas on the deltas topic: one BookSimulator across the rounds, fed consecutive quote chunks
    of one MarketSimulator, so sequences continue the stored books and never repeat; exactly n deltas a round (a
    group cut at a round's end is finished by the next round's first deltas, as a batch boundary cuts one)."""

    def __init__(self, client, total: int, seed: int = 1):
        # 50 quotes/s of event time, 5-7 deltas each: `total` deltas span at most total / 250 s, all in the past
        start_ns = time.time_ns() - (total // 200 + 600) * 10**9
        self.pub = Publisher(client)
        self.market = MarketSimulator(
            INSTRUMENTS, seed=seed, start_ns=start_ns, events_per_second=100, intraday_profile=False
        )
        self.books = BookSimulator(INSTRUMENTS, seed=seed, start_ns=start_ns)
        self.pending: pa.Table | None = None
        self.quotes = self.made = 0

    def publish(self, n: int) -> None:
        parts = [self.pending] if self.pending is not None else []
        have = self.pending.num_rows if self.pending is not None else 0
        while have < n:
            _, quotes = self.market.chunk()
            self.quotes += quotes.num_rows
            parts.append(self.books.deltas(quotes))
            have += parts[-1].num_rows
            self.made += parts[-1].num_rows
        deltas = pa.concat_tables(parts)
        self.pending = deltas.slice(n)
        self.pub.send(ORDERBOOK_DELTAS.name, messages(deltas.slice(0, n)))
        self.pub.flush()


def _first(receive_batch, deadline_s: float = 60) -> list:
    """The first messages of a round: a fresh consumer may wait seconds for its first dispatch (not counted)."""
    t = time.monotonic()
    while time.monotonic() - t < deadline_s:
        if msgs := receive_batch():
            return msgs
    raise TimeoutError("no message within a minute")


def raw_round(client, n: int, batch: int, topic: str = TRADES.topic) -> float:
    """pulsar-client alone: the same receive windows as a run (C++ messages), then an acknowledgement each."""
    c = client.subscribe(
        topic,
        RAW_SUB,
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
        receiver_queue_size=20_000,
    )
    got = 0
    take = lambda: receive_window(c, min(batch, n - got), 0.5, raw=True)  # noqa: E731
    msgs = _first(take)
    t0 = time.perf_counter()
    while True:
        for m in msgs:
            c.acknowledge(m)
        got += len(msgs)
        if got >= n:
            break
        msgs = take()
    rate = n / (time.perf_counter() - t0)
    c.close()
    return rate


STAGES: dict[str, list[float]] = {}  # each counted batch's stage seconds (BatchResult.seconds), for the profile
BOOK_KEYS = ("gaps", "crossed", "snapshot_mismatches", "quarantined", "carried")


def nautilus_round(
    r, n: int, batch: int, label: str, feed=TRADES, tally: dict | None = None, profile: cProfile.Profile | None = None
) -> tuple[float, list[float], list[float]]:
    """A run's commit loop (ingest.Stream: receive windows, decode, Delta + ClickHouse, bars, announce, ack, and the
    checks' ClickHouse reads on the inspector thread) until n ticks are in; the run's launch, its consumer's first
    dispatch and its Dagster event logging are not counted. Returns (ticks/s, each batch's commit seconds, each
    batch's check-read seconds). `tally` gets the batches' counts added (rows stored, quarantined, book counters);
    `profile` is enabled around each commit."""
    done, per_batch, inspected = 0, [], []
    tally = {} if tally is None else tally
    with Stream(feed, r["pulsar"], r["lake"], r["clickhouse"], 7 * 86400, log=lambda m: None, inspect=True) as stream:
        take = lambda: stream.receive(min(batch, n - done), 0.5)  # noqa: E731
        msgs = _first(take)
        t0 = time.perf_counter()
        while True:
            if profile is not None:
                profile.enable()
            res = stream.commit(f"{label}.{len(per_batch) + 1}", msgs)
            if profile is not None:
                profile.disable()
            for k, v in (
                ("batches", 1),
                ("consumed", res.consumed),
                ("quarantined", res.quarantined),
                ("stored", res.written_clickhouse),
                ("stored_delta", res.written_delta),
            ):
                tally[k] = tally.get(k, 0) + v
            if res.book is not None:
                tally["depth_rows"] = tally.get("depth_rows", 0) + res.book.written_clickhouse
                tally["depth_rows_delta"] = tally.get("depth_rows_delta", 0) + res.book.written_delta
                for k in BOOK_KEYS:
                    tally[f"book_{k}"] = tally.get(f"book_{k}", 0) + getattr(res.book, k)
            per_batch.append(sum(v for k, v in res.seconds.items() if not k.startswith("clickhouse_")))
            for k, v in res.seconds.items():
                if profile is None:  # a profiled round's stages are slowed by the profiler
                    STAGES.setdefault(k, []).append(v)
            inspected.append(res.inspected)
            done += res.consumed
            if done >= n:
                break
            t = time.perf_counter()
            msgs = take()
            if profile is None:  # the receive window between commits (not a BatchResult stage)
                STAGES.setdefault("receive (bench)", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        checks = [f.result() for f in inspected]  # the last batch's check reads are part of the work
        if profile is None:
            STAGES.setdefault("last checks (bench, per round)", []).append(time.perf_counter() - t)
        rate = done / (time.perf_counter() - t0)
    return rate, per_batch, checks


def preload(r, n: int, chunk: int = 1_000_000) -> None:
    """n synthetic trades earlier today (ledger ids from 10**12: outside any live span), in every store a batch
    looks into: ClickHouse trades + trade_ids (generated by ClickHouse itself) and Delta bronze/trades."""
    from deltalake import write_deltalake

    today_ns = time.time_ns() // 86_400_000_000_000 * 86_400_000_000_000
    span_ns = max(time.time_ns() - 3600 * 10**9 - today_ns, 10**9)
    t0 = time.time()
    gen = (
        "SELECT number, 'persistent://nautilus/market-data/trades' AS topic, "
        "concat('P:', toString(number)) AS message_id, "
        f"toInt64(1000000000000 + intDiv(number, 100000)) AS ledger_id, toInt64(number % 100000) AS entry_id, "
        f"'preload' AS batch_id, ['{INSTRUMENTS[0]}','{INSTRUMENTS[1]}','{INSTRUMENTS[2]}','{INSTRUMENTS[3]}']"
        f"[1 + number % 4] AS instrument_id, 100 + (number % 1000) / 100 AS price, 1 + number % 50 AS size, "
        f"if(number % 2 = 0, 'BUYER', 'SELLER') AS aggressor_side, concat('P-', toString(number)) AS trade_id, "
        f"toInt64({today_ns} + intDiv(number * {span_ns}, {n})) AS ts_event, ts_event AS ts_init FROM numbers({n})"
    )
    with r["clickhouse"].session() as c:
        cols = [x[0] for x in c.query("DESCRIBE TABLE market_data.trades").result_rows]
        select = {
            "ts": "fromUnixTimestamp64Nano(ts_event, 'UTC')",
            "date": "toDate(fromUnixTimestamp64Nano(ts_event, 'UTC'))",
            "ingested_at": "now64(6)",
            "schema_version": "1",
        }
        exprs = ", ".join(select.get(col, col) + f" AS `{col}`" for col in cols)
        c.command(f"INSERT INTO market_data.trades SELECT {exprs} FROM ({gen})", settings={"max_insert_threads": 2})
        c.command(
            f"INSERT INTO market_data.trade_ids SELECT instrument_id, toDate(fromUnixTimestamp64Nano(ts_event, "
            f"'UTC')), trade_id, message_id FROM ({gen})"
        )
        print(f"preloaded {n:,} rows into ClickHouse in {time.time() - t0:.0f}s", flush=True)
        lake = r["lake"]
        dt = lake.table(bronze_table(TRADES))
        schema = dt.schema().to_arrow() if dt is not None else None
        for k in range(0, n, chunk):
            t = c.query_arrow(f"SELECT {exprs} FROM ({gen}) WHERE number >= {k} AND number < {k + chunk}")
            t = pa.table(t)
            if schema is not None:
                t = t.select([f.name for f in pa.schema(schema)]).cast(
                    pa.schema(schema), safe=False
                )  # ts: Delta keeps µs
            write_deltalake(
                lake.uri(bronze_table(TRADES)),
                t,
                mode="append",
                partition_by=["date"],
                storage_options=lake.storage_options,
            )
    print(f"preloaded {n:,} rows into ClickHouse and Delta in {time.time() - t0:.0f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=100_000, help="messages per round (rate mode)")
    ap.add_argument("--batch", type=int, default=streaming().batch_max_messages, help="messages per batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preload", type=int, default=0, help="rows put into today's partition between the phases")
    ap.add_argument("--feed", choices=("trades", "orderbook"), default="trades", help="the feed (rate mode)")
    ap.add_argument("--profile", action="store_true", help="one more round (not counted) under cProfile")
    a = ap.parse_args()
    if a.preload and a.feed != "trades":
        ap.error("--preload measures the trades feed")
    feed_def = ORDERBOOK_DELTAS if a.feed == "orderbook" else TRADES
    unit = "deltas" if a.feed == "orderbook" else "ticks"
    s = load()
    s = apply(services.start(s))
    try:
        setup(s)
        r = build_resources(s)
        with r["pulsar"].client() as client:
            client.subscribe(
                feed_def.topic,
                RAW_SUB,
                consumer_type=pulsar.ConsumerType.Shared,
                initial_position=pulsar.InitialPosition.Earliest,
            ).close()
            rounds = a.repeats + 1 + a.profile
            feed = BookFeeder(client, a.ticks * rounds) if a.feed == "orderbook" else Feeder(client)
            if a.preload:
                phases = {}
                for phase in ("empty", "preloaded"):
                    if phase == "preloaded":
                        preload(r, a.preload)
                    feed.publish(a.batch)  # warm-up batch, not counted
                    raw_round(client, a.batch, a.batch)
                    nautilus_round(r, a.batch, a.batch, f"warm-{phase}")
                    feed.publish(a.batch * a.repeats)
                    raw_round(client, a.batch * a.repeats, a.batch)
                    _, secs, checks = nautilus_round(r, a.batch * a.repeats, a.batch, phase)
                    phases[phase] = statistics.median(secs)
                    phases[f"{phase} checks"] = statistics.median(checks)
                    print(
                        f"{phase}: per-batch commit seconds {[round(x, 3) for x in secs]}, median "
                        f"{phases[phase]:.3f}; check reads (after the ack) median {statistics.median(checks):.3f}",
                        flush=True,
                    )
                print(
                    f"ratio preloaded / empty: {phases['preloaded'] / phases['empty']:.2f}  (goal <= 1.3; "
                    f"{a.preload:,} rows preloaded, batches of {a.batch:,}); check reads "
                    f"{phases['preloaded checks'] / phases['empty checks']:.2f}"
                )
                return
            raws, ours, tally = [], [], {}
            for k in range(rounds):
                feed.publish(a.ticks)
                raw = raw_round(client, a.ticks, a.batch, feed_def.topic)
                prof = cProfile.Profile() if k > a.repeats else None
                round_tally: dict = {}
                ours_k, _, _ = nautilus_round(r, a.ticks, a.batch, f"round{k}", feed_def, round_tally, prof)
                label = "warm-up" if k == 0 else "profiled (not counted)" if prof else f"round {k}"
                line = f"{label}: raw {raw:,.0f} msg/s, nautilus {ours_k:,.0f} {unit}/s, ratio {ours_k / raw:.2f}"
                if a.feed == "trades":
                    line += f"; stored {round_tally['stored']:,}, quarantined {round_tally['quarantined']:,}"
                if a.feed == "orderbook":
                    assert round_tally.get("quarantined", 0) == 0, f"{label} quarantined: {round_tally}"
                    assert not any(round_tally.get(f"book_{x}", 0) for x in ("gaps", "crossed", "quarantined")), (
                        f"{label}: {round_tally}"
                    )
                    line += (
                        f"; {round_tally['batches']} batches, stored {round_tally['stored']:,} deltas "
                        f"(Delta {round_tally['stored_delta']:,}), {round_tally.get('depth_rows', 0):,} depth-10 rows "
                        f"(Delta {round_tally.get('depth_rows_delta', 0):,}), quarantined "
                        f"{round_tally['quarantined']}, carried {round_tally.get('book_carried', 0)}, "
                        f"snapshot mismatches {round_tally.get('book_snapshot_mismatches', 0)}"
                    )
                print(line + f"; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
                if k == 0:
                    STAGES.clear()
                elif prof is None:
                    raws.append(raw)
                    ours.append(ours_k)
                    for key, v in round_tally.items():
                        tally[key] = tally.get(key, 0) + v
                else:
                    out = io.StringIO()
                    st = pstats.Stats(prof, stream=out).strip_dirs()
                    st.sort_stats("cumulative").print_stats(30)
                    st.sort_stats("tottime").print_stats(25)
                    st.sort_stats("cumulative").print_stats(r"books\.py|sinks\.py|orderbook\.py|decode\.py", 40)
                    prof.dump_stats(f"/tmp/bench-ingest-{a.feed}.prof")
                    print(f"cProfile of Stream.commit (commit thread), {a.ticks:,} {unit}:\n{out.getvalue()}")
        raw_m, ours_m = float(np.median(raws)), float(np.median(ours))
        print(
            f"median raw pulsar-client consume+ack: {raw_m:,.0f} msg/s; median nautilus batch ingest: "
            f"{ours_m:,.0f} {unit}/s; ratio {ours_m / raw_m:.2f}  (goal >= 0.5)"
        )
        print(
            "median seconds per batch by stage: "
            + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in STAGES.items())
        )
        if a.feed == "orderbook":
            print(f"counted rounds in all: {tally}; deltas per quote {feed.made / feed.quotes:.2f}")
    finally:
        services.remove(s)


if __name__ == "__main__":
    main()
