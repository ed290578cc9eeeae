"""The micro-batch loop a long-lived run executes (ingest.Stream: receive windows, decode, validate, Delta +
ClickHouse, bars, announce, ack, the checks' ClickHouse reads; run launch and Dagster event logging excluded)
against raw pulsar-client consume+ack (the same receive windows) on the same broker and the same kind of messages.

    .venv/bin/python -m bench.ingest [--ticks 100000] [--batch 20000] [--repeats 5]
    .venv/bin/python -m bench.ingest --preload 20000000 [--batch 20000] [--repeats 5]

Rate (default): after a warm-up round, `--repeats` rounds that alternate raw and Nautilus on fresh messages each
(so both see the same broker state); prints each round, the median of each and the ratio of the medians
(goal >= 0.5), and the median seconds of each stage of a batch (the profile). --batch defaults to the runs'
NAUTILUS_BATCH_MAX_MESSAGES.

Flat in history (--preload N): median per-batch commit seconds on empty tables, then N synthetic trades are put
into today's partition (ClickHouse trades and trade_ids, and Delta bronze/trades, in 1M-row files whose message
ids lie outside any live batch's span), then the same batches again; prints both medians and their ratio
(goal <= 1.3).

Starts its own services instance (NAUTILUS_INSTANCE=bench, ports from 17500) and removes it afterwards.
Prints figures; asserts nothing.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("NAUTILUS_INSTANCE", "bench")
os.environ.setdefault("NAUTILUS_PORT_BASE", "17500")

import numpy as np
import pulsar
import pyarrow as pa

from nautilus_assets.market_data.ingest import Stream, receive_window
from nautilus_assets.market_data.schema import TRADES
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
        ids = pa.array([f"B{self.seed}-{t}" for t in trades["trade_id"].to_pylist()])
        self.pub.send(
            TRADES.name, messages(trades.set_column(trades.schema.get_field_index("trade_id"), "trade_id", ids))
        )
        self.pub.flush()


def _first(receive_batch, deadline_s: float = 60) -> list:
    """The first messages of a round: a fresh consumer may wait seconds for its first dispatch (not counted)."""
    t = time.monotonic()
    while time.monotonic() - t < deadline_s:
        if msgs := receive_batch():
            return msgs
    raise TimeoutError("no message within a minute")


def raw_round(client, n: int, batch: int) -> float:
    """pulsar-client alone: the same receive windows as a run (C++ messages), then an acknowledgement each."""
    c = client.subscribe(
        TRADES.topic,
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


def nautilus_round(r, n: int, batch: int, label: str) -> tuple[float, list[float], list[float]]:
    """A run's commit loop (ingest.Stream: receive windows, decode, Delta + ClickHouse, bars, announce, ack, and the
    checks' ClickHouse reads on the inspector thread) until n ticks are in; the run's launch, its consumer's first
    dispatch and its Dagster event logging are not counted. Returns (ticks/s, each batch's commit seconds, each
    batch's check-read seconds)."""
    done, per_batch, inspected = 0, [], []
    with Stream(TRADES, r["pulsar"], r["lake"], r["clickhouse"], 7 * 86400, log=lambda m: None, inspect=True) as stream:
        take = lambda: stream.receive(min(batch, n - done), 0.5)  # noqa: E731
        msgs = _first(take)
        t0 = time.perf_counter()
        while True:
            res = stream.commit(f"{label}.{len(per_batch) + 1}", msgs)
            per_batch.append(sum(v for k, v in res.seconds.items() if not k.startswith("clickhouse_")))
            for k, v in res.seconds.items():
                STAGES.setdefault(k, []).append(v)
            inspected.append(res.inspected)
            done += res.consumed
            if done >= n:
                break
            msgs = take()
        checks = [f.result() for f in inspected]  # the last batch's check reads are part of the work
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
    a = ap.parse_args()
    s = load()
    s = apply(services.start(s))
    try:
        setup(s)
        r = build_resources(s)
        with r["pulsar"].client() as client:
            client.subscribe(
                TRADES.topic,
                RAW_SUB,
                consumer_type=pulsar.ConsumerType.Shared,
                initial_position=pulsar.InitialPosition.Earliest,
            ).close()
            feed = Feeder(client)
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
            raws, ours = [], []
            for k in range(a.repeats + 1):
                feed.publish(a.ticks)
                raw = raw_round(client, a.ticks, a.batch)
                ours_k, _, _ = nautilus_round(r, a.ticks, a.batch, f"round{k}")
                label = "warm-up" if k == 0 else f"round {k}"
                print(
                    f"{label}: raw {raw:,.0f} msg/s, nautilus {ours_k:,.0f} ticks/s, ratio {ours_k / raw:.2f}",
                    flush=True,
                )
                if k == 0:
                    STAGES.clear()
                else:
                    raws.append(raw)
                    ours.append(ours_k)
        raw_m, ours_m = float(np.median(raws)), float(np.median(ours))
        print(
            f"median raw pulsar-client consume+ack: {raw_m:,.0f} msg/s; median nautilus batch ingest: "
            f"{ours_m:,.0f} ticks/s; ratio {ours_m / raw_m:.2f}  (goal >= 0.5)"
        )
        print(
            "median seconds per batch by stage: "
            + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in STAGES.items())
        )
    finally:
        services.remove(s)


if __name__ == "__main__":
    main()
