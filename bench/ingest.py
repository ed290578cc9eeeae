"""Sustained ingest rate of the micro-batch code a run executes (consume, decode, validate, Delta +
ClickHouse, bars, ack; run launch excluded) against the raw pulsar-client consume+ack rate on the same
broker and messages, in the same process. Prints both and their ratio (goal: >= 0.5).

    .venv/bin/python -m bench.ingest [--ticks 200000] [--batch 100000]

Starts its own services instance (NAUTILUS_INSTANCE=bench, ports from 17500) and removes it afterwards.
"""
import argparse
import os
import time

os.environ.setdefault("NAUTILUS_INSTANCE", "bench")
os.environ.setdefault("NAUTILUS_PORT_BASE", "17500")

import pulsar  # noqa: E402

from nautilus_assets.market_data.ingest import receive, run_batch  # noqa: E402
from nautilus_assets.market_data.schema import TRADES  # noqa: E402
from nautilus_assets.market_data.simulator import MarketSimulator, messages  # noqa: E402
from resources.settings import apply, build_resources, load  # noqa: E402
from scripts import services  # noqa: E402
from scripts.cli import setup  # noqa: E402
from scripts.publisher import Publisher  # noqa: E402


def raw_rate(client, n: int) -> float:
    c = client.subscribe(TRADES.topic, "bench-raw", consumer_type=pulsar.ConsumerType.Shared,
                         initial_position=pulsar.InitialPosition.Earliest, receiver_queue_size=5000)
    t0, got = time.perf_counter(), 0
    while got < n:
        for m in receive(c, n - got, 60, idle_ms=2000):
            c.acknowledge(m)
            got += 1
    rate = n / (time.perf_counter() - t0)
    c.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=100_000)
    a = ap.parse_args()
    s = apply(load())
    services.start(s)
    try:
        setup(s)
        r = build_resources(s)
        with r["pulsar"].client() as client:
            client.subscribe(TRADES.topic, "bench-raw", consumer_type=pulsar.ConsumerType.Shared,
                             initial_position=pulsar.InitialPosition.Earliest).close()
            sim = MarketSimulator(["AAPL.XNAS", "MSFT.XNAS", "SPY.ARCX", "ESZ6.GLBX"], seed=1,
                                  start_ns=time.time_ns() - 3600 * 10**9, events_per_second=100)
            trades, _ = sim.take(a.ticks, 0)
            pub = Publisher(client)
            pub.send(TRADES.name, messages(trades))
            pub.flush()
            print(f"published {a.ticks} trades")
            raw = raw_rate(client, a.ticks)
        done, t0, stages = 0, time.perf_counter(), {}
        while done < a.ticks:
            res = run_batch(TRADES, r["pulsar"], r["lake"], r["clickhouse"], f"bench-{done}", a.batch, 120,
                            7 * 86400, log=lambda m: None)
            done += res.consumed
            for k, v in res.seconds.items():
                stages[k] = stages.get(k, 0) + v
        batch = done / (time.perf_counter() - t0)
        print(f"stage seconds: { {k: round(v, 2) for k, v in stages.items()} }")
        print(f"raw pulsar-client consume+ack: {raw:,.0f} msg/s")
        print(f"nautilus batch ingest:         {batch:,.0f} ticks/s")
        print(f"ratio: {batch / raw:.2f}  (goal >= 0.5)")
    finally:
        services.remove(s)


if __name__ == "__main__":
    main()
