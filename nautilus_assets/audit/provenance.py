"""Row-level provenance: from a stored product row to the micro-batch (Dagster run) that wrote it, what triggered
that run, the Pulsar message-id range or lake version it read, its code version and data version; and a replay
of a batch that checks the data version comes out the same."""

from __future__ import annotations

import re
from datetime import date, datetime

import dagster as dg

from .lineage import iso, trigger_of

BATCH_TAG = "nautilus/batch_id"
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
PG_SCHEMAS = ("portfolio",)


def _json(v):
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    if isinstance(v, bytes):
        return v.hex()
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "like")
MAX_ROWS = 100  # the most rows one look-up returns, whatever the caller asks
QUERY_TIMEOUT_S = 30  # and the longest it may hold the store (the chDB server serialises queries)


def parse_filter(text: str) -> tuple[str, str, str]:
    """'column op value' (op one of OPERATORS; the value is everything after it, taken literally) -> a filter."""
    m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|=|<|>|\blike\b)\s*(.*)$", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"filter {text!r}: expected 'column op value' with op one of {', '.join(OPERATORS)}")
    return m.group(1), m.group(2).lower(), m.group(3)


def _checked(filters, columns: dict[str, str], table: str) -> list[tuple[str, str, str]]:
    out = []
    for col, op, value in filters:
        if col not in columns:
            raise ValueError(f"{table} has no column {col!r} (columns: {', '.join(sorted(columns))})")
        if op not in OPERATORS:
            raise ValueError(f"operator {op!r}: one of {', '.join(OPERATORS)}")
        out.append((col, op, str(value)))
    return out


def fetch_rows(res: dict, table: str, filters, limit: int = 5) -> list[dict]:
    """Rows of `table` (db.table) matching every (column, operator, value) filter: columns checked against the
    table, values bound as typed parameters (never spliced into SQL), at most MAX_ROWS rows, and the query
    stopped after QUERY_TIMEOUT_S seconds. Read with the governance role where there is one."""
    if not IDENT.match(table):
        raise ValueError(f"not a db.table name: {table!r}")
    limit = max(1, min(int(limit), MAX_ROWS))
    db, name = table.split(".")
    if db in PG_SCHEMAS:
        from psycopg import sql

        pg = res.get("postgres_governance") or res["postgres"]  # the read-only governance role where there is one
        with pg.connect() as conn:
            conn.execute(f"SET statement_timeout = '{QUERY_TIMEOUT_S}s'")
            columns = dict(
                conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = %s",
                    (db, name),
                ).fetchall()
            )
            checked = _checked(filters, columns, table)
            where = (
                sql.SQL(" AND ").join(
                    sql.SQL("{}::text {} %s" if op == "like" else "{} {} %s").format(sql.Identifier(c), sql.SQL(op))
                    for c, op, _ in checked
                )
                if checked
                else sql.SQL("TRUE")
            )
            cur = conn.execute(
                sql.SQL("SELECT * FROM {}.{} WHERE {} LIMIT {}").format(
                    sql.Identifier(db), sql.Identifier(name), where, sql.Literal(limit)
                ),
                [v for *_, v in checked],
            )
            names = [d.name for d in cur.description]
            return [{n: _json(v) for n, v in zip(names, row)} for row in cur.fetchall()]
    ch = res["clickhouse"]
    with ch.session() as c:
        columns = dict(
            c.query(
                "SELECT name, type FROM system.columns WHERE database = %(d)s AND table = %(t)s",
                parameters={"d": db, "t": name},
            ).result_rows
        )
        checked = _checked(filters, columns, table)
        # server-side parameters: each value travels apart from the SQL and is parsed as the column's type (from
        # the catalog), never as SQL
        conds = [
            f"toString(`{col}`) LIKE {{p{i}:String}}"
            if op == "like"
            else f"`{col}` {op} CAST({{p{i}:String}} AS {columns[col]})"
            for i, (col, op, _) in enumerate(checked)
        ]
        order = " ORDER BY version DESC" if "version" in columns else ""
        # every column by name: `*` leaves out ALIAS columns such as the products' batch_id
        q = c.query(
            f"SELECT {', '.join(f'`{n}`' for n in columns)} FROM `{db}`.`{name}` "
            f"WHERE {' AND '.join(conds) or '1'}{order} LIMIT {limit}",
            parameters={f"p{i}": v for i, (*_, v) in enumerate(checked)},
            settings={
                "max_execution_time": QUERY_TIMEOUT_S,
                "max_result_rows": MAX_ROWS,
                "result_overflow_mode": "break",
            },
        )
        return [{n: _json(v) for n, v in zip(q.column_names, row)} for row in q.result_rows]


def find_run(instance: dg.DagsterInstance, batch_id: str):
    """The run record of a micro-batch: batch `<run batch id>.<n>` of a long-lived ingest run (tagged with the
    run batch id), a run tagged with the batch id itself, else the batch id is the run id."""
    for candidate in dict.fromkeys([batch_id.rsplit(".", 1)[0], batch_id]):
        recs = instance.get_run_records(dg.RunsFilter(tags={BATCH_TAG: candidate}), limit=1)
        if recs:
            return recs[0]
    recs = instance.get_run_records(dg.RunsFilter(run_ids=[batch_id]), limit=1)
    return recs[0] if recs else None


