"""Backup, restore and the ClickHouse rebuild: `nautilus backup --to DIR`, `nautilus restore --from DIR`,
`nautilus rebuild clickhouse`.

A backup is a directory: each PostgreSQL database (the stores' `nautilus` and the Dagster instance's) as a pg_dump
custom archive, every object of the lake bucket, each ClickHouse table of the products as its DDL plus its rows in
ClickHouse's Native format, and manifest.json (when it started, row counts, Delta versions, seconds). Stores are
copied one after the other while the platform may run, so each is a consistent snapshot of a slightly later moment;
the manifest keeps the earliest, the backup's start.

Restore puts everything back into an instance whose services run and whose Dagster processes do not, then moves
the ingest subscriptions back to the backup's start: Pulsar still holds what was published since (retention: 7 days
for market data, 1 day for fills), and the exactly-once ingest takes it in again without doubling what the backup
had, so the recovery point is the failure itself for whatever Pulsar retains, and the backup's start otherwise.

The lake is the system of record for market data: `rebuild clickhouse` recreates the market-data tables (trades,
quotes, trade ids, minute bars) from the bronze Delta tables with identical contents; the products' own tables are
re-materialized by a backfill of their assets."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import requests

from nautilus_assets.market_data import sinks
from nautilus_assets.market_data.schema import FEEDS, TRADES, ddl
from resources.settings import Settings, build_resources

from .services import PG_BIN, port_open

CLICKHOUSE_DATABASES = ("market_data", "analytics", "microstructure", "risk", "ml")
MANIFEST = "manifest.json"


def _pg(s: Settings, tool: str, db: str, *args: str) -> subprocess.CompletedProcess:
    """pg_dump / pg_restore as the platform's admin role; the password through libpq's PGPASSWORD (the environment),
    never on a command line."""
    argv = [
        str(PG_BIN / tool),
        "-h",
        s["DAGSTER_PG_HOST"],
        "-p",
        s["DAGSTER_PG_PORT"],
        "-U",
        s["DAGSTER_PG_USER"],
        "-d",
        db,
        *args,
    ]
    return subprocess.run(
        argv, env={**os.environ, "PGPASSWORD": s["DAGSTER_PG_PASSWORD"]}, capture_output=True, text=True, check=True
    )


def _databases(s: Settings) -> list[str]:
    return ["nautilus", s["DAGSTER_PG_DB"]]


def _tables(ch) -> list[tuple[str, str]]:
    """The products' ClickHouse tables (not views, not the scratch Memory tables of a batch)."""
    with ch.session() as c:
        return [
            tuple(r)
            for r in c.query(
                "SELECT database, name FROM system.tables WHERE database IN %(d)s AND engine LIKE '%%MergeTree' "
                "ORDER BY database, name",
                parameters={"d": list(CLICKHOUSE_DATABASES)},
            ).result_rows
        ]


def _stored_columns(c, db: str, table: str) -> list[str]:
    """Columns that hold data (ALIAS and MATERIALIZED ones are computed, and SELECT * leaves them out)."""
    return [
        r[0]
        for r in c.query(
            "SELECT name FROM system.columns WHERE database = %(d)s AND table = %(t)s AND "
            "default_kind NOT IN ('ALIAS', 'MATERIALIZED') ORDER BY position",
            parameters={"d": db, "t": table},
        ).result_rows
    ]


def backup(s: Settings, dest: Path, log=print) -> dict:
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty: a backup goes into a new directory")
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o700)  # it holds every store's data and the role definitions
    r, t0 = build_resources(s), time.time()
    manifest: dict = {
        "started_ms": int(t0 * 1000),
        "instance": s.instance,
        "postgres": {},
        "lake": {},
        "clickhouse": {},
    }
    for db in _databases(s):
        _pg(s, "pg_dump", db, "-Fc", "-f", str(dest / f"postgres-{db}.dump"))
        manifest["postgres"][db] = (dest / f"postgres-{db}.dump").stat().st_size
    log(f"PostgreSQL: {', '.join(_databases(s))} dumped")
    manifest["lake"] = _copy_bucket(r["lake"], dest / "lake")
    log(f"lake: {manifest['lake']['objects']} objects, {manifest['lake']['bytes'] / 1e6:.1f} MB")
    with r["clickhouse"].session() as c:
        for db, table in _tables(r["clickhouse"]):
            cols = _stored_columns(c, db, table)
            data = c.raw_query(f"SELECT {', '.join(f'`{n}`' for n in cols)} FROM `{db}`.`{table}`", fmt="Native")
            (dest / "clickhouse").mkdir(exist_ok=True)
            (dest / "clickhouse" / f"{db}.{table}.native").write_bytes(data)
            manifest["clickhouse"][f"{db}.{table}"] = {
                "ddl": c.query(f"SHOW CREATE TABLE `{db}`.`{table}`").first_row[0],
                "columns": cols,
                "rows": int(c.command(f"SELECT count() FROM `{db}`.`{table}`")),
            }
    log(
        f"ClickHouse: {len(manifest['clickhouse'])} tables, "
        f"{sum(t['rows'] for t in manifest['clickhouse'].values())} rows"
    )
    manifest["seconds"] = round(time.time() - t0, 1)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    return manifest


