"""Asset-check queries for a micro-batch: reconciliation, uniqueness, bars vs trades."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource

from .ingest import BatchResult
from .schema import Feed
from .sinks import BARS_SELECT, DB, IN_RANGE_SQL, bronze_table, id_range, in_range_expr


def stored_copies(lake: LakeResource, ch: ClickHouseResource, feed: Feed, table: pa.Table, dt=None) -> dict:
    """How many rows, and distinct message ids, each sink holds for the batch's valid messages."""
    if table.num_rows == 0:
        return {"clickhouse_rows": 0, "clickhouse_ids": 0, "delta_rows": 0, "delta_ids": 0}
    r = id_range(table)
    with ch.session() as c:
        candidates = c.query(f"SELECT message_id FROM {DB}.{feed.name} WHERE {IN_RANGE_SQL}", parameters=r).result_rows
    wanted = set(table["message_id"].to_pylist())
    in_ch = [m for (m,) in candidates if m in wanted]
    rows, uniq = len(in_ch), len(set(in_ch))
    dates = [d.isoformat() for d in pc.unique(table["date"]).to_pylist()]
    found = (dt if dt is not None else lake.table(bronze_table(feed))).to_pyarrow_dataset(partitions=[("date", "in", dates)]).to_table(
        columns=["message_id"], filter=in_range_expr(r) & pc.field("message_id").isin(table["message_id"]))
    return {"clickhouse_rows": rows, "clickhouse_ids": uniq, "delta_rows": found.num_rows,
            "delta_ids": pc.count_distinct(found["message_id"]).as_py()}


def reconcile(res: BatchResult, copies: dict) -> tuple[bool, dict]:
    """Every consumed message is stored once in each sink, quarantined, or a duplicate within the batch."""
    accounted = res.valid + res.quarantined + res.duplicates_in_batch
    ok = accounted == res.consumed and all(copies[k] == res.valid for k in copies)
    return ok, {"consumed": res.consumed, "accounted": accounted, **copies}


def duplicate_ids(ch: ClickHouseResource, feed: Feed, table: pa.Table) -> dict:
    """Duplicate message ids (and trade ids, for trades) among the stored rows of the batch's message-id span:
    a primary-key and min/max-index range, so the cost does not grow with the table (the whole table is checked
    by the scheduled `market_data_integrity` job)."""
    if table.num_rows == 0:
        return {"duplicate_message_ids": 0, "duplicate_trade_ids": 0}
    dates = [d.isoformat() for d in pc.unique(table["date"]).to_pylist()]
    trade = ", count() - uniqExact(instrument_id, trade_id)" if feed.name == "trades" else ", 0"
    with ch.session() as c:
        msg, trd = c.query(f"SELECT count() - uniqExact(topic, message_id){trade} FROM {DB}.{feed.name} "
                           f"WHERE date IN %(d)s AND {IN_RANGE_SQL}",
                           parameters={"d": dates, **id_range(table)}).first_row
    return {"duplicate_message_ids": int(msg), "duplicate_trade_ids": int(trd)}


def duplicate_ids_in_table(ch: ClickHouseResource, feed: Feed) -> dict:
    """Duplicate message ids (and trade ids) over the whole table: for the scheduled integrity job only."""
    trade = ", count() - uniqExact(instrument_id, trade_id)" if feed.name == "trades" else ", 0"
    with ch.session() as c:
        n, msg, trd = c.query(f"SELECT count(), count() - uniqExact(topic, message_id){trade} "
                              f"FROM {DB}.{feed.name}").first_row
    return {"rows": int(n), "duplicate_message_ids": int(msg), "duplicate_trade_ids": int(trd)}


def bars_mismatches(ch: ClickHouseResource, keys: list[tuple[str, int]], rel_tol: float = 1e-9) -> dict:
    """Bars of the given minutes compared with a recomputation from the stored trades."""
    if not keys:
        return {"bars_checked": 0, "mismatched": 0, "missing": 0}
    minutes = [m for _, m in keys]
    close = lambda c: f"abs(b.{c} - r.{c}) <= {rel_tol} * greatest(abs(r.{c}), 1e-12)"  # noqa: E731
    sql = f"""
    SELECT count(), countIf(b.instrument_id = ''),
           countIf(NOT ({' AND '.join(close(c) for c in ('open', 'high', 'low', 'close', 'volume', 'vwap',
                                                          'buy_volume', 'sell_volume'))}
                        AND b.trade_count = r.trade_count))
    FROM ({BARS_SELECT}) AS r
    LEFT JOIN (SELECT * FROM {DB}.bars_1m FINAL
               WHERE (instrument_id, toUnixTimestamp(minute)) IN %(keys)s) AS b
      ON b.instrument_id = r.instrument_id AND b.minute = r.minute"""
    with ch.session() as c:
        n, missing, bad = c.query(sql, parameters={"lo": min(minutes), "hi": max(minutes), "keys": keys},
                                  settings={"max_query_size": 1 << 30, "join_use_nulls": 0}).first_row
    return {"bars_checked": int(n), "missing": int(missing), "mismatched": int(bad)}
