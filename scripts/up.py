"""`nautilus up`, the run command: the services, a simulated market, the Dagster daemon and webserver and the product
APIs, every product backfilled over the history; Ctrl-C (or SIGTERM) stops all of it within STOP_WITHIN_S."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC

from resources.settings import API_PORTS, Settings, apply, build_resources

from . import services
from .provision import setup


def say(msg: str) -> None:
    services.emit(f"[nautilus] {msg}")


STOP_WITHIN_S = 30


def fail_in_flight_runs(reason: str) -> int:
    """Report the runs a shutdown killed as failed (they are re-run later: ingest is exactly-once), so the next start
    launches their successors at once instead of waiting for the watchdog."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.get() as inst:
        records = inst.get_run_records(
            RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.CANCELING])
        )
        for rec in records:
            inst.report_run_failed(rec.dagster_run, reason)
    return len(records)


def up(s: Settings, rate: float, history_days: int, volume: str = "small") -> None:
    """Start everything, publish a live market, serve the UI; Ctrl-C stops all of it."""
    if history_days:  # a bad --volume stops here, not after the services started
        from nautilus_assets.market_data.simulator import volume_settings

        volume_settings(volume, 1)
    children: list[tuple[str, subprocess.Popen]] = []
    stopping = False
    session = {services.SESSION_VAR: secrets.token_hex(8)}  # marks every process started below, at any depth

    def stop(*_):
        """Within STOP_WITHIN_S, whatever stdout is (closed, a file) and whatever runs are in flight: the Dagster
        processes' groups first (nothing new launches), then what they started in groups of their own (code servers,
        run workers), the killed runs reported failed, then the services."""
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not abort the stop
            signal.signal(sig, signal.SIG_IGN)
        t = time.monotonic()
        say(f"stopping (within {STOP_WITHIN_S} s) ...")
        services.kill_groups({name: p.pid for name, p in children}, timeout=5)
        left = services.session_processes(session[services.SESSION_VAR])
        if left:
            say(f"{len(left)} processes started by the Dagster processes (code servers, runs): stopping them")
            services.terminate(left, timeout=4)
        try:
            n = fail_in_flight_runs("stopped by `nautilus up` shutting down; re-run by the next start (exactly once)")
            if n:
                say(f"{n} in-flight runs reported failed; their work is re-run at the next start")
        except Exception as e:  # noqa: BLE001  (the storage may be down already: the watchdog covers it then)
            say(f"could not report the in-flight runs failed ({e}); the next start's watchdog will")
        services.stop(s)
        left = services.session_processes(session[services.SESSION_VAR])
        services.terminate(left, timeout=1)
        say(
            f"stopped in {time.monotonic() - t:.0f}s; {'no process left behind' if not left else f'{len(left)} killed'}"
        )

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(0))
    t0 = time.time()
    try:
        say(f"instance '{s.instance}', data in {s.home}, ports from {s.port_base}")
        s = apply(services.start(s))
        say("setting up tables, buckets, subscriptions and the Dagster instance ...")
        setup(s)
        if history_days:
            from .history import write_history

            say(
                f"writing {history_days} past days into the lake and the portfolio store "
                f"(the last {STREAMING_HISTORY_DAYS} also into ClickHouse) ..."
            )
            r = build_resources(s)
            write_history(
                r["lake"],
                s.instruments,
                history_days,
                HISTORY_EVENTS_PER_DAY,
                postgres=r["postgres"],
                clickhouse=r["clickhouse"],
                clickhouse_days=STREAMING_HISTORY_DAYS,
                pulsar=r["pulsar"],
                volume=volume,
            )
        py = sys.executable
        children.append(
            (
                "simulator",
                services.spawn(s, "simulator", [py, "-m", "scripts.cli", "simulate", "--rate", str(rate)], session),
            )
        )
        children.append(("dagster-daemon", services.dagster_daemon(s, env=session)))
        children.append(("dagster-webserver", services.dagster_webserver(s, env=session)))
        children.append(("api", services.spawn(s, "api", [py, "-m", "nautilus_assets.api.serve"], session)))
        say(f"simulator publishing {rate:g} events/s; starting the Dagster daemon and webserver (logs in {s.home}) ...")
        services.wait_port(s.port("webserver"), "dagster-webserver", timeout=300)
        say(f"Dagster UI: {s.webserver_url}  (set up in {time.time() - t0:.0f}s; Ctrl-C stops everything)")
        for product in API_PORTS:
            services.wait_port(s.api_port(product), f"{product} API", timeout=120)
            say(f"{product} API: {s.api_url(product)}  (docs {s.api_url(product).split('/api/')[0]}/docs)")
        say(f"API tokens: NAUTILUS_API_<ROLE>_TOKEN in {s.home / 'credentials.env'}")
        if history_days:
            backfill = launch_backfill(s, history_days)
            say(f"backfill {backfill}: every product over the history (watch it under Overview > Backfills)")
        watch(s, children, t0)
    except KeyboardInterrupt:
        pass
    finally:
        stop()


