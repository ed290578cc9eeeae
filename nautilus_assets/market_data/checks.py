"""Asset-check queries for a micro-batch: reconciliation, uniqueness, bars vs trades."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource

from .schema import Feed
from .sinks import BARS_SELECT, DB, IN_RANGE_SQL, bronze_table, id_range, span_message_ids

if TYPE_CHECKING:
    from .ingest import BatchResult


def delta_span(lake: LakeResource, feed: Feed, table: pa.Table, dt=None) -> pa.Table:
    """message_id of the Delta rows in the batch's message-id span (files pruned by partition and statistics)."""
    if table.num_rows == 0:
        return pa.table({"message_id": pa.array([], pa.string())})
    return span_message_ids(dt if dt is not None else lake.table(bronze_table(feed)), table)


def clickhouse_span(c: Client, feed: Feed, table: pa.Table) -> pa.Table:
    """The ClickHouse rows of the batch's message-id span (a primary-key and min/max-index range, so the cost
    does not grow with the table): message_id, and the feed's unique key (trades: instrument_id, trade_id). One
    query serves both the reconciliation and the uniqueness check; the whole table is checked by the scheduled
    integrity job."""
    cols = ["message_id", *feed.unique_key]
    if table.num_rows == 0:
        return pa.table({n: pa.array([], pa.string()) for n in cols})
    dates = [d.isoformat() for d in pc.unique(table["date"]).to_pylist()]
    return c.query_arrow(
        f"SELECT {', '.join(cols)} FROM {DB}.{feed.name} WHERE date IN %(d)s AND {IN_RANGE_SQL}",
        parameters={"d": dates, **id_range(table)},
    )


def stored_copies(table: pa.Table, ch_span: pa.Table, delta_span_: pa.Table) -> dict:
    """How many rows, and distinct message ids, each sink holds for the batch's valid messages (the spans may
    also hold other batches' messages: a successor run's, interleaved during a handover)."""
    out = {}
    for sink, span in (("clickhouse", ch_span), ("delta", delta_span_)):
        mine = span["message_id"].filter(pc.is_in(span["message_id"], table["message_id"]))
        out[f"{sink}_rows"], out[f"{sink}_ids"] = len(mine), pc.count_distinct(mine).as_py() if len(mine) else 0
    return out


def reconcile(res: BatchResult, copies: dict) -> tuple[bool, dict]:
    """Every consumed message is stored once in each sink, quarantined, or a duplicate within the batch."""
    accounted = res.valid + res.quarantined + res.duplicates_in_batch
    ok = accounted == res.consumed and all(copies[k] == res.valid for k in copies)
    return ok, {"consumed": res.consumed, "accounted": accounted, **copies}


def duplicate_ids(feed: Feed, ch_span: pa.Table) -> dict:
    """Duplicate message ids (and unique keys: trade ids, for trades) among the stored rows of the batch's
    message-id span."""
    n = ch_span.num_rows
    msg = n - pc.count_distinct(ch_span["message_id"]).as_py() if n else 0
    trd = 0
    if feed.unique_key and n:
        trd = n - ch_span.group_by(list(feed.unique_key)).aggregate([]).num_rows
    return {"duplicate_message_ids": int(msg), "duplicate_trade_ids": int(trd)}


def duplicate_ids_in_table(ch: ClickHouseResource, feed: Feed) -> dict:
    """Duplicate message ids (and unique keys) over the whole table: for the scheduled integrity job only."""
    keys = f", count() - uniqExact({', '.join(feed.unique_key)})" if feed.unique_key else ", 0"
    with ch.session() as c:
        n, msg, trd = c.query(
            f"SELECT count(), count() - uniqExact(topic, message_id){keys} FROM {DB}.{feed.name}"
        ).first_row
    return {"rows": int(n), "duplicate_message_ids": int(msg), "duplicate_trade_ids": int(trd)}


def bars_mismatches(c: Client, keys: list[tuple[str, int]], rel_tol: float = 1e-9) -> dict:
    """Bars of the given minutes compared with a recomputation from the stored trades."""
    if not keys:
        return {"bars_checked": 0, "mismatched": 0, "missing": 0}
    minutes = [m for _, m in keys]

    def close(c: str) -> str:
        return f"abs(b.{c} - r.{c}) <= {rel_tol} * greatest(abs(r.{c}), 1e-12)"

    sql = f"""
    SELECT count(), countIf(b.instrument_id = ''),
           countIf(NOT ({
        " AND ".join(close(c) for c in ("open", "high", "low", "close", "volume", "vwap", "buy_volume", "sell_volume"))
    }
                        AND b.trade_count = r.trade_count))
    FROM ({BARS_SELECT}) AS r
    LEFT JOIN (SELECT * FROM {DB}.bars_1m FINAL
               WHERE (instrument_id, toUnixTimestamp(minute)) IN %(keys)s) AS b
      ON b.instrument_id = r.instrument_id AND b.minute = r.minute"""
    n, missing, bad = c.query(
        sql,
        parameters={"lo": min(minutes), "hi": max(minutes), "keys": keys},
        settings={"max_query_size": 1 << 30, "join_use_nulls": 0},
    ).first_row
    return {"bars_checked": int(n), "missing": int(missing), "mismatched": int(bad)}
