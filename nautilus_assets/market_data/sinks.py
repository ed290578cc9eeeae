"""Writes of one micro-batch to the two sinks. Both de-duplicate on the Pulsar message id, so a
redelivered message or a re-run batch never adds a row twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client
from deltalake import CommitProperties, DeltaTable, write_deltalake

from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource

from . import faults
from .schema import Feed

DB = "market_data"


def id_range(table: pa.Table) -> dict:
    """The batch's (ledger, entry) span: rows stored earlier from the same messages fall inside it."""
    ids = table.select(["ledger_id", "entry_id"]).sort_by([("ledger_id", "ascending"), ("entry_id", "ascending")])
    return {
        "topic": table["topic"][0].as_py(),
        "l0": ids["ledger_id"][0].as_py(),
        "e0": ids["entry_id"][0].as_py(),
        "l1": ids["ledger_id"][-1].as_py(),
        "e1": ids["entry_id"][-1].as_py(),
    }


IN_RANGE_SQL = (
    "topic = %(topic)s AND ledger_id BETWEEN %(l0)s AND %(l1)s "
    "AND (ledger_id > %(l0)s OR entry_id >= %(e0)s) AND (ledger_id < %(l1)s OR entry_id <= %(e1)s)"
)


def in_range_expr(r: dict) -> pc.Expression:
    lid, eid = pc.field("ledger_id"), pc.field("entry_id")
    return (
        (pc.field("topic") == r["topic"])
        & (lid >= r["l0"])
        & (lid <= r["l1"])
        & ((lid > r["l0"]) | (eid >= r["e0"]))
        & ((lid < r["l1"]) | (eid <= r["e1"]))
    )