STREAMING_HISTORY_DAYS = 21
HISTORY_EVENTS_PER_DAY = 4000
BACKFILL = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""


def launch_backfill(s: Settings, history_days: int) -> str:
    """One asset backfill through the webserver's GraphQL API: the streaming products once, the day-level chain
    over every history day (one run per asset: single-run backfill policies), and ML for yesterday."""
    from datetime import datetime, timedelta

    import requests

    from nautilus_assets.analytics.assets import KEY as ANALYTICS
    from nautilus_assets.market_data.daily import KEY as BARS_1D
    from nautilus_assets.microstructure.assets import KEY as VPIN
    from nautilus_assets.ml.assets import KEY as ML
    from nautilus_assets.pools import PRIORITY
    from nautilus_assets.portfolio.assets import KEY as POSITIONS
    from nautilus_assets.portfolio.daily import KEY as NAV
    from nautilus_assets.risk.assets import KEYS as RISK

    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    first = yesterday - timedelta(days=history_days - 1)
    span = {"range": {"start": first.isoformat(), "end": yesterday.isoformat()}}
    parts = [
        (ANALYTICS, None),
        (VPIN, None),
        (POSITIONS, None),
        (BARS_1D, span),
        (NAV, span),
        *((k, span) for k in RISK),
        (ML, {"range": {"start": yesterday.isoformat(), "end": yesterday.isoformat()}}),
    ]
    params = {
        "title": "nautilus up: every product over the history",
        "tags": [
            {"key": "nautilus/trigger", "value": "run command"},  # below live ingest and products
            {"key": "dagster/priority", "value": str(PRIORITY["backfill"])},
        ],
        "partitionsByAssets": [{"assetKey": {"path": k.path}, "partitions": p} for k, p in parts],
    }
    r = requests.post(f"{s.webserver_url}/graphql", json={"query": BACKFILL, "variables": {"p": params}}, timeout=120)
    out = r.json()["data"]["launchPartitionBackfill"]
    if out["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"backfill not launched: {out}")
    return out["backfillId"]


def _batch_summary(inst, feeds: dict, after: dict, span_s: float) -> str:
    """One line on the batches the ingest runs committed since the last look (a reporting error never stops `up`)."""
    from dagster import AssetRecordsFilter

    parts = []
    try:
        for name, key in feeds.items():
            recs = inst.fetch_materializations(
                AssetRecordsFilter(asset_key=key, after_timestamp=after[name]), limit=10_000, ascending=True
            ).records
            if recs:
                after[name] = recs[-1].timestamp
                meta = [r.asset_materialization.metadata for r in recs]
                rows = sum(int(m["valid"].value) for m in meta if "valid" in m)
                parts.append(f"{name} {len(recs)} batches / {rows} rows (latest {meta[-1]['batch_id'].value})")
    except Exception as e:  # noqa: BLE001
        return f"batch summary unavailable: {e}"
    return f"committed in the last {span_s:.0f}s: " + ("; ".join(parts) or "nothing")


def watch(s: Settings, children, t0: float) -> None:
    """Report each finished run, and every 10 s the micro-batches the long-lived ingest runs committed, until
    interrupted; stop if a child process dies."""
    from datetime import datetime

    from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

    seen: set[str] = set()
    since = datetime.fromtimestamp(t0, UTC)
    feeds = {name: AssetKey(["market_data_feed", name]) for name in ("trades", "quotes")}
    after = {name: float(t0) for name in feeds}
    last_summary = time.time()
    with DagsterInstance.get() as inst:
        while True:
            if time.time() - last_summary >= 10:
                say(_batch_summary(inst, feeds, after, time.time() - last_summary))
                last_summary = time.time()
            for name, p in children:
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}; see {s.home / (name + '.log')}")
            finished = RunsFilter(statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE], created_after=since)
            for rec in reversed(inst.get_run_records(finished, limit=10)):
                r = rec.dagster_run
                if r.run_id in seen:
                    continue
                seen.add(r.run_id)
                first = " (first batch)" if len(seen) == 1 else ""
                what = r.tags.get("nautilus/batch_id") or ", ".join(
                    sorted(k.to_user_string() for k in r.asset_selection or [])
                )
                say(f"{r.job_name} {what or r.run_id[:8]}: {r.status.value} at +{time.time() - t0:.0f}s{first}")
            time.sleep(2)
