"""Issue 13 item 4: backup and restore with measured recovery, and the ClickHouse rebuild from the lake.

The restore test runs in an instance of its own, through the CLI as an operator would: back up, lose the stores'
disks (PostgreSQL, SeaweedFS, chDB; Pulsar survives, as a separate cluster would), start empty services, restore,
and find every table as it was; then what was published after the backup is ingested again, exactly once."""

import os
import shutil
import subprocess
import sys
import time

import orjson

from nautilus_assets.market_data import sinks
from nautilus_assets.market_data.ingest import run_batch
from nautilus_assets.market_data.schema import QUOTES, TRADES
from nautilus_assets.market_data.simulator import MarketSimulator
from resources.settings import build_resources, instance_environ, load
from scripts.backup import rebuild_clickhouse
from scripts.history import write_history
from scripts.publisher import publish_tables
from tests.helpers import ROOT

WEEK = 7 * 86400
INSTR = ["AAPL.XNAS", "SPY.ARCX"]


def cli(env: dict, *args: str, timeout: float = 600) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "scripts.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"nautilus {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def snapshot(r) -> dict:
    """Row count and an order-free content hash of every ClickHouse table, the bronze Delta versions and row counts,
    and the portfolio store's fills."""
    out = {}
    with r["clickhouse"].session() as c:
        for db, t in c.query(
            "SELECT database, name FROM system.tables WHERE database IN %(d)s AND engine LIKE '%%MergeTree'",
            parameters={"d": ["market_data", "analytics", "microstructure", "risk", "ml"]},
        ).result_rows:
            out[f"{db}.{t}"] = tuple(c.query(f"SELECT count(), sum(cityHash64(*)) FROM `{db}`.`{t}`").first_row)
    for feed in (TRADES, QUOTES):
        dt = r["lake"].table(sinks.bronze_table(feed))
        out[f"delta.{feed.name}"] = (dt.version(), dt.to_pyarrow_table(columns=["message_id"]).num_rows)
    with r["postgres"].connect() as conn:
        out["pg.fills"] = conn.execute(
            "SELECT count(*), md5(string_agg(fill_id || ':' || quantity || ':' || price, ','"
            " ORDER BY fill_id)) FROM portfolio.fills"
        ).fetchone()
    return out


def publish(r, n: int, seed: int) -> None:
    trades, quotes = MarketSimulator(INSTR, seed=seed, start_ns=time.time_ns() - 10 * 60 * 10**9).take(n, n)
    publish_tables(r["pulsar"], trades, quotes)


def ingest(r) -> dict:
    return {
        f.name: run_batch(
            f,
            r["pulsar"],
            r["lake"],
            r["clickhouse"],
            f"b-{f.name}-{time.time_ns()}",
            100_000,
            20,
            WEEK,
            log=lambda m: None,
        ).written_clickhouse
        for f in (TRADES, QUOTES)
    }


def test_backup_wipe_restore_and_replay_since_the_backup(settings, tmp_path):
    instance = f"backup-{os.getpid()}"
    env = instance_environ(instance, settings.port_base + 3000)
    s = load(env)
    try:
        cli(env, "services", "start")
        s = s.reload()  # with the credentials the start-up generated
        r = build_resources(s)
        write_history(r["lake"], INSTR, days=3, events_per_day=4000, postgres=r["postgres"], clickhouse=r["clickhouse"])
        publish(r, 1500, seed=1)
        assert ingest(r) == {"trades": 1500, "quotes": 1500}
        before = snapshot(r)

        t = time.monotonic()
        cli(env, "backup", "--to", str(tmp_path / "b1"))
        backup_s = time.monotonic() - t
        manifest = orjson.loads((tmp_path / "b1" / "manifest.json").read_bytes())
        assert manifest["clickhouse"]["market_data.trades"]["rows"] == before["market_data.trades"][0]
        time.sleep(1.1)
        publish(r, 700, seed=2)  # after the backup: only Pulsar has it when the disks go
        assert ingest(r) == {"trades": 700, "quotes": 700}

        cli(env, "services", "stop")
        for lost in ("pg", "s3", "chdb"):
            shutil.rmtree(s.home / lost)
        cli(env, "services", "start")  # empty stores, schema and roles set up again
        assert r["clickhouse"].scalar("SELECT count() FROM market_data.trades") == 0
        assert r["lake"].table(sinks.bronze_table(TRADES)) is None

        t = time.monotonic()
        out = cli(env, "restore", "--from", str(tmp_path / "b1"))
        restore_s = time.monotonic() - t
        assert "trades/nautilus-ingest" in out and "quotes/nautilus-ingest" in out
        assert snapshot(r) == before  # every table as it was at the backup

        again = ingest(r)  # what Pulsar kept since the backup, exactly once
        assert again == {"trades": 700, "quotes": 700}, again
        assert snapshot(r)["market_data.trades"][0] == before["market_data.trades"][0] + 700
        print(
            f"\n[backup] backup {backup_s:.1f}s, restore {restore_s:.1f}s (RTO of this size), "
            f"{sum(t['rows'] for t in manifest['clickhouse'].values())} ClickHouse rows, "
            f"{manifest['lake']['bytes'] / 1e6:.1f} MB of lake; RPO: what Pulsar retains (0 lost here)"
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "scripts.cli", "services", "remove"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=300,
        )


def test_rebuild_clickhouse_from_the_lake_gives_identical_tables(clean):
    res = clean
    write_history(res["lake"], INSTR, days=2, events_per_day=4000, clickhouse=res["clickhouse"])
    publish(res, 1000, seed=3)
    ingest(res)
    query = {
        "trades": "SELECT count(), sum(cityHash64(*)) FROM market_data.trades",
        "quotes": "SELECT count(), sum(cityHash64(*)) FROM market_data.quotes",
        "trade_ids": "SELECT count(), sum(cityHash64(*)) FROM market_data.trade_ids FINAL",
        "bars_1m": "SELECT count(), sum(cityHash64(instrument_id, minute, open, high, low, close, volume, vwap, "
        "trade_count, buy_volume, sell_volume)) FROM market_data.bars_1m FINAL",
    }
    before = {k: tuple(res["clickhouse"].query_df(q).iloc[0]) for k, q in query.items()}
    out = rebuild_clickhouse(load(), log=lambda m: None)
    after = {k: tuple(res["clickhouse"].query_df(q).iloc[0]) for k, q in query.items()}
    assert after == before and before["trades"][0] > 1000
    assert out["rows"]["trades"] == before["trades"][0]
    print(f"\n[rebuild] {out}")
