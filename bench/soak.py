"""Soak: the whole platform up (services, dagster-daemon, dagster-webserver, every sensor) under a steady publish
rate, with every streaming product's freshness read through the webserver's GraphQL API each minute.

    .venv/bin/python -m bench.soak [--rate 5000] [--duration 1800] [--sample 60]

Starts its own services instance (NAUTILUS_INSTANCE=soak, ports from NAUTILUS_PORT_BASE=24500) and removes it
afterwards (--keep keeps it). Reports, for the goals of issue 10:
- each sample's freshness status of the streaming assets (HEALTHY / WARNING / DEGRADED / UNKNOWN);
- runs by job and status (goal: 0 failed), with failure messages;
- rows published vs stored in ClickHouse and Delta per feed (goal: exact), duplicate message ids (goal: 0),
  backlog of every subscription at the end (goal: 0);
- peak RSS of each long-lived run process (goal: < 1 GiB).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from collections import Counter

os.environ.setdefault("NAUTILUS_INSTANCE", "soak")
os.environ.setdefault("NAUTILUS_PORT_BASE", "24500")

from datetime import UTC

import numpy as np
import requests

from bench.freshness import publish
from nautilus_assets.analytics.assets import KEY as INDICATORS
from nautilus_assets.analytics.assets import SUBSCRIPTION as ANALYTICS_SUB
from nautilus_assets.market_data.assets import BARS_KEY, QUOTES_KEY, TRADES_KEY
from nautilus_assets.market_data.checks import duplicate_ids_in_table
from nautilus_assets.market_data.schema import QUOTES, SUBSCRIPTION, TRADES
from nautilus_assets.market_data.sinks import bronze_table
from nautilus_assets.microstructure.assets import KEY as VPIN
from nautilus_assets.microstructure.assets import SUBSCRIPTION as MICRO_SUB
from nautilus_assets.portfolio.assets import KEY as POSITIONS
from nautilus_assets.portfolio.assets import SUBSCRIPTION as PORTFOLIO_SUB
from resources import schemas
from resources.settings import apply, build_resources, load
from resources.topics import BARS_CHANGES
from scripts import services
from scripts.provision import setup

STREAMING = [TRADES_KEY, QUOTES_KEY, BARS_KEY, INDICATORS, VPIN, POSITIONS]
QUERY = """{ assetNodes { assetKey { path } freshnessStatusInfo { freshnessStatus } } }"""


def freshness(url: str) -> dict[str, str]:
    r = requests.post(f"{url}/graphql", json={"query": QUERY}, timeout=60)
    nodes = r.json()["data"]["assetNodes"]
    want = {k.to_user_string() for k in STREAMING}
    return {
        "/".join(n["assetKey"]["path"]): (n["freshnessStatusInfo"] or {}).get("freshnessStatus", "NONE")
        for n in nodes
        if "/".join(n["assetKey"]["path"]) in want
    }


class RunRss(threading.Thread):
    """Peak RSS of every run worker process, and of the ClickHouse (chDB) server, sampled every 5 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak: dict[int, tuple[str, int]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(5):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
                    # a run's worker: `dagster api execute_run`, or (default run launcher) a multiprocessing
                    # child of the code server that launched it
                    if (
                        "execute_run" not in cmd
                        and "multiprocessing.spawn" not in cmd
                        and "clickhouse_server.py" not in cmd
                    ):
                        continue
                    rss = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS"))
                except (OSError, StopIteration):
                    continue
                _, old = self.peak.get(int(pid), ("", 0))
                self.peak[int(pid)] = (cmd[-120:], max(old, rss * 1024))


class BarLatency(threading.Thread):
    """Bar closed -> visible downstream, for one instrument: from the end of each minute M (M + 60 s) to the first
    poll that sees an indicator row of M computed from the bar's latest version, a VPIN state after M (the state
    before a later bar: M fully poured), and a portfolio state at or after M + 60 s (marked with M's close)."""

    def __init__(self, ch, pg, instrument: str, poll_s: float = 1.0):
        super().__init__(daemon=True)
        self.ch, self.pg, self.inst, self.poll_s = ch, pg, instrument, poll_s
        self.pending: dict[int, dict] = {}
        self.started: set[int] = set()  # minutes ever pending: each is measured once
        self.done: dict[str, list[float]] = {"indicators": [], "vpin": [], "positions": []}
        self.stop = threading.Event()
        self.first = int(time.time()) // 60 * 60 + 60  # the first whole minute observed

    def poll(self) -> None:
        now = time.time()
        closed = int(now) // 60 * 60 - 60
        if closed >= self.first and closed not in self.started:  # (a minute done is not measured again)
            self.started.add(closed)
            self.pending[closed] = {}
        if not self.pending:
            return
        ms = sorted(self.pending)
        with self.ch.session() as c:
            ind = {
                m
                for (m,) in c.query(
                    "SELECT toUnixTimestamp(b.minute) FROM (SELECT minute, version FROM market_data.bars_1m FINAL "
                    "WHERE instrument_id = %(i)s AND minute >= toDateTime(%(lo)s, 'UTC')) AS b INNER JOIN "
                    "(SELECT minute, source_version FROM analytics.indicators_1m FINAL WHERE instrument_id = %(i)s "
                    "AND minute >= toDateTime(%(lo)s, 'UTC')) AS x "
                    "ON b.minute = x.minute AND b.version = x.source_version",
                    parameters={"i": self.inst, "lo": ms[0]},
                ).result_rows
            }
            vp = c.query(
                "SELECT toUnixTimestamp(max(minute)) FROM microstructure.vpin_states WHERE instrument_id = %(i)s "
                "AND minute >= toDateTime(%(lo)s, 'UTC')",
                parameters={"i": self.inst, "lo": ms[0]},
            ).first_row[0]
        with self.pg.connect() as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM max(ts)) FROM portfolio.portfolio_states "
                "WHERE instrument_id = %s AND ts >= to_timestamp(%s)",
                (self.inst, ms[0]),
            ).fetchone()
        pos = float(row[0]) if row and row[0] is not None else 0.0
        for m in ms:
            seen = self.pending[m]
            for name, ok in (("indicators", m in ind), ("vpin", bool(vp) and vp > m), ("positions", pos >= m + 60)):
                if ok and name not in seen:
                    seen[name] = now - (m + 60)
                    self.done[name].append(seen[name])
            if len(seen) == 3 or now - m > 900:
                print(
                    f"bar {time.strftime('%H:%M', time.gmtime(m))} closed -> visible: "
                    + ", ".join(f"{k} {v:.1f}s" for k, v in seen.items()),
                    flush=True,
                )
                del self.pending[m]

    def run(self) -> None:
        while not self.stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - a poll racing a store's start-up; next time
                print(f"bar latency poll failed: {e!r}"[:200], flush=True)