def _sql_literal(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def span_message_ids(dt: DeltaTable, table: pa.Table, columns: tuple[str, ...] = ()) -> pa.Table:
    """message_id (and `columns`) of the Delta rows in the batch's message-id span. deltalake prunes the files in
    Rust (the date partitions, then each file's min/max statistics of topic, ledger_id and entry_id), so only files
    that may hold the span become pyarrow fragments: a pyarrow filter alone would build one per file of the dates
    (about a millisecond each, growing with the files a day's batches add), and a new batch's span usually prunes to
    none."""
    r = id_range(table)
    dates = ", ".join(_sql_literal(d.isoformat()) for d in pc.unique(table["date"]).to_pylist())
    l0, e0, l1, e1 = (int(r[k]) for k in ("l0", "e0", "l1", "e1"))
    files = (
        f"date IN ({dates}) AND topic = {_sql_literal(r['topic'])} AND ledger_id >= {l0} AND ledger_id <= {l1} "
        f"AND (ledger_id > {l0} OR entry_id >= {e0}) AND (ledger_id < {l1} OR entry_id <= {e1})"
    )
    return dt.to_pyarrow_dataset(file_pruning_predicate=files).to_table(
        columns=["message_id", *columns], filter=in_range_expr(r)
    )


def stored_in_delta(
    lake: LakeResource, feed: Feed, table: pa.Table, dt: DeltaTable | None = None
) -> tuple[DeltaTable | None, pa.Table]:
    """The Delta rows (message id and content) of the batch's span, and the table handle brought up to date."""
    empty = pa.table({"message_id": pa.array([], pa.string())})
    if table.num_rows == 0:
        return dt, empty
    if dt is None:
        dt = lake.table(bronze_table(feed))
    else:
        dt.update_incremental()
    if dt is None:
        return dt, empty
    # a column a later message version added is not in a table no such message reached yet (merged on write)
    have = set(dt.schema().to_arrow().names)
    return dt, span_message_ids(dt, table, tuple(c for c in feed.content_columns if c in have))


@contextmanager
def session_of(ch: ClickHouseResource | Client) -> Iterator[Client]:
    """The client of a session the caller holds (a batch opens one for all its queries), or a session of the
    resource for a caller that holds none (a tool, a test)."""
    if isinstance(ch, ClickHouseResource):
        with ch.session() as c:
            yield c
    else:
        yield ch


def stored_in_clickhouse(c: Client, feed: Feed, table: pa.Table) -> pa.Table:
    """The ClickHouse rows (message id and content) of the batch's span."""
    if table.num_rows == 0:
        return pa.table({"message_id": pa.array([], pa.string())})
    names = ["message_id", *feed.content_columns]
    rows = c.query(
        f"SELECT {', '.join(f'`{n}`' for n in names)} FROM {DB}.{feed.name} WHERE {IN_RANGE_SQL}",
        parameters=id_range(table),
    ).result_rows
    types = dict(zip(table.schema.names, table.schema.types))
    return pa.table({n: pa.array([r[k] for r in rows], types[n]) for k, n in enumerate(names)})


def changed_content(feed: Feed, table: pa.Table, stored: list[pa.Table]) -> dict[str, str]:
    """{message id: why} for the batch's rows whose message id a sink already holds with other content: not a
    redelivery (that is identical) but another message under a reused id (e.g. a broker whose ledgers restarted
    beside a kept lake). Compared field by field on the ids both hold, so it costs nothing when none are stored."""
    out: dict[str, str] = {}
    for held in stored:
        cols = [c for c in feed.content_columns if c in held.column_names]
        held = held.filter(pc.is_in(held["message_id"], table["message_id"])) if held.num_rows else held
        if held.num_rows == 0:
            continue
        mine = {
            r["message_id"]: r
            for r in table.filter(pc.is_in(table["message_id"], held["message_id"]))
            .select(["message_id", *cols])
            .to_pylist()
        }
        for old in held.to_pylist():
            new = mine[old["message_id"]]
            diff = [c for c in cols if old[c] != new[c]]
            if diff and old["message_id"] not in out:
                out[old["message_id"]] = (
                    f"changed_content: message id already stored with other "
                    f"{', '.join(diff)} (stored {', '.join(f'{c}={old[c]!r}' for c in diff)})"
                )
    return out


def file_dates(dt: DeltaTable) -> list[tuple]:
    """(date, min topic, max topic) of each data file, from the Delta log's add actions (no data read)."""
    a = pa.table(dt.get_add_actions(flatten=True))
    dates = [d if isinstance(d, date) else date.fromisoformat(str(d)) for d in a["partition.date"].to_pylist()]
    return list(zip(dates, a["min.topic"].to_pylist(), a["max.topic"].to_pylist()))


def _without(table: pa.Table, existing: set[str]) -> pa.Table:
    if not existing:
        return table
    keep = pc.invert(pc.is_in(table["message_id"], pa.array(list(existing), pa.string())))
    return table.filter(keep)


def bronze_table(feed: Feed) -> str:
    return f"bronze/{feed.name}"


def write_delta(
    lake: LakeResource,
    feed: Feed,
    table: pa.Table,
    batch_id: str,
    dt: DeltaTable | None = None,
    existing: set[str] | None = None,
) -> tuple[int, int | None, DeltaTable | None]:
    """Append the rows whose message ids are not in the table yet. Returns (rows added, table version, table).

    `dt`, a handle kept from an earlier batch, is brought up to date incrementally (only the new log entries).
    The look-up reads only the files that may hold the batch's ids (span_message_ids); `existing`, the ids
    stored_in_delta found with `dt` just brought up to date, replaces it."""
    if table.num_rows == 0:
        return 0, None if dt is None else dt.version(), dt
    if existing is None:
        dt, held = stored_in_delta(lake, feed, table, dt)
        existing = set(held["message_id"].to_pylist())
    if dt is not None:
        table = _without(table, existing)
        if table.num_rows == 0:
            return 0, dt.version(), dt
    faults.point("before_delta_commit", feed.name, batch_id)
    props = CommitProperties(custom_metadata={"nautilus.batch_id": batch_id, "nautilus.rows": str(table.num_rows)})
    write_deltalake(
        dt if dt is not None else lake.uri(bronze_table(feed)),
        table,
        mode="append",
        schema_mode="merge",  # a field a later message version added becomes a column; older rows read null
        partition_by=["date"],
        storage_options=lake.storage_options,
        commit_properties=props,
    )
    faults.point("after_delta_commit", feed.name, batch_id)
    if dt is None:
        dt = lake.table(bronze_table(feed))
    else:
        dt.update_incremental()
    return table.num_rows, dt.version(), dt


def write_clickhouse(
    ch: ClickHouseResource | Client, feed: Feed, table: pa.Table, existing: set[str] | None = None
) -> int:
    """Insert the rows whose message ids are not in the ClickHouse table yet (`existing`: as stored_in_clickhouse
    found them in this session). `ch`: the caller's session, or the resource (session_of). Returns rows inserted."""
    if table.num_rows == 0:
        return 0
    table = table.set_column(
        table.schema.get_field_index("ts"), "ts", table["ts_event"].cast(pa.timestamp("ns", tz="UTC"))
    )
    with session_of(ch) as c:
        if existing is None:
            existing = set(stored_in_clickhouse(c, feed, table)["message_id"].to_pylist())
        table = _without(table, existing)
        if table.num_rows:
            if feed.key_table:  # first: a crash after it leaves the redelivery's own keys, never a gap
                c.insert_arrow(f"{DB}.{feed.key_table}", table.select([*feed.unique_key, "date", "message_id"]))
            faults.point("clickhouse_write", feed.name, table["batch_id"][0].as_py())
            c.insert_arrow(f"{DB}.{feed.name}", table)
    return table.num_rows


def stored_keys(c: Client, feed: Feed, table: pa.Table, batch_id: str) -> dict:
    """{unique key: {message ids}} of the batch's keys (trades: instrument, trade id) already in ClickHouse on the
    batch's dates, from the feed's key table's primary key (not a scan of the day's rows). The keys go through a
    scratch Memory table: a 100,000-value IN list takes ClickHouse seconds to parse."""
    if table.num_rows == 0:
        return {}
    probe = f"{DB}._{feed.key_table}_probe_" + "".join(x if x.isalnum() else "_" for x in batch_id)
    dates = [d.isoformat() for d in pc.unique(table["date"]).to_pylist()]
    key = ", ".join(feed.unique_key)
    types = {n: t for n, _, t, *_ in feed.fields}
    c.command(f"DROP TABLE IF EXISTS {probe}")
    c.command(f"CREATE TABLE {probe} ({', '.join(f'{k} {types[k]}' for k in feed.unique_key)}) ENGINE = Memory")
    try:
        c.insert_arrow(probe, table.select(list(feed.unique_key)))
        rows = c.query(
            f"SELECT {key}, message_id FROM {DB}.{feed.key_table} WHERE date IN %(d)s "
            f"AND ({key}) IN (SELECT {key} FROM {probe})",
            parameters={"d": dates},
        ).result_rows
    finally:
        c.command(f"DROP TABLE IF EXISTS {probe}")
    out: dict = {}
    for *k, mid in rows:
        out.setdefault(tuple(k), set()).add(mid)
    return out


def write_quarantine(c: Client, topic: str, batch_id: str, rows: list[dict]) -> int:
    if not rows:
        return 0
    now = time.time_ns() // 1000
    t = pa.table(
        {
            "topic": pa.array([topic] * len(rows), pa.string()),
            "message_id": pa.array([r["message_id"] for r in rows], pa.string()),
            "batch_id": pa.array([batch_id] * len(rows), pa.string()),
            "reason": pa.array([r["reason"] for r in rows], pa.string()),
            "payload": pa.array([r["payload"] for r in rows], pa.binary()),
            "publish_time": pa.array([r["publish_time_ms"] for r in rows], pa.timestamp("ms", tz="UTC")),
            "quarantined_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
        }
    )
    c.insert_arrow(f"{DB}.quarantine", t)
    return len(rows)


BARS_AGGREGATE = f"""
SELECT instrument_id, toStartOfMinute(ts) AS minute,
       argMin(price, (ts_event, message_id)) AS open, max(price) AS high, min(price) AS low,
       argMax(price, (ts_event, message_id)) AS close, sum(size) AS volume,
       sum(price * size) / sum(size) AS vwap, count() AS trade_count,
       sumIf(size, aggressor_side = 'BUYER') AS buy_volume, sumIf(size, aggressor_side = 'SELLER') AS sell_volume
FROM {DB}.trades WHERE {{where}} GROUP BY instrument_id, minute"""
# the minutes in %(keys)s: (instrument, minute start in epoch seconds), between %(lo)s and %(hi)s
BARS_SELECT = BARS_AGGREGATE.format(
    where=(
        "date BETWEEN toDate(toDateTime(%(lo)s, 'UTC')) AND toDate(toDateTime(%(hi)s, 'UTC')) "
        "AND ts_event >= %(lo)s * 1000000000 AND ts_event < (%(hi)s + 60) * 1000000000 "  # primary-key range
        "AND (instrument_id, toUnixTimestamp(toStartOfMinute(ts))) IN %(keys)s"
    )
)


def touched_minutes(table: pa.Table) -> list[tuple[str, int]]:
    """(instrument, minute start in epoch seconds) pairs a batch of trades touches."""
    minute = pc.multiply(pc.divide(table["ts_event"], 60_000_000_000), 60)
    pairs = pa.table({"i": table["instrument_id"], "m": minute}).group_by(["i", "m"]).aggregate([])
    return list(zip(pairs["i"].to_pylist(), pairs["m"].to_pylist()))


def recompute_bars(c: Client, keys: list[tuple[str, int]], batch_id: str, version: int) -> int:
    """Recompute the given minutes from all their stored trades; the new version replaces the old."""
    if not keys:
        return 0
    minutes = [m for _, m in keys]
    params = {"lo": min(minutes), "hi": max(minutes), "keys": keys, "version": version, "batch": batch_id}
    c.command(
        f"INSERT INTO {DB}.bars_1m SELECT *, %(version)s AS version, %(batch)s AS batch_id FROM ({BARS_SELECT})",
        parameters=params,
        settings={"max_query_size": 1 << 30},
    )
    return len(keys)


def recompute_bars_for_dates(ch: ClickHouseResource | Client, first, last, batch_id: str) -> tuple[int, dict]:
    """Recompute every bar of the UTC dates first..last (bulk loads such as history mode). Returns the version
    and each instrument's (first, last) minute in epoch seconds, for the change feed. `ch`: as write_clickhouse."""
    sql = BARS_AGGREGATE.format(where="date BETWEEN %(first)s AND %(last)s")
    version = time.time_ns()
    with session_of(ch) as c:
        c.command(
            f"INSERT INTO {DB}.bars_1m SELECT *, %(version)s AS version, %(batch)s AS batch_id FROM ({sql})",
            parameters={"first": first, "last": last, "version": version, "batch": batch_id},
        )
        spans = c.query(
            f"SELECT instrument_id, toUnixTimestamp(min(minute)), toUnixTimestamp(max(minute)) "
            f"FROM {DB}.bars_1m WHERE version = %(version)s AND minute >= toDateTime(%(first)s) "
            "GROUP BY instrument_id",
            parameters={"version": version, "first": first},
        ).result_rows
    return version, {i: (lo, hi) for i, lo, hi in spans}