def table_assets(defs: dg.Definitions) -> dict[str, dg.AssetKey]:
    out = {}
    for spec in defs.resolve_all_asset_specs():
        t = (spec.metadata or {}).get("dagster/table_name")
        if t is not None:
            out[str(getattr(t, "value", t))] = spec.key
    return out


def _materialization(instance, run_id: str, key: dg.AssetKey | None, batch_id: str | None = None):
    """The run's materialization of `key`: the one recording `batch_id` (a long-lived run logs one per batch),
    else the run's last."""
    recs = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=10_000).records
    mine = [r for r in recs if key is None or r.asset_key == key]
    batch = [
        r for r in mine if getattr((r.asset_materialization.metadata or {}).get("batch_id"), "value", None) == batch_id
    ]
    return (batch or mine)[-1] if mine else None


def trace(
    instance: dg.DagsterInstance, defs: dg.Definitions, res: dict, table: str, filters, limit: int = 5
) -> list[dict]:
    """Provenance of each row matching the (column, operator, value) filters (latest version first)."""
    key = table_assets(defs).get(table)
    out = []
    for row in fetch_rows(res, table, filters, limit):
        batch_id = row.get("batch_id") or row.get("run_id")
        item = {"table": table, "asset": key.to_user_string() if key else None, "row": row, "batch_id": batch_id}
        rec = find_run(instance, batch_id) if batch_id else None
        if rec is None:
            item["run"] = None
            out.append(item)
            continue
        run = rec.dagster_run
        item["run"] = {
            "run_id": run.run_id,
            "job": run.job_name,
            "status": run.status.value,
            "trigger": trigger_of(run.tags),
            "started": iso(rec.start_time),
            "ended": iso(rec.end_time),
            "tags": {k: v for k, v in run.tags.items() if k.startswith(("nautilus/", "dagster/"))},
        }
        mat = _materialization(instance, run.run_id, key, batch_id)
        if mat is not None:
            m = mat.asset_materialization
            meta = {k: getattr(v, "value", v) for k, v in (m.metadata or {}).items()}
            item["materialization"] = {
                "asset": mat.asset_key.to_user_string(),
                "partition": m.partition,
                "timestamp": iso(mat.timestamp),
                "code_version": (m.tags or {}).get("dagster/code_version"),
                "data_version": (m.tags or {}).get("dagster/data_version"),
            }
            src = {}
            if "first_message_id" in meta:
                first, last = str(meta["first_message_id"]), str(meta["last_message_id"])
                src["pulsar"] = {
                    "topic": row.get("topic"),
                    "batch_first_message_id": first,
                    "batch_last_message_id": last,
                    "ledger_entry_range": [first.split(":")[:2], last.split(":")[:2]],
                }
                if "message_id" in row:
                    src["pulsar"].update(
                        {
                            "message_id": row["message_id"],
                            "ledger_id": row.get("ledger_id"),
                            "entry_id": row.get("entry_id"),
                        }
                    )
            if "delta_version" in meta and int(meta["delta_version"]) >= 0:
                src["lake"] = {"table": f"bronze/{table.split('.')[1]}", "version": int(meta["delta_version"])}
            if "lake/trades_version" in meta:
                src["lake"] = {"table": "bronze/trades", "version": int(meta["lake/trades_version"])}
            item["source"] = src
        out.append(item)
    return out


def range_in_lake(res: dict, lake_table: str, batch_id: str) -> dict:
    """The message-id span of a batch's rows in the lake (what a replay of the batch from the lake reads)."""
    import pyarrow.compute as pc

    dt = res["lake"].table(lake_table)
    t = dt.to_pyarrow_dataset().to_table(columns=["message_id"], filter=pc.field("batch_id") == batch_id)
    if t.num_rows == 0:
        return {"rows": 0}
    ids = sorted(t["message_id"].to_pylist(), key=lambda m: tuple(int(x) for x in m.split(":")))  # ledger:entry:index
    return {
        "rows": t.num_rows,
        "first_message_id": ids[0],
        "last_message_id": ids[-1],
        "data_version": f"{ids[0]}..{ids[-1]}",
    }


def rematerialize(
    instance: dg.DagsterInstance, defs: dg.Definitions, resources: dict, run_id: str, asset_key: dg.AssetKey
) -> dict:
    """Re-run the asset over the same partitions as `run_id` did and compare the data versions."""
    run = instance.get_run_by_id(run_id)
    before = _materialization(instance, run_id, asset_key)
    tags = {
        k: v
        for k, v in run.tags.items()
        if k in ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
    }
    tags["nautilus/reproduces"] = run_id
    asset = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and asset_key in a.keys)
    result = dg.materialize(
        [asset],
        instance=instance,
        resources=resources,
        tags=tags,
        selection=[asset_key],
        partition_key=run.tags.get("dagster/partition"),
    )
    after = _materialization(instance, result.run_id, asset_key)
    dv = lambda r: (r.asset_materialization.tags or {}).get("dagster/data_version") if r else None  # noqa: E731
    return {
        "original_run": run_id,
        "replay_run": result.run_id,
        "success": result.success,
        "original_data_version": dv(before),
        "replay_data_version": dv(after),
        "same_data_version": dv(before) is not None and dv(before) == dv(after),
    }