def run_summary(since: float) -> tuple[dict, dict]:
    from datetime import datetime

    import dagster as dg

    with dg.DagsterInstance.get() as inst:
        recs = inst.get_run_records(dg.RunsFilter(created_after=datetime.fromtimestamp(since, UTC)))
        by = Counter((r.dagster_run.job_name, r.dagster_run.status.value) for r in recs)
        failures = Counter()
        for r in recs:
            if r.dagster_run.status.value == "FAILURE":
                for e in inst.all_logs(r.dagster_run.run_id):
                    if (
                        e.dagster_event
                        and e.dagster_event.event_type_value in ("RUN_FAILURE", "STEP_FAILURE")
                        and e.message
                    ):
                        failures[e.message[:200]] += 1
        return dict(by), dict(failures)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--duration", type=float, default=1800)
    ap.add_argument("--sample", type=float, default=60, help="seconds between freshness samples")
    ap.add_argument("--drain-timeout", type=float, default=300)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    s = load()
    instruments = [i.strip() for i in s["NAUTILUS_INSTRUMENTS"].split(",") if i.strip()]
    print(f"instance {s.instance} (ports from {s.port_base}); {a.rate:g} msg/s for {a.duration:.0f}s", flush=True)
    s = apply(services.start(s))
    children = {}
    try:
        setup(s)
        r = build_resources(s)
        children["dagster-daemon"] = services.dagster_daemon(s)
        children["dagster-webserver"] = services.dagster_webserver(s)
        services.wait_port(s.port("webserver"), "dagster-webserver", timeout=600)
        log = s.home / "dagster-daemon.log"
        t_wait = time.time()
        while time.time() - t_wait < 600 and "trades_ingest_sensor" not in log.read_text(errors="replace"):
            time.sleep(2)
        print(f"daemon evaluating sensors; UI {s.webserver_url}", flush=True)
        rss = RunRss()
        rss.start()
        samples: list[dict] = []
        stop = threading.Event()

        def sampler():
            while not stop.wait(a.sample):
                try:
                    f = freshness(s.webserver_url)
                except Exception as e:  # noqa: BLE001 - a slow answer is a sample lost, reported
                    f = {"error": repr(e)[:120]}
                samples.append(f)
                print(f"[{time.strftime('%H:%M:%S')}] freshness {f}", flush=True)

        with r["pulsar"].client() as client:  # the model portfolios' fills, so positions have something to mark
            from nautilus_assets.market_data.simulator import MarketSimulator
            from nautilus_assets.portfolio.models import FILLS_TOPIC, fill_messages, model_fills

            trades, _ = MarketSimulator(instruments, seed=7, start_ns=time.time_ns() - 3600 * 10**9).take(20_000, 0)
            p = schemas.create_producer(client, FILLS_TOPIC)
            for m in fill_messages(model_fills(trades, seed=7)):
                p.send(m)
            p.close()
        start = time.time()
        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        bars = BarLatency(r["clickhouse"], r["postgres"], instruments[0])
        bars.start()
        with r["pulsar"].client() as client:
            sent = publish(client, a.rate, a.duration, instruments)
        print(f"published {sent}", flush=True)
        deadline = time.time() + a.drain_timeout
        subs = [
            (TRADES.topic, SUBSCRIPTION),
            (QUOTES.topic, SUBSCRIPTION),
            (BARS_CHANGES, ANALYTICS_SUB),
            (BARS_CHANGES, MICRO_SUB),
            (BARS_CHANGES, PORTFOLIO_SUB),
        ]
        while time.time() < deadline and any(r["pulsar"].backlog(t, sub) for t, sub in subs):
            time.sleep(5)
        time.sleep(10)  # the last batches' checks and materializations
        stop.set()
        rss.stop.set()
        bars.stop.set()
        backlog = {f"{t.rsplit('/', 1)[1]}:{sub}": r["pulsar"].backlog(t, sub) for t, sub in subs}
        ch = r["clickhouse"]
        stored = {}
        for feed in (TRADES, QUOTES):
            n_ch = int(ch.scalar(f"SELECT count() FROM market_data.{feed.name}"))
            dt = r["lake"].table(bronze_table(feed))
            n_delta = dt.to_pyarrow_dataset().count_rows() if dt is not None else 0
            stored[feed.name] = {
                "published": sent[feed.name],
                "clickhouse": n_ch,
                "delta": n_delta,
                **duplicate_ids_in_table(ch, feed),
            }
        runs, failures = run_summary(start - 600)
        statuses = Counter(v for smp in samples for k, v in smp.items() if k != "error")
        # UNKNOWN = never materialized: a fresh instance's first minute(s), before a product's first run started;
        # from the first sample in which no asset is UNKNOWN on, every sample counts against the goal
        live = next(
            (k for k, smp in enumerate(samples) if smp and "error" not in smp and "UNKNOWN" not in smp.values()),
            len(samples),
        )
        print(
            f"freshness over {len(samples)} samples: {dict(statuses)}; samples not all HEALTHY: "
            f"{sum(1 for smp in samples if any(v != 'HEALTHY' for v in smp.values()))}, of which "
            f"{live} before every streaming asset's first materialization; after it: "
            f"{sum(1 for smp in samples[live:] if any(v != 'HEALTHY' for v in smp.values()))} of "
            f"{len(samples) - live} not all HEALTHY (goal 0)"
        )
        print(f"runs: {runs}")
        print(f"failure messages: {failures}")
        print(f"stored: {stored}")
        print(f"backlog at the end: {backlog}")
        for name, lat in bars.done.items():
            q = np.percentile(lat, [50, 99]) if lat else [float("nan")] * 2
            print(
                f"bar closed -> {name} visible ({len(lat)} minutes of {instruments[0]}): p50 {q[0]:.1f} s  "
                f"p99 {q[1]:.1f} s  (goal p50 <= 5 s, p99 <= 15 s; poll {bars.poll_s:g} s)"
            )
        server = [b for cmd, b in rss.peak.values() if "clickhouse_server.py" in cmd]
        peaks = sorted(((b, cmd) for cmd, b in rss.peak.values() if "clickhouse_server.py" not in cmd), reverse=True)
        print(
            f"run processes seen: {len(peaks)}; peak RSS (MiB): {[round(p / 2**20) for p, _ in peaks[:8]]} "
            f"(goal < 1024); ClickHouse (chDB) server peak RSS {round(max(server, default=0) / 2**20)} MiB"
        )
    finally:
        services.kill_groups({n: p.pid for n, p in children.items()})
        for name in children:
            if (s.home / f"{name}.log").exists():
                shutil.copy(s.home / f"{name}.log", f"/tmp/{s.instance}-{name}.log")
        if a.keep:
            services.stop(s)
        else:
            services.remove(s)


if __name__ == "__main__":
    main()
