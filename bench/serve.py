"""The product APIs under load, against direct store queries measured in the same run.

    .venv/bin/python -m bench.serve [--seconds 15] [--concurrency 2] [--stream-seconds 120] [--rate 2000]

Starts its own instance (NAUTILUS_INSTANCE=serve, ports from NAUTILUS_PORT_BASE=27500; removed afterwards), writes
two days of history for two instruments into ClickHouse, computes their indicators, starts the APIs (`nautilus
api`) and prints:

1. /latest from Redis (market_analytics): requests/s and server time (Server-Timing) p50/p99 under a bounded
   aiohttp load on loopback (`--concurrency` connections, at most `--requests` requests in `--seconds`); baseline:
   the same reads straight from Redis (HGETALL, same client library, same concurrency). The clients and the
   baselines run in a process of their own at nice 19: they stand in for readers on other machines.
   Goals: p99 server time <= 1 ms, >= 2,000 requests/s.
2. One instrument-day of 1-minute indicators as Arrow: p50 end to end through the API vs the same query straight
   to ClickHouse (clickhouse-connect, Arrow). Goals: p50 <= 50 ms, ratio <= 2.
3. With the streaming platform up (dagster-daemon, every sensor, a steady publish at `--rate` msg/s): the ingest
   runs' commit time per batch for `--stream-seconds` without API load, then as long with the load of 1. and 2.
   running; prints figures 1 and 2 again under that load and p99 commit time with ÷ without (goal <= 1.3).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time

os.environ.setdefault("NAUTILUS_INSTANCE", "serve")
os.environ.setdefault("NAUTILUS_PORT_BASE", "27500")

from datetime import UTC

import numpy as np
import requests

from resources import access
from resources.settings import apply, build_resources, load
from scripts import services

INSTRUMENTS = ["AAPL.XNAS", "MSFT.XNAS"]
# The load generator stands in for the API's clients, which run elsewhere: on these 2 cores it yields the CPU to the
# platform (at nice 0 it takes most of a core from ingestion, which is not what a remote reader costs)
LOADGEN_NICE = 19
# the ingest runs' commit stages (market_data/ingest.py Stream.commit; receive and the overlapping session total out)
COMMIT_STAGES = (
    "unpack",
    "decode",
    "trade_ids",
    "checks_wait",
    "clickhouse",
    "bars",
    "delta_wait",
    "announce",
    "cache",
    "ack",
)


def pct(values, qs=(50, 99)) -> list[float]:
    return [round(float(x), 3) for x in np.percentile(values, qs)] if len(values) else [float("nan")] * len(qs)


# ---- 1. load generator (its own process: `python -m bench.serve load ...`) --------------------------------
async def _load(url: str, token: str, seconds: float, requests_max: int, concurrency: int) -> dict:
    import aiohttp

    server, client, codes = [], [], {}
    left, deadline = [requests_max], time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {token}"}

    async def worker(session):
        while left[0] > 0 and time.perf_counter() < deadline:
            left[0] -= 1
            t = time.perf_counter()
            async with session.get(url, headers=headers) as r:
                await r.read()
                client.append(time.perf_counter() - t)
                codes[r.status] = codes.get(r.status, 0) + 1
                st = r.headers.get("server-timing", "")
                if "dur=" in st:
                    server.append(float(st.split("dur=")[1]))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        took = time.perf_counter() - t0
    return {
        "requests": len(client),
        "seconds": round(took, 2),
        "per_s": round(len(client) / took),
        "codes": codes,
        "server_ms_p50_p99": pct(server),
        "client_ms_p50_p99": pct(np.array(client) * 1000),
    }


async def _direct_redis(s, seconds: float, requests_max: int, concurrency: int) -> dict:
    r = build_resources(s)["redis"]
    c = r.async_client()
    lat, left, deadline = [], [requests_max], time.perf_counter() + seconds

    async def worker():
        while left[0] > 0 and time.perf_counter() < deadline:
            left[0] -= 1
            t = time.perf_counter()
            await r.aget_raw(c, "indicators")
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.perf_counter() - t0
    await c.aclose()
    return {"requests": len(lat), "per_s": round(len(lat) / took), "ms_p50_p99": pct(np.array(lat) * 1000)}


def figures_process(a, day: str) -> dict:
    """Figures 1 and 2, measured by a process of its own at nice LOADGEN_NICE (the API's clients and the direct
    baselines alike; the publisher of figure 3 stays in this one)."""
    out = subprocess.run(
        [
            "nice",
            "-n",
            str(LOADGEN_NICE),
            sys.executable,
            "-W",
            "ignore",
            "-m",
            "bench.serve",
            "figures",
            day,
            str(a.seconds),
            str(a.requests),
            str(a.concurrency),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- 2. an instrument-day as Arrow ---------------------------------------------------------------------------
def arrow_day(s, day: str, reps: int = 30) -> dict:
    import pyarrow as pa

    from nautilus_assets.api import datasets as D

    r = build_resources(s)
    url = s.api_url("market_analytics") + "/indicators_1m"
    token = s.env[access.token_var(access.GOVERNANCE)]
    ds = D.DATASETS["market_analytics"]["indicators_1m"]
    start, end = D.parse_time(day, "start"), D.parse_time(day, "start") + 86400 * 10**9
    sql, params = D.clickhouse_sql(ds, D.Query([INSTRUMENTS[0]], [], start, end, 100_000, None))
    http = requests.Session()

    def via_api() -> int:
        resp = http.get(
            url,
            params={
                "instrument": INSTRUMENTS[0],
                "start": str(start),
                "end": str(end),
                "limit": 100_000,
                "format": "arrow",
            },
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        resp.raise_for_status()
        return pa.ipc.open_stream(resp.content).read_all().num_rows

    def direct() -> int:
        with r["clickhouse"].session() as c:
            return D.clickhouse_arrow(c, ds, sql, params).num_rows

    out = {}
    for name, f in (("direct", direct), ("api", via_api)):
        for _ in range(3):
            rows = f()
        lat = []
        for _ in range(reps):
            t = time.perf_counter()
            f()
            lat.append((time.perf_counter() - t) * 1000)
        out[name] = {"rows": rows, "ms_p50_p99": pct(lat)}
    out["ratio_p50"] = round(out["api"]["ms_p50_p99"][0] / out["direct"]["ms_p50_p99"][0], 2)
    return out


# ---- set-up ----------------------------------------------------------------------------------------------
def seed(s) -> str:
    """Two days of ticks and bars for INSTRUMENTS in ClickHouse, and their indicators; returns yesterday."""
    from datetime import datetime, timedelta

    import pandas as pd

    from nautilus_assets.analytics.assets import recompute
    from scripts.history import write_history

    r = build_resources(s)
    today = datetime.now(UTC).date()  # history: the two days before it
    write_history(r["lake"], INSTRUMENTS, 2, 40_000, end=today, clickhouse=r["clickhouse"], clickhouse_days=2)
    recompute(r["clickhouse"], "bench-serve", {i: pd.Timestamp(today - timedelta(days=2)) for i in INSTRUMENTS})
    return (today - timedelta(days=1)).isoformat()


def start_api(s) -> subprocess.Popen:
    p = services.spawn(s, "api", [sys.executable, "-W", "ignore", "-m", "nautilus_assets.api.serve"])
    services.wait_port(s.api_port("market_analytics"), "API", timeout=120)
    return p


def latest_figures(s, seconds: float, requests_max: int, concurrency: int) -> dict:
    url = s.api_url("market_analytics") + "/latest"
    token = s.env[access.token_var(access.GOVERNANCE)]
    requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)  # warm: the cache is complete
    api = asyncio.run(_load(url, token, seconds, requests_max, concurrency))
    direct = asyncio.run(_direct_redis(s, seconds, requests_max, concurrency))
    return {
        "api": api,
        "direct_redis": direct,
        "ratio_client_p50": round(api["client_ms_p50_p99"][0] / direct["ms_p50_p99"][0], 2),
    }


# ---- 3. with the streaming platform up ---------------------------------------------------------------------
def commit_times(since: float, until: float) -> list[float]:
    import dagster as dg

    from nautilus_assets.market_data.assets import QUOTES_KEY, TRADES_KEY

    out = []
    with dg.DagsterInstance.get() as inst:
        for key in (TRADES_KEY, QUOTES_KEY):
            recs = inst.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_timestamp=since, before_timestamp=until), limit=10_000
            ).records
            for rec in recs:
                m = rec.asset_materialization.metadata
                out.append(sum(float(m[f"seconds_{k}"].value) for k in COMMIT_STAGES if f"seconds_{k}" in m))
    return out


def streaming_phase(s, a, day: str) -> dict:
    from bench.freshness import publish

    children = {"dagster-daemon": services.dagster_daemon(s)}
    r = build_resources(s)
    instruments = [i.strip() for i in s["NAUTILUS_INSTRUMENTS"].split(",") if i.strip()]
    try:
        log = s.home / "dagster-daemon.log"
        t = time.time()
        while time.time() - t < 600 and "trades_ingest_sensor" not in log.read_text(errors="replace"):
            time.sleep(2)
        total = 90 + 2 * a.stream_seconds
        marks = {}
        loaded = {}

        def load_phase():
            time.sleep(90 + a.stream_seconds)  # warm-up (the runs start), then the quiet phase
            marks["load"] = time.time()
            end = marks["load"] + a.stream_seconds
            loaded["latest"], loaded["arrow"] = [], []
            while time.time() < end - 5:
                f = figures_process(a, day)
                loaded["latest"].append(f["latest"])
                loaded["arrow"].append(f["arrow"])
            marks["end"] = time.time()

        th = threading.Thread(target=load_phase, daemon=True)
        th.start()
        marks["quiet"] = time.time() + 90
        with r["pulsar"].client() as client:
            sent = publish(client, a.rate, total, instruments)
        th.join()
        time.sleep(15)  # the last batches' materializations
        quiet = commit_times(marks["quiet"], marks["load"])
        busy = commit_times(marks["load"], marks["end"])
        q, b = pct(quiet), pct(busy)
        return {
            "published": sent,
            "batches_quiet": len(quiet),
            "batches_loaded": len(busy),
            "commit_s_p50_p99_quiet": q,
            "commit_s_p50_p99_loaded": b,
            "ratio_p99": round(b[1] / q[1], 2) if q[1] else None,
            "under_load": loaded,
        }
    finally:
        services.kill_groups({n: p.pid for n, p in children.items()})


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "figures":
        day, seconds, n, c = sys.argv[2:6]
        s = apply(load())
        print(
            json.dumps(
                {
                    "latest": latest_figures(s, float(seconds), int(n), int(c)),
                    "arrow": arrow_day(s, day, reps=10 if float(seconds) < 15 else 30),
                }
            )
        )
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--requests", type=int, default=60_000)
    ap.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="connections: server time at a rate is the CPU per request times those in flight",
    )
    ap.add_argument("--stream-seconds", type=float, default=120, help="0: skip figure 3")
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    s = load()
    print(f"instance {s.instance} (ports from {s.port_base})", flush=True)
    s = apply(services.start(s))
    api = None
    try:
        from scripts.provision import setup

        setup(s)
        day = seed(s)
        api = start_api(s)
        f = figures_process(a, day)
        print(f"1. /latest (Redis): {json.dumps(f['latest'])}", flush=True)
        print(f"2. instrument-day of indicators as Arrow ({day}): {json.dumps(f['arrow'])}", flush=True)
        if a.stream_seconds:
            print(f"3. with the platform streaming: {json.dumps(streaming_phase(s, a, day))}", flush=True)
    finally:
        if api is not None:
            services.kill_groups({"api": api.pid})
        services.stop(s) if a.keep else services.remove(s)


if __name__ == "__main__":
    main()
