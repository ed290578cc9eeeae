"""End-to-end freshness: a steady publish rate through the real Dagster daemon (sensor -> long-lived run ->
batches of consume, decode, Delta + ClickHouse), measured from publish to the row being queryable in ClickHouse,
with the broker's raw publish -> consume latency (a separate pulsar-client subscription) in the same run.

    .venv/bin/python -m bench.freshness [--rate 10000] [--duration 300] [--warmup 30] [--poll 1.0]

Starts its own services instance (NAUTILUS_INSTANCE=freshness, ports from NAUTILUS_PORT_BASE=23500), a
`dagster-daemon` and a `dagster-webserver` (--no-webserver: none) as `nautilus up` does, and removes the
instance afterwards (--keep keeps it). The broker is whatever NAUTILUS_PULSAR_BROKER selects (apache | lite).
Tuning goes through the usual environment (NAUTILUS_SENSOR_INTERVAL_SECONDS, NAUTILUS_BATCH_MAX_WAIT_SECONDS,
NAUTILUS_BATCH_MAX_MESSAGES, ...).

How it measures: every message carries its send time in ts_init (set just before send_async); a poller asks
ClickHouse every --poll seconds which micro-batches (batch_id) became visible since the last look, and each of
their rows counts publish -> visible = (time seen) - ts_init, in 10 ms buckets. The poll interval bounds the
resolution (on average it adds half of it). Goals: p50 <= 2 s, p99 <= 5 s. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import threading
import time
from array import array

os.environ.setdefault("NAUTILUS_INSTANCE", "freshness")
os.environ.setdefault("NAUTILUS_PORT_BASE", "23500")

from datetime import UTC

import numpy as np
import pulsar

from nautilus_assets.market_data.schema import QUOTES, TRADES
from resources.settings import apply, build_resources, load
from scripts import services
from scripts.provision import setup
from scripts.publisher import Publisher

BUCKET_NS = 10_000_000  # 10 ms
BATCH_KEYS = [
    ["market_data_feed", "trades"],
    ["market_data_feed", "quotes"],
    ["market_analytics", "indicators_1m"],
    ["market_microstructure", "vpin"],
    ["portfolio_states", "positions"],
]
TUNING_VARS = [
    "NAUTILUS_PULSAR_BROKER",
    "NAUTILUS_SENSOR_INTERVAL_SECONDS",
    "NAUTILUS_BATCH_MAX_WAIT_SECONDS",
    "NAUTILUS_BATCH_MAX_MESSAGES",
    "NAUTILUS_RUN_LIFETIME_SECONDS",
    "NAUTILUS_HANDOVER_LEAD_SECONDS",
    "NAUTILUS_BACKLOG_STALENESS_SECONDS",
    "NAUTILUS_TIMER_SECONDS",
    "DAGSTER_GRPC_TIMEOUT_SECONDS",
]


def weighted_percentiles(values: np.ndarray, weights: np.ndarray, qs: list[float]) -> list[float]:
    if not len(values):
        return [float("nan")] * len(qs)
    order = np.argsort(values)
    v, c = values[order], np.cumsum(weights[order])
    return [float(v[min(np.searchsorted(c, q / 100 * c[-1]), len(v) - 1)]) for q in qs]


def raw_latency(service_url: str, ready, stop, out_path: str) -> None:
    """The broker alone, in its own process (no GIL shared with the publisher): publish -> receive on a
    separate Shared subscription of both topics. Writes the latencies (ms) to out_path."""
    client = pulsar.Client(service_url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    c = client.subscribe(
        [TRADES.topic, QUOTES.topic],
        "bench-raw-latency",
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Latest,
        receiver_queue_size=5000,
    )
    ms = array("d")
    ready.set()
    while not stop.is_set():
        try:
            m = c.receive(timeout_millis=200)
        except pulsar.Timeout:
            continue
        ms.append(time.time() * 1000 - m.publish_timestamp())
        c.acknowledge(m)
    c.close()
    client.close()
    np.save(out_path, np.frombuffer(ms, dtype=np.float64) if len(ms) else np.zeros(0))


class Visibility(threading.Thread):
    """Polls ClickHouse for micro-batches that became visible; records publish -> visible per row."""

    def __init__(self, ch, poll_s: float, since_us: int):
        super().__init__(daemon=True)
        self.ch, self.poll_s = ch, poll_s
        self.since = {TRADES.name: since_us, QUOTES.name: since_us}
        self.seen: set = set()
        self.lat_s, self.sent_ns, self.count = [], [], []  # per 10 ms bucket of send time
        self.rows = {TRADES.name: 0, QUOTES.name: 0}
        self.stop = threading.Event()
        self.polls, self.poll_seconds = 0, 0.0

    def poll_once(self) -> None:
        t0 = time.perf_counter()
        with self.ch.session() as c:
            seen_at = time.time()
            for feed in (TRADES, QUOTES):
                # one small grouped answer per feed: (batch, 10 ms bucket of send time) of the recent batches
                rows = c.query(
                    f"SELECT batch_id, intDiv(ts_init, {BUCKET_NS}) AS b, count(), "
                    f"toUnixTimestamp64Micro(max(ingested_at)) FROM market_data.{feed.name} "
                    f"WHERE ingested_at >= fromUnixTimestamp64Micro(%(since)s) GROUP BY batch_id, b",
                    parameters={"since": self.since[feed.name]},
                ).result_rows
                new = {b for b, *_ in rows} - self.seen
                for batch, b, n, _ in rows:
                    if batch in new:
                        sent = b * BUCKET_NS + BUCKET_NS // 2
                        self.lat_s.append(seen_at - sent / 1e9)
                        self.sent_ns.append(sent)
                        self.count.append(n)
                        self.rows[feed.name] += n
                self.seen |= new
                if rows:  # a batch is visible within seconds of its decode time (ingested_at): look back 2 minutes
                    self.since[feed.name] = max(self.since[feed.name], max(r[3] for r in rows) - 120_000_000)
        self.polls += 1
        self.poll_seconds += time.perf_counter() - t0

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            try:
                self.poll_once()
            except Exception as e:  # noqa: BLE001  (a poll racing a run's session; try again next time)
                print(f"poll failed: {e!r}")
            # the poll competes with the runs for the 2 cores: at least poll_s, and twice its own cost, between polls
            self.stop.wait(max(self.poll_s, 2 * (time.time() - t)))


TRADE = (
    b'{"schema_version":1,"instrument_id":"%s","price":%.4f,"size":%.0f,"aggressor_side":"%s",'
    b'"trade_id":"%s%d","ts_event":%d,"ts_init":%d}'
)
QUOTE = (
    b'{"schema_version":1,"instrument_id":"%s","bid_price":%.4f,"ask_price":%.4f,"bid_size":%.0f,'
    b'"ask_size":%.0f,"ts_event":%d,"ts_init":%d}'
)


def publish(client: pulsar.Client, rate: float, duration: float, instruments: list[str]) -> dict:
    """A steady `rate` msg/s (half trades, half quotes) for `duration` s, in 100 ms ticks; ts_event = ts_init
    = send time. Payloads are formatted from templates: a 2-core machine cannot afford the simulator here."""
    pub = Publisher(client)
    rng = np.random.default_rng(int(time.time()))
    names = [i.encode() for i in instruments]
    mid = np.full(len(names), 100.0)
    sides = [b"BUYER", b"SELLER"]
    prefix = f"F{time.time_ns() // 1_000_000}-".encode()
    tick, t0, sent_ticks, owed, seq, behind = 0.1, time.time(), 0, 0.0, 0, 0.0
    while (now := time.time()) < t0 + duration:
        due = int((now - t0) / tick)
        while sent_ticks <= due and time.time() < t0 + duration:  # behind: catch up, but never past the end
            owed += rate * tick
            n = int(owed)
            owed -= n
            if n:
                ts = time.time_ns()
                mid *= np.exp(rng.normal(0, 1e-4, len(mid)))
                inst = rng.integers(0, len(names), n)
                px = mid[inst] * (1 + rng.normal(0, 1e-4, n))
                size = rng.integers(1, 500, n)
                nt = n // 2
                pub.send(
                    TRADES.name,
                    [
                        TRADE % (names[i], p, z, sides[z & 1], prefix, seq + k, ts, ts)
                        for k, (i, p, z) in enumerate(zip(inst[:nt].tolist(), px[:nt].tolist(), size[:nt].tolist()))
                    ],
                )
                seq += nt
                pub.send(
                    QUOTES.name,
                    [
                        QUOTE % (names[i], p * 0.9999, p * 1.0001, z, z + 1, ts, ts)
                        for i, p, z in zip(inst[nt:].tolist(), px[nt:].tolist(), size[nt:].tolist())
                    ],
                )
            sent_ticks += 1
        behind = max(behind, time.time() - (t0 + sent_ticks * tick))
        time.sleep(max(0.0, t0 + sent_ticks * tick - time.time()))
    pub.flush()
    secs = time.time() - t0
    return {
        **pub.sent,
        "seconds": round(secs, 1),
        "achieved_msg_per_s": round(sum(pub.sent.values()) / secs),
        "max_behind_s": round(behind, 2),
    }


def run_stats(runs_since: float, since: float) -> dict:
    from datetime import datetime

    import dagster as dg

    with dg.DagsterInstance.get() as inst:
        recs = inst.get_run_records(dg.RunsFilter(created_after=datetime.fromtimestamp(runs_since, UTC)))
        out = {}
        for job in sorted({r.dagster_run.job_name for r in recs}):
            rs = [r for r in recs if r.dagster_run.job_name == job]
            begun = [r for r in rs if r.start_time]
            out[f"job {job}"] = {
                "runs": len(rs),
                "statuses": sorted({r.dagster_run.status.value for r in rs}),
                "mean_queue_to_start_s": round(
                    float(np.mean([r.start_time - r.create_timestamp.timestamp() for r in begun])), 2
                )
                if begun
                else None,
            }
        for key in BATCH_KEYS:  # the long-lived runs' batches: one materialization each
            mats = inst.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), after_timestamp=float(since)), limit=10_000
            ).records
            meta = [m.asset_materialization.metadata for m in mats]
            fields = sorted({k for md in meta for k in md if k.startswith("seconds_") or k in ("consumed",)})
            ts = sorted(m.timestamp for m in mats)
            gaps = np.diff(ts) if len(ts) > 1 else np.zeros(0)
            out["/".join(key)] = {
                "batches": len(meta),
                "median_interval_s": round(float(np.median(gaps)), 3) if len(gaps) else None,
                **{f"median_{k}": round(float(np.median([md[k].value for md in meta if k in md])), 3) for k in fields},
            }
        failures = {}
        for r in recs:
            if r.dagster_run.status.value == "FAILURE":
                for e in inst.all_logs(r.dagster_run.run_id):
                    if (
                        e.dagster_event
                        and e.dagster_event.event_type_value in ("RUN_FAILURE", "STEP_FAILURE", "ENGINE_EVENT")
                        and e.message
                    ):
                        failures[e.message[:160]] = failures.get(e.message[:160], 0) + 1
        out["failure_messages"] = failures
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=10_000, help="messages per second, trades + quotes")
    ap.add_argument("--duration", type=float, default=300, help="seconds of steady publishing")
    ap.add_argument("--warmup", type=float, default=30, help="seconds excluded from the steady-state figures")
    ap.add_argument("--poll", type=float, default=1.0, help="ClickHouse poll interval (resolution)")
    ap.add_argument("--drain-timeout", type=float, default=180)
    ap.add_argument("--keep", action="store_true", help="keep the services instance afterwards")
    ap.add_argument(
        "--no-webserver",
        action="store_true",
        help="leave dagster-webserver out (it is up by default: the whole platform, as a user runs it)",
    )
    a = ap.parse_args()
    s = load()
    instruments = [i.strip() for i in s["NAUTILUS_INSTRUMENTS"].split(",") if i.strip()]
    print(
        f"instance {s.instance} (ports from {s.port_base}); broker {s['NAUTILUS_PULSAR_BROKER']}; "
        + ", ".join(f"{k}={os.environ[k]}" for k in TUNING_VARS if k in os.environ),
        flush=True,
    )
    s = apply(services.start(s))
    daemon, children = None, {}
    try:
        setup(s)
        r = build_resources(s)
        daemon = children["dagster-daemon"] = services.dagster_daemon(s)
        if not a.no_webserver:
            children["dagster-webserver"] = services.dagster_webserver(s)
        log = s.home / "dagster-daemon.log"
        print(f"dagster-daemon started (log {log}); waiting for its code server to evaluate the sensors", flush=True)
        t_wait = time.time()
        while time.time() - t_wait < 600 and "trades_ingest_sensor" not in log.read_text(errors="replace"):
            time.sleep(2)
        print(f"sensors evaluating after {time.time() - t_wait:.0f} s", flush=True)
        ctx = multiprocessing.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        raw_path = str(s.home / "raw_latency.npy")
        raw = ctx.Process(target=raw_latency, args=(s["PULSAR_SERVICE_URL"], ready, stop, raw_path), daemon=True)
        raw.start()
        ready.wait(120)
        with r["pulsar"].client() as client:
            t_roll = time.time()  # as in production, the long-lived ingest runs are up before the measured load
            while time.time() - t_roll < 600 and not all(
                r["clickhouse"].scalar(f"SELECT count() FROM market_data.{f.name}") for f in (TRADES, QUOTES)
            ):
                publish(client, 100, 2, instruments)
            print(
                f"ingest runs up and committing after {time.time() - t_roll:.0f} s of a 100 msg/s pre-roll", flush=True
            )
            start = time.time()
            vis = Visibility(r["clickhouse"], a.poll, int(start * 1e6))
            vis.start()
            sent = publish(client, a.rate, a.duration, instruments)
            print(f"published {sent}", flush=True)
            deadline = time.time() + a.drain_timeout
            want = sent[TRADES.name] + sent[QUOTES.name]
            while time.time() < deadline and sum(vis.rows.values()) < want:
                time.sleep(1)
            drained = time.time() - (start + sent["seconds"])
            vis.stop.set()
            stop.set()
            vis.join(30)
            raw.join(60)
        lat, sent_ns, cnt = np.array(vis.lat_s), np.array(vis.sent_ns), np.array(vis.count)
        steady = sent_ns >= (start + a.warmup) * 1e9
        p_all = weighted_percentiles(lat, cnt, [50, 90, 99, 100])
        p_st = weighted_percentiles(lat[steady], cnt[steady], [50, 90, 99, 100])
        rawv = np.load(raw_path) if os.path.exists(raw_path) else np.zeros(0)
        rsteady = rawv / 1000
        print(
            f"stored {vis.rows} of {want} published; drain after publishing ended {drained:.1f} s; "
            f"{vis.polls} polls, mean {vis.poll_seconds / max(vis.polls, 1) * 1000:.0f} ms each"
        )
        for k, v in run_stats(t_wait, start).items():
            print(f"{k}: {v}")
        print(
            f"publish -> queryable in ClickHouse, all          : p50 {p_all[0]:.2f} s  p90 {p_all[1]:.2f} s  "
            f"p99 {p_all[2]:.2f} s  max {p_all[3]:.2f} s"
        )
        print(
            f"publish -> queryable in ClickHouse, after {a.warmup:.0f}s warm-up: p50 {p_st[0]:.2f} s  "
            f"p90 {p_st[1]:.2f} s  p99 {p_st[2]:.2f} s  max {p_st[3]:.2f} s  (goals: p50 <= 2 s, p99 <= 5 s)"
        )
        if len(rsteady):
            print(
                f"broker raw publish -> consume ({len(rsteady)} msgs)    : "
                f"p50 {np.percentile(rsteady, 50) * 1000:.1f} ms  "
                f"p99 {np.percentile(rsteady, 99) * 1000:.1f} ms  max {rsteady.max() * 1000:.1f} ms"
            )
        print(
            f"ratio p50 end-to-end / p50 broker: {p_st[0] / max(np.percentile(rsteady, 50), 1e-6):.0f}x"
            if len(rsteady)
            else "no raw latency samples"
        )
    finally:
        services.kill_groups({name: p.pid for name, p in children.items()})
        if daemon is not None:
            shutil.copy(s.home / "dagster-daemon.log", f"/tmp/{s.instance}-dagster-daemon.log")
        if a.keep:
            services.stop(s)
        else:
            services.remove(s)


if __name__ == "__main__":
    main()
