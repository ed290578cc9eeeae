"""Exactly once under faults: 200,000 ticks ingested by daemon-launched runs while faults are injected.

The runs are launched by a real `dagster-daemon` from the Pulsar sensors, with NAUTILUS_FAULT_PLAN naming a plan
(nautilus_assets/market_data/faults.py): SIGKILL of the run process before the Delta commit, after it, between
the two sinks, before and halfway through the acknowledgements; SIGKILL of the run together with the code server
that launched it (nobody left to report the run: the sensor watchdog must); a ClickHouse write error; an S3
outage across a Delta commit; a broker restart before the acknowledgements. Nothing is done by hand: every
killed run must be noticed and its messages ingested by a later run. Afterwards each feed holds exactly the
published ticks in Delta and in ClickHouse, no id twice, bars equal a recomputation, and the backlog is zero.

Figures (ticks, faults by kind, runs, recovery time per fault, wall time) are printed and written to
$NAUTILUS_HOME/fault-report.json. NAUTILUS_FAULT_SEED fixes the fault order (default: random, printed).
"""

import json
import os
import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType

from nautilus_assets.market_data import faults, sinks
from nautilus_assets.market_data.schema import QUOTES, SUBSCRIPTION, TRADES
from nautilus_assets.market_data.simulator import MarketSimulator, messages
from scripts import services
from scripts.publisher import Publisher as RawPublisher
from sensors.pulsar_ingest import NOT_FINISHED_STATUSES
from tests.helpers import assert_bars_equal, fail_orphaned_runs, reference_bars, stored_bars

TICKS_PER_FEED = 100_000
FIRST_CHUNK = 10_000  # per feed, published before the daemon starts
CHUNK = 2_500  # per feed, then every PACE_S while faults are pending (see Publisher)
PACE_S = 2.0
DEADLINE_S = float(os.environ.get("NAUTILUS_FAULT_DEADLINE_SECONDS", 600))
INGEST_JOBS = ("ingest_trades", "ingest_quotes")
AUTOMATION_SENSORS = (
    "products_automation",
    "market_analytics_stream_sensor",
    "market_microstructure_stream_sensor",
    "portfolio_states_stream_sensor",
)


def fault_plan(rng: random.Random) -> list[dict]:
    """Per feed, in random order: SIGKILLs at named points, a write error, and one server outage."""
    kill_points = ["before_delta_commit", "after_delta_commit", "between_sinks", "before_ack", "mid_ack"]
    plan = {
        "trades": [
            *({"point": p, "action": "kill"} for p in rng.sample(kill_points, 4)),
            # a long-lived run killed mid-stream, with batches committed and acknowledged before
            {
                "point": rng.choice(kill_points),
                "action": "kill",
                "kind": "sigkill_long_lived_mid_stream",
                "min_batch": 3,
            },
            {"point": "clickhouse_write", "action": "raise", "kind": "clickhouse_write_error"},
            {"point": "before_delta_commit", "action": "hold", "kind": "s3_restart"},
        ],
        "quotes": [
            *({"point": p, "action": "kill"} for p in rng.sample(kill_points, 3)),
            {"point": rng.choice(kill_points), "action": "kill_with_parent"},
            {"point": "clickhouse_write", "action": "raise", "kind": "clickhouse_write_error"},
            {"point": "before_ack", "action": "hold", "kind": "broker_restart"},
        ],
    }
    out = []
    for feed, items in plan.items():
        rng.shuffle(items)
        # the mid-stream kill first, while the publisher still paces a chunk every PACE_S (its run must live on
        # for several batches; later faults may see only the reserve share published after a recovery)
        items.sort(key=lambda f: "min_batch" not in f)
        for f in items:
            kind = f.pop("kind", None) or (
                "sigkill_run_and_code_server" if f["action"] == "kill_with_parent" else f"sigkill_{f['point']}"
            )
            out.append({"id": f"{feed}-{len(out) + 1:02d}", "feed": feed, "kind": kind, **f})
    return out


