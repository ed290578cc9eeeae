"""`nautilus` command line: services, setup, simulate, replay, history, up (the run command), env."""
from __future__ import annotations

import argparse
import json
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from resources.settings import API_PORTS, Settings, SettingsError, apply, build_resources, load

from . import services

ROOT = Path(__file__).resolve().parent.parent


def say(msg: str) -> None:
    services.emit(f"[nautilus] {msg}")


def prepare_dagster_home(s: Settings) -> Path:
    """A per-instance DAGSTER_HOME holding the project's dagster.yaml."""
    home = Path(s["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    if not link.exists():
        link.symlink_to(ROOT / "dagster.yaml")
    return home


def setup(s: Settings) -> None:
    """Buckets, ClickHouse tables, Pulsar tenant/namespaces/topics and subscriptions, and the Dagster instance
    schema (idempotent)."""
    from nautilus_assets.market_data.setup import ensure_clickhouse, ensure_subscriptions
    from nautilus_assets.stores import ensure_all
    from resources import topics
    r = build_resources(s)
    from resources.access import apply_postgres
    apply_postgres(s)  # domain schemas and login roles, read grants as declared (resources/access.py)
    r["lake"].ensure_buckets(s["NAUTILUS_LOGS_BUCKET"])
    ensure_clickhouse(r["clickhouse"])
    ensure_all(r)  # every product's tables (and the columns added since), here rather than in each materialization
    if s["PULSAR_ADMIN_URL"]:  # Apache Pulsar; pulsar-lite has no admin API and creates topics on first use
        topics.ensure(s["PULSAR_ADMIN_URL"])
    ensure_subscriptions(r["pulsar"])
    prepare_dagster_home(s)
    from dagster import DagsterInstance
    with DagsterInstance.get() as inst:  # creates/migrates the PostgreSQL schema once, before the daemons race for it
        inst.upgrade()
        from nautilus_assets.pools import apply_pool_limits
        apply_pool_limits(inst)          # one concurrency pool per backend, sized from the engine shares


def access_command(s: Settings, what: str) -> None:
    """Print the declaration or the SQL made from it (passwords only as SCRAM verifiers / salted hashes)."""
    from resources import access
    if what == "show":
        print(f"{'role':15} " + " ".join(f"{p:>14}" for p in access.DOMAINS))
        for r in access.ROLES:
            print(f"{r:15} " + " ".join(f"{access.access(r, p):>14}" for p in access.DOMAINS))
        return
    if what == "postgres-sql":
        statements = access.postgres_sql(s["DAGSTER_PG_USER"], access.role_passwords(s.env))
    else:
        statements = access.clickhouse_sql(access.role_passwords(s.env, "CH"))
    print("\n".join(f"{stmt};" for stmt in statements))


def quarantine_command(s: Settings, a) -> None:
    from nautilus_assets.market_data import quarantine
    from resources.settings import streaming
    try:
        since = quarantine.parse_since(a.since) if a.since else None
    except ValueError as e:
        sys.exit(f"nautilus quarantine: {e}")
    r = build_resources(s)
    if a.action == "replay":
        out = quarantine.replay(r["pulsar"], r["lake"], r["clickhouse"], streaming(s.env).lateness_bound_s,
                                s.home / "quarantine-replay.lock", feed=a.feed, reason=a.reason, since=since,
                                accept_late=a.accept_late, log=say)
        say(f"{out['replay_id']}: {out['taken']} taken, {out['stored']} stored, {out['quarantined']} still "
            f"quarantined {out['reasons'] or ''}".rstrip())
        if out["closed_dates"]:
            report_replay(out)
        return
    rows = quarantine.select(r["clickhouse"], feed=a.feed, reason=a.reason, since=since)
    print(f"{'quarantined_at':26} {'topic':14} {'message_id':18} {'replayed':10} reason")
    for q in rows[:a.limit]:
        print(f"{q['quarantined_at']:%Y-%m-%d %H:%M:%S.%f} {q['topic'].rsplit('/', 1)[-1]:14} {q['message_id']:18} "
              f"{(q['replay_outcome'] or '-').split(':')[0]:10} {q['reason'][:120]}")
    pending = sum(q["replay_outcome"] != quarantine.STORED for q in rows)
    shown = f"; the first {a.limit} shown" if len(rows) > a.limit else ""
    say(f"{len(rows)} quarantined ({pending} not stored by a replay){shown}")


def report_replay(out: dict) -> None:
    """A replay outside any run, told to Dagster: the bars it recomputed as a runless materialization, naming the
    earlier days it added trades to, so the late-trades sensor re-runs their day-level products as for a live batch."""
    import dagster as dg

    from nautilus_assets.market_data.assets import BARS_KEY, CLOSED_DATES
    meta = {"replay_id": out["replay_id"], "stored": out["stored"], CLOSED_DATES: ",".join(sorted(out["closed_dates"]))}
    with dg.DagsterInstance.get() as inst:
        inst.report_runless_asset_event(dg.AssetMaterialization(asset_key=BARS_KEY, metadata=meta))
    say(f"reported to Dagster: the day-level products of {meta[CLOSED_DATES]} will be re-run")


def instruments(s: Settings) -> list[str]:
    return [i.strip() for i in s["NAUTILUS_INSTRUMENTS"].split(",") if i.strip()]


STOP_WITHIN_S = 30


def fail_in_flight_runs(reason: str) -> int:
    """Report the runs a shutdown killed as failed (they are re-run later: ingest is exactly-once), so the next start
    launches their successors at once instead of waiting for the watchdog."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
    with DagsterInstance.get() as inst:
        records = inst.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING,
                                                            DagsterRunStatus.CANCELING]))
        for rec in records:
            inst.report_run_failed(rec.dagster_run, reason)
    return len(records)


def up(s: Settings, rate: float, history_days: int, volume: str = "small") -> None:
    """Start everything, publish a live market, serve the UI; Ctrl-C stops all of it."""
    if history_days:   # a bad --volume stops here, not after the services started
        from nautilus_assets.market_data.simulator import volume_settings
        volume_settings(volume, 1)
    children: list[tuple[str, subprocess.Popen]] = []
    stopping = False
    session = {services.SESSION_VAR: secrets.token_hex(8)}   # marks every process started below, at any depth

    def stop(*_):
        """Within STOP_WITHIN_S, whatever stdout is (closed, a file) and whatever runs are in flight: the Dagster
        processes' groups first (nothing new launches), then what they started in groups of their own (code servers,
        run workers), the killed runs reported failed, then the services."""
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):   # a second Ctrl-C must not abort the stop
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
        say(f"stopped in {time.monotonic() - t:.0f}s; {'no process left behind' if not left else f'{len(left)} killed'}")

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
            say(f"writing {history_days} past days into the lake and the portfolio store "
                f"(the last {STREAMING_HISTORY_DAYS} also into ClickHouse) ...")
            r = build_resources(s)
            write_history(r["lake"], instruments(s), history_days, HISTORY_EVENTS_PER_DAY, postgres=r["postgres"],
                          clickhouse=r["clickhouse"], clickhouse_days=STREAMING_HISTORY_DAYS, pulsar=r["pulsar"],
                          volume=volume)
        py = sys.executable
        children.append(("simulator", services.spawn(s, "simulator", [py, "-m", "scripts.cli", "simulate", "--rate",
                                                                       str(rate)], session)))
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
    from datetime import datetime, timedelta, timezone

    import requests

    from nautilus_assets.analytics.assets import KEY as ANALYTICS
    from nautilus_assets.market_data.daily import KEY as BARS_1D
    from nautilus_assets.microstructure.assets import KEY as VPIN
    from nautilus_assets.ml.assets import KEY as ML
    from nautilus_assets.portfolio.assets import KEY as POSITIONS
    from nautilus_assets.pools import PRIORITY
    from nautilus_assets.portfolio.daily import KEY as NAV
    from nautilus_assets.risk.assets import KEYS as RISK
    yesterday = datetime.now(timezone.utc).date() - timedelta(days=1)
    first = yesterday - timedelta(days=history_days - 1)
    span = {"range": {"start": first.isoformat(), "end": yesterday.isoformat()}}
    parts = [(ANALYTICS, None), (VPIN, None), (POSITIONS, None), (BARS_1D, span), (NAV, span), *((k, span) for k in RISK),
             (ML, {"range": {"start": yesterday.isoformat(), "end": yesterday.isoformat()}})]
    params = {"title": "nautilus up: every product over the history",
              "tags": [{"key": "nautilus/trigger", "value": "run command"},   # below live ingest and products
                       {"key": "dagster/priority", "value": str(PRIORITY["backfill"])}],
              "partitionsByAssets": [{"assetKey": {"path": k.path}, "partitions": p} for k, p in parts]}
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
            recs = inst.fetch_materializations(AssetRecordsFilter(asset_key=key, after_timestamp=after[name]),
                                               limit=10_000, ascending=True).records
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
    from datetime import datetime, timezone

    from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
    seen: set[str] = set()
    since = datetime.fromtimestamp(t0, timezone.utc)
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
                what = r.tags.get("nautilus/batch_id") or ", ".join(sorted(k.to_user_string() for k in r.asset_selection or []))
                say(f"{r.job_name} {what or r.run_id[:8]}: {r.status.value} "
                    f"at +{time.time() - t0:.0f}s{first}")
            time.sleep(2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="nautilus", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("services", help="start, report or stop the platform's services")
    sp.add_argument("action", choices=["start", "status", "stop", "remove"])
    sub.add_parser("setup", help="create buckets, tables, subscriptions, instance schema")
    sp = sub.add_parser("simulate", help="publish a live simulated market")
    sp.add_argument("--rate", type=float, default=500.0, help="events per second (trades + quotes)")
    sp.add_argument("--duration", type=float, default=None, help="seconds (default: until stopped)")
    sp.add_argument("--seed", type=int, default=7)
    sp = sub.add_parser("replay", help="publish a Parquet or CSV file of historical ticks")
    sp.add_argument("path", type=Path)
    sp.add_argument("--rate", type=float, default=None, help="rows per second per topic (default: as fast as possible)")
    sp = sub.add_parser("history", help="write N past days straight into the lake")
    sp.add_argument("--days", type=int, required=True)
    sp.add_argument("--events-per-day", type=int, default=40_000)
    # choices checked by the simulator (importing it here would load NumPy and Arrow for every command)
    sp.add_argument("--model", default="stylized", help="the simulated market: stylized | gaussian | random_walk")
    sp.add_argument("--volume", default="small",
                    help="small | realistic: a listed stock's day (100,000 trades, 1,000,000 quotes per instrument)")
    sp = sub.add_parser("up", help="run the platform: services, simulator, Dagster daemon and UI")
    sp.add_argument("--rate", type=float, default=500.0)
    sp.add_argument("--history-days", type=int, default=520,
                    help="past days written first and backfilled through every product (risk's backtest needs 500)")
    sp.add_argument("--volume", default="small", help="the history's volume: small | realistic (see history)")
    sp = sub.add_parser("quarantine", help="list quarantined messages, or re-ingest them once the cause is fixed")
    sp.add_argument("action", choices=["list", "replay"])
    sp.add_argument("--feed", choices=["trades", "quotes"], help="default: both")
    sp.add_argument("--reason", default="", help="reason prefix, e.g. too_late or bad_value: price")
    sp.add_argument("--since", help="quarantined since: an ISO date/time (UTC) or an age such as 30m, 2h, 7d")
    sp.add_argument("--accept-late", action="store_true", help="replay: exempt from the lateness bound")
    sp.add_argument("--limit", type=int, default=50, help="list: rows shown (the count covers all)")
    sp = sub.add_parser("backup", help="copy PostgreSQL, the lake and ClickHouse into a new directory")
    sp.add_argument("--to", type=Path, required=True)
    sp = sub.add_parser("restore", help="put a backup back (services up, `nautilus up` stopped), then re-ingest "
                                        "what Pulsar still holds since the backup")
    sp.add_argument("--from", dest="src", type=Path, required=True)
    sp = sub.add_parser("rebuild", help="rebuild the market-data ClickHouse tables from the lake")
    sp.add_argument("what", choices=["clickhouse"])
    sub.add_parser("env", help="print the resolved environment (secrets masked)")
    sp = sub.add_parser("api", help="serve the data products' read APIs (each on its own port)")
    sp.add_argument("--product", action="append", choices=list(API_PORTS), help="default: every product")
    sp = sub.add_parser("access", help="who may read which product, and the access-control SQL made from it")
    sp.add_argument("what", choices=["show", "postgres-sql", "clickhouse-sql"],
                    help="show: the declaration; postgres-sql: what `setup` applies; clickhouse-sql: for a server")
    from nautilus_assets.audit.report import add_parser as add_audit_parser
    add_audit_parser(sub)
    a = ap.parse_args(argv)
    try:
        s = apply(load())
    except SettingsError as e:   # before anything starts, naming the variable
        sys.exit(f"nautilus: {e}")

    if a.cmd == "services":
        {"start": lambda: setup(apply(services.start(s))), "stop": lambda: services.stop(s),
         "remove": lambda: services.remove(s),
         "status": lambda: [print(f"{k:28} {v}") for k, v in services.status(s).items()]}[a.action]()
    elif a.cmd == "setup":
        setup(s)
    elif a.cmd == "simulate":
        from .publisher import simulate
        print(simulate(build_resources(s)["pulsar"], instruments(s), a.rate, a.duration, a.seed))
    elif a.cmd == "replay":
        from .publisher import replay
        print(replay(build_resources(s)["pulsar"], a.path, a.rate))
    elif a.cmd == "history":
        from .history import write_history
        r = build_resources(s)
        print(write_history(r["lake"], instruments(s), a.days, a.events_per_day, postgres=r["postgres"],
                            model=a.model, volume=a.volume))
    elif a.cmd == "up":
        up(s, a.rate, a.history_days, a.volume)
    elif a.cmd == "audit":
        from nautilus_assets.audit.report import main as audit_main
        audit_main(a, s)
    elif a.cmd == "api":
        from nautilus_assets.api.serve import main as api_main
        api_main([f"--product={p}" for p in a.product or []])
    elif a.cmd in ("backup", "restore", "rebuild"):
        from . import backup
        if a.cmd == "backup":
            out = backup.backup(s, a.to, log=say)
        elif a.cmd == "restore":
            out = backup.restore(s, a.src, log=say)
        else:
            out = backup.rebuild_clickhouse(s, log=say)
        say(f"{a.cmd} done: {json.dumps({k: v for k, v in out.items() if k in ('seconds', 'rows', 'rows_per_s', 'rewound')})}")
    elif a.cmd == "quarantine":
        quarantine_command(s, a)
    elif a.cmd == "access":
        access_command(s, a.what)
    elif a.cmd == "env":
        for k, v in sorted(s.env.items()):
            v = "***" if any(w in k for w in ("SECRET", "PASSWORD", "TOKEN")) and v else re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", v)
            print(f"{k}={v}")


if __name__ == "__main__":
    main()