def _copy_bucket(lake, dest: Path) -> dict:
    """Every object of the lake bucket. Keys come in order, so a Delta table's _delta_log/ is listed before its data
    files: a data file a listed commit names was written before that commit, so it is there when it is reached (a file
    vacuumed meanwhile was no longer named by any commit still kept)."""
    s3, n, size, versions = lake.s3_client(), 0, 0, {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=lake.bucket):
        for obj in page.get("Contents", []):
            path = dest / obj["Key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                s3.download_file(lake.bucket, obj["Key"], str(path))
            except s3.exceptions.ClientError:  # removed since the listing (vacuum)
                continue
            n, size = n + 1, size + obj["Size"]
    for feed in FEEDS.values():
        dt = lake.table(sinks.bronze_table(feed))
        versions[feed.name] = None if dt is None else dt.version()
    return {"objects": n, "bytes": size, "delta_versions": versions}


def restore(s: Settings, src: Path, log=print) -> dict:
    """The backup into this instance (its services up, its Dagster processes stopped), replacing what is there."""
    manifest = json.loads((src / MANIFEST).read_text())
    if port_open(s.port("webserver")):
        raise RuntimeError("the Dagster webserver of this instance is running: stop `nautilus up` before a restore")
    r, t0 = build_resources(s), time.time()
    for db in _databases(s):
        _pg(s, "pg_restore", db, "--clean", "--if-exists", "--single-transaction", str(src / f"postgres-{db}.dump"))
    log("PostgreSQL restored")
    _restore_bucket(r["lake"], src / "lake")
    log(f"lake restored ({manifest['lake']['objects']} objects)")
    with r["clickhouse"].session() as c:
        for name, table in manifest["clickhouse"].items():
            db = name.split(".", 1)[0]
            c.command(f"CREATE DATABASE IF NOT EXISTS `{db}`")
            c.command(f"DROP TABLE IF EXISTS {name} SYNC")
            c.command(table["ddl"])
            data = (src / "clickhouse" / f"{name}.native").read_bytes()
            if table["rows"]:
                c.raw_insert(name, column_names=table["columns"], insert_block=data, fmt="Native")
    log(f"ClickHouse restored ({len(manifest['clickhouse'])} tables)")
    rewound = rewind_ingest(s, manifest["started_ms"])
    log(f"ingest subscriptions moved back to the backup's start: {rewound or 'no admin API: nothing moved'}")
    return {"seconds": round(time.time() - t0, 1), "rewound": rewound}


def _restore_bucket(lake, src: Path) -> None:
    s3 = lake.s3_client()
    lake.ensure_buckets()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=lake.bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=lake.bucket, Delete={"Objects": keys})
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        s3.upload_file(str(path), lake.bucket, str(path.relative_to(src)))


def rewind_ingest(s: Settings, ms: int) -> list[str]:
    """Move the ingest subscriptions (and the positions' fills subscription) back to `ms` through the admin API, so
    what was published since is consumed again; the sinks' de-duplication keeps it exactly once."""
    from nautilus_assets.market_data.schema import SUBSCRIPTION
    from nautilus_assets.portfolio.assets import SUBSCRIPTION as FILLS_SUBSCRIPTION
    from resources.topics import PORTFOLIO_FILLS

    admin = s["PULSAR_ADMIN_URL"]
    if not admin:
        return []
    done = []
    for topic, sub in [*((f.topic, SUBSCRIPTION) for f in FEEDS.values()), (PORTFOLIO_FILLS, FILLS_SUBSCRIPTION)]:
        path = topic.split("://", 1)[1]
        resp = requests.post(
            f"{admin.rstrip('/')}/admin/v2/persistent/{path}/subscription/{sub}/resetcursor/{ms}", timeout=30
        )
        if resp.status_code == 404:  # never created: nothing consumed from it yet
            continue
        resp.raise_for_status()
        done.append(f"{path.rsplit('/', 1)[-1]}/{sub}")
    return done


def rebuild_clickhouse(s: Settings, log=print) -> dict:
    """The market-data tables recreated from the lake's bronze Delta tables, one date partition at a time (memory
    bounded by a day), then every minute bar recomputed from the trades. Returns rows and rows/s."""
    r, t0 = build_resources(s), time.time()
    ch, lake = r["clickhouse"], r["lake"]
    with ch.session() as c:
        for table in ("trades", "quotes", "trade_ids", "bars_1m"):
            c.command(f"DROP TABLE IF EXISTS {sinks.DB}.{table} SYNC")
    ch.ensure(ddl(sinks.DB))
    rows, dates = {}, []
    for name, feed in FEEDS.items():
        dt = lake.table(sinks.bronze_table(feed))
        if dt is None:
            continue
        days = sorted({d for d, _, _ in sinks.file_dates(dt)})
        dates += days
        rows[name] = 0
        for d in days:
            part = dt.to_pyarrow_dataset(partitions=[("date", "=", d.isoformat())]).to_table()
            part = part.select(feed.arrow_schema.names).cast(feed.arrow_schema)
            rows[name] += sinks.write_clickhouse(ch, feed, part, existing=set())
        log(f"{name}: {rows[name]} rows from {len(days)} days of the lake")
    if dates and rows.get(TRADES.name):
        sinks.recompute_bars_for_dates(ch, min(dates), max(dates), "rebuild")
    seconds = time.time() - t0
    total = sum(rows.values())
    return {"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(total / seconds) if seconds else None}