class Publisher(threading.Thread):
    """Publishes the ticks in chunks while faults are pending (never while the broker is being restarted).

    Per feed, every PACE_S: a chunk while the budget left exceeds a reserve of one chunk per unfired fault;
    past that, one share of what is left after each recovery (so the next fault, armed by that recovery, has
    fresh data to fire on and the budget never runs out first); once all its faults fired, the rest."""

    def __init__(self, res, trades, quotes, plan_path: Path, lock: threading.Lock):
        super().__init__(daemon=True)
        self.res, self.plan_path, self.lock = res, plan_path, lock
        self.tables = {"trades": trades, "quotes": quotes}
        self.sent = {"trades": 0, "quotes": 0}
        self.error, self.finished_at, self.stop = None, None, threading.Event()
        self.reserve_after = {"trades": -1.0, "quotes": -1.0}  # recovery time a reserve chunk was published for

    def publish(self, counts: dict) -> None:
        with self.lock, self.res["pulsar"].client() as client:
            pub = RawPublisher(client)
            for feed, n in counts.items():
                if n > 0:
                    pub.send(feed, messages(self.tables[feed].slice(self.sent[feed], n)))
            pub.flush()
        for feed, n in counts.items():
            self.sent[feed] += n

    def _due(self, feed: str, plan: list) -> int:
        left = TICKS_PER_FEED - self.sent[feed]
        mine = [f for f in plan if f["feed"] == feed]
        unfired = sum(1 for f in mine if not f.get("fired_at"))
        if left <= 0:
            return 0
        if unfired == 0:
            return left
        if left - CHUNK >= CHUNK * unfired:
            return CHUNK
        recovered = max([f["recovered_at"] for f in mine if f.get("recovered_at")], default=0.0)
        if recovered > self.reserve_after[feed] and left > unfired:
            self.reserve_after[feed] = recovered
            return max(1, min(CHUNK, left // (unfired + 1)))
        return 0

    def run(self):
        try:
            while any(n < TICKS_PER_FEED for n in self.sent.values()) and not self.stop.is_set():
                plan = faults.read_plan(self.plan_path)["faults"]
                due = {feed: self._due(feed, plan) for feed in self.sent}
                if any(due.values()):
                    self.publish(due)
                time.sleep(PACE_S)
            self.finished_at = time.time()
        except Exception as e:  # noqa: BLE001  (reported by the test)
            self.error = e


def _spawn_daemon(settings, plan_path: Path) -> subprocess.Popen:
    env = {
        faults.ENV: str(plan_path),
        "NAUTILUS_SAFETY_INTERVAL_SECONDS": "10",
        "NAUTILUS_TIMER_SECONDS": "5",
        # a run's process must import the whole code location before StartRun answers; on a loaded 2-core
        # machine that took over the default 60 s, and the launch was failed although the process started
        "DAGSTER_GRPC_TIMEOUT_SECONDS": os.environ.get("DAGSTER_GRPC_TIMEOUT_SECONDS", "180"),
    }
    return services.dagster_daemon(settings, "fault-daemon", env)


def _set_automation(instance, stopped: bool, saved: dict) -> int:
    """Stop the product automation sensors (their runs only compete for the 2 cores), or restore them."""
    n = 0
    for st in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if st.instigator_name in AUTOMATION_SENSORS:
            if stopped and st.status != InstigatorStatus.STOPPED:
                saved[st.instigator_name] = st
                instance.update_instigator_state(st.with_status(InstigatorStatus.STOPPED))
                n += 1
            elif not stopped and st.instigator_name in saved:
                instance.update_instigator_state(saved[st.instigator_name])
    return n


def _ingest_runs(instance, since: float) -> list:
    return [
        r
        for job in INGEST_JOBS
        for r in instance.get_run_records(dg.RunsFilter(job_name=job))
        if r.create_timestamp.timestamp() >= since
    ]


def _failure(instance, run_id: str):
    recs = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE, limit=1).records
    return recs[0] if recs else None


def _noticed_by(instance, run_id: str, fail) -> str:
    """Who failed the run: the sensor watchdog, the code server that launched it (its process died), or the run."""
    if "watchdog" in (fail.event_log_entry.message or ""):
        return "sensor watchdog"
    engine = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    if any("[DagsterApiServer]" in (e.event_log_entry.message or "") for e in engine):
        return "code server"
    return "run itself"


def _counts(res, feed) -> dict:
    dt = res["lake"].table(sinks.bronze_table(feed))
    delta = dt.to_pyarrow_table(columns=["message_id", *(["instrument_id", "trade_id"] if feed is TRADES else [])])
    extra = ", uniqExact(instrument_id, trade_id)" if feed is TRADES else ", count()"
    with res["clickhouse"].session() as c:
        n, ids, trade_ids = c.query(
            f"SELECT count(), uniqExact(message_id){extra} FROM market_data.{feed.name}"
        ).first_row
    out = {
        "clickhouse_rows": int(n),
        "clickhouse_unique_message_ids": int(ids),
        "clickhouse_unique_trade_ids": int(trade_ids),
        "delta_rows": delta.num_rows,
        "delta_unique_message_ids": pc.count_distinct(delta["message_id"]).as_py(),
    }
    if feed is TRADES:
        out["delta_unique_trade_ids"] = delta.group_by(["instrument_id", "trade_id"]).aggregate([]).num_rows
    return out


@pytest.mark.slow
def test_exactly_once_under_injected_faults(clean, settings, instance):
    res = clean
    seed = int(os.environ.get("NAUTILUS_FAULT_SEED") or random.randrange(10**6))
    plan_path = settings.home / "fault-plan.json"
    for stale in settings.home.glob("fault-plan.json*"):
        stale.unlink()
    plan = fault_plan(random.Random(seed))
    faults.write_plan(plan_path, plan)
    print(f"\n[faults] seed {seed}: " + ", ".join(f"{f['id']} {f['kind']}@{f['point']}" for f in plan))

    sim = MarketSimulator(
        ["AAPL.XNAS", "MSFT.XNAS", "SPY.ARCX"],
        seed=seed,
        events_per_second=1000,
        start_ns=time.time_ns() - 30 * 60 * 10**9,
    )
    trades, quotes = sim.take(TICKS_PER_FEED, TICKS_PER_FEED)
    broker_lock = threading.Lock()
    pub = Publisher(res, trades, quotes, plan_path, broker_lock)
    t0 = time.time()
    pub.publish({"trades": FIRST_CHUNK, "quotes": FIRST_CHUNK})
    daemon = _spawn_daemon(settings, plan_path)
    saved_automation: dict = {}
    outages: dict = {}
    try:
        pub.start()
        deadline = t0 + DEADLINE_S
        while True:  # orchestrate the server outages the held runs wait for, until every fault fired and healed
            if len(saved_automation) < len(AUTOMATION_SENSORS):
                _set_automation(instance, True, saved_automation)
            current = {f["id"]: f for f in faults.read_plan(plan_path)["faults"]}
            for fid, f in current.items():
                hold = faults.hold_file(plan_path, fid)
                if f["action"] != "hold" or fid in outages or not hold.exists():
                    continue
                t = time.time()
                if f["kind"] == "s3_restart":  # S3 down across the held Delta commit, then back
                    services.stop_one(settings, "s3")
                    hold.unlink()
                    time.sleep(3)
                    services.SERVICES["s3"].start(settings)
                else:  # broker restarted under the held run, before its acks
                    with broker_lock:
                        services.restart(settings, "pulsar")
                    hold.unlink()
                outages[fid] = {"kind": f["kind"], "started": t, "seconds": round(time.time() - t, 1)}
                print(f"[faults] {fid} {f['kind']}: {outages[fid]['seconds']}s", flush=True)
            healed = all(f.get("recovered_at") for f in current.values())
            if healed and pub.finished_at:
                break
            assert pub.error is None, f"publisher failed: {pub.error!r}"
            assert time.time() < deadline, (
                f"faults not all fired and recovered within {DEADLINE_S}s: "
                f"{[(i, f.get('fired_at'), f.get('recovered_at')) for i, f in current.items()]}"
            )
            assert daemon.poll() is None, "dagster-daemon exited"
            time.sleep(0.3)

        def settled():
            if time.time() > deadline:
                return True
            if any(
                instance.get_run_records(dg.RunsFilter(job_name=j, statuses=list(NOT_FINISHED_STATUSES)), limit=1)
                for j in INGEST_JOBS
            ):
                return False
            with res["clickhouse"].session() as c:
                n = {f: c.query(f"SELECT count() FROM market_data.{f}").first_row[0] for f in ("trades", "quotes")}
            return n == {"trades": TICKS_PER_FEED, "quotes": TICKS_PER_FEED} and all(
                res["pulsar"].backlog(f.topic, SUBSCRIPTION) == 0 for f in (TRADES, QUOTES)
            )

        while not settled():
            time.sleep(3)
        wall = time.time() - t0
    finally:
        pub.stop.set()
        if pub.is_alive():
            pub.join(timeout=60)
        services.kill_groups({"daemon": daemon.pid})
        fail_orphaned_runs(instance, t0 - 1)
        _set_automation(instance, False, saved_automation)
        for leftover in settings.home.glob("fault-plan.json.hold-*"):
            leftover.unlink()

    final = faults.read_plan(plan_path)["faults"]
    runs = _ingest_runs(instance, t0 - 1)
    by_status = Counter(r.dagster_run.status.value for r in runs)
    per_fault = []
    for f in final:
        run_batch = (f.get("batch_id") or "").rsplit(".", 1)[0]  # batch <run batch id>.<n> of a long-lived run
        run = next((r for r in runs if r.dagster_run.tags.get("nautilus/batch_id") == run_batch), None)
        fail = _failure(instance, run.dagster_run.run_id) if run else None
        per_fault.append(
            {
                "id": f["id"],
                "kind": f["kind"],
                "point": f["point"],
                "fired": bool(f.get("fired_at")),
                "run_status": run.dagster_run.status.value if run else None,
                "noticed_after_s": round(fail.timestamp - f["fired_at"], 1) if fail else None,
                "noticed_by": _noticed_by(instance, run.dagster_run.run_id, fail) if fail else None,
                "batch": f.get("batch_id"),
                "recovered_after_s": round(f["recovered_at"] - f["fired_at"], 1) if f.get("recovered_at") else None,
            }
        )
    counts = {feed.name: _counts(res, feed) for feed in (TRADES, QUOTES)}
    report = {
        "seed": seed,
        "ticks": {"trades": TICKS_PER_FEED, "quotes": TICKS_PER_FEED, "total": 2 * TICKS_PER_FEED},
        "faults": len(final),
        "faults_by_kind": dict(Counter(f["kind"] for f in final)),
        "faults_fired": sum(1 for f in final if f.get("fired_at")),
        "runs": {"launched": len(runs), **dict(by_status)},
        "recovery_s": per_fault,
        "outages": outages,
        "stored": counts,
        "backlog": {f.name: res["pulsar"].backlog(f.topic, SUBSCRIPTION) for f in (TRADES, QUOTES)},
        "wall_s": round(wall, 1),
        "broker": settings.env.get("NAUTILUS_PULSAR_BROKER", "lite"),
    }
    (settings.home / "fault-report.json").write_text(json.dumps(report, indent=1))
    print("[faults] " + json.dumps(report, indent=1), flush=True)

    assert report["faults_fired"] == len(final) >= 10, per_fault
    assert all(p["recovered_after_s"] is not None for p in per_fault), per_fault
    mid = next(p for p in per_fault if p["kind"] == "sigkill_long_lived_mid_stream")
    assert faults.batch_seq(mid["batch"]) >= 3, mid  # killed several batches into its run
    for p in per_fault:  # a killed or failing run was failed, by the code server, the watchdog or itself
        if p["kind"] not in ("broker_restart", "s3_restart"):  # clients may ride out a restart by retrying
            assert p["run_status"] == "FAILURE", p
    for feed in ("trades", "quotes"):
        c = counts[feed]
        assert c["clickhouse_rows"] == c["clickhouse_unique_message_ids"] == TICKS_PER_FEED, (feed, c)
        assert c["delta_rows"] == c["delta_unique_message_ids"] == TICKS_PER_FEED, (feed, c)
    assert (
        counts["trades"]["clickhouse_unique_trade_ids"] == counts["trades"]["delta_unique_trade_ids"] == TICKS_PER_FEED
    )
    assert report["backlog"] == {"trades": 0, "quotes": 0}
    assert_bars_equal(stored_bars(res["clickhouse"]), reference_bars(trades))
