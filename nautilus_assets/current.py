"""Current state of the products in Redis (resources/redis.py): the latest top-of-book quote, indicators, VPIN and
ML prediction per instrument, the latest position and mark per portfolio and instrument, the latest risk figures
per portfolio.

The streaming runs write a kind in the step that commits their batch (`publish`, after the store commit and
before the acknowledgement). The product APIs serve `/latest` from it while the kind is complete (rebuilt from
the store at least once) and was written to within NAUTILUS_CACHE_MAX_AGE_SECONDS; otherwise they answer from
the store (`from_store`: the same rows the writers cache) and say so. An API also rebuilds its kind from the
store in the background when it has not been written to for half that age (refresh-ahead: idle writers and
day-level products, and any entry a failed write left behind, are corrected within it). A write that fails
forgets the kind (or, when Redis is unreachable, the next write does). Rebuilds never put an older entry back
(versions, resources/redis.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd

from resources.redis import RedisResource, version

RECENT_DAYS = 7  # the store is searched this far back for an entry: what has not traded for a week is not current


def _ns(v) -> int:
    return int(pd.Timestamp(v).value)


@dataclass(frozen=True)
class Kind:
    name: str
    product: str  # the data product whose API serves it
    keys: tuple[str, ...]  # an entry per value of these columns
    version: Callable[[dict], str]  # orders two entries of the same key (the newer wins)
    store: str  # "clickhouse" or "postgres"
    sql: str  # the latest row per key in the store

    def field(self, row: dict) -> str:
        return "|".join(str(row[k]) for k in self.keys)


KINDS = {
    k.name: k
    for k in (
        Kind(
            "quotes",
            "market_data_feed",
            ("instrument_id",),
            lambda r: version(r["ts_event"]),
            "clickhouse",
            "SELECT instrument_id, bid_price, ask_price, bid_size, ask_size, ts_event, ts_init FROM market_data.quotes "
            f"WHERE date >= today() - {RECENT_DAYS} ORDER BY instrument_id, ts_event DESC, message_id DESC "
            "LIMIT 1 BY instrument_id",
        ),
        Kind(
            "indicators",
            "market_analytics",
            ("instrument_id",),
            lambda r: version(_ns(r["minute"]), r["version"]),
            "clickhouse",
            "SELECT * EXCEPT (batch_id) FROM analytics.indicators_1m FINAL "
            f"WHERE minute >= now() - INTERVAL {RECENT_DAYS} DAY ORDER BY instrument_id, minute DESC "
            "LIMIT 1 BY instrument_id",
        ),
        Kind(
            "vpin",
            "market_microstructure",
            ("instrument_id", "variant"),
            lambda r: version(r["bucket_seq"], r["version"]),
            "clickhouse",
            "SELECT * EXCEPT (batch_id) FROM microstructure.vpin_buckets FINAL "
            f"WHERE date >= today() - {RECENT_DAYS} ORDER BY instrument_id, variant, bucket_seq DESC "
            "LIMIT 1 BY instrument_id, variant",
        ),
        Kind(
            "risk",
            "risk_metrics",
            ("portfolio_id",),
            lambda r: version(_ns(r["date"]), r["version"]),
            "clickhouse",
            "SELECT * EXCEPT (batch_id) FROM risk.risk_metrics FINAL ORDER BY portfolio_id, date DESC "
            "LIMIT 1 BY portfolio_id",
        ),
        Kind(
            "predictions",
            "ml_predictions",
            ("instrument_id",),
            lambda r: version(_ns(r["minute"]), r["version"]),
            "clickhouse",
            "SELECT * EXCEPT (batch_id) FROM ml.ml_predictions FINAL "
            f"WHERE minute >= now() - INTERVAL {RECENT_DAYS} DAY ORDER BY instrument_id, minute DESC "
            "LIMIT 1 BY instrument_id",
        ),
        Kind(
            "positions",
            "portfolio_states",
            ("portfolio_id", "instrument_id"),
            lambda r: version(_ns(r["ts"])),
            "postgres",
            "SELECT DISTINCT ON (portfolio_id, instrument_id) ts, portfolio_id, instrument_id, position, avg_cost, "
            "realized_pnl, unrealized_pnl, fees, mark_price, mark_source, cash, nav, run_id "
            f"FROM portfolio.portfolio_states WHERE ts >= now() - interval '{RECENT_DAYS} days' "
            "ORDER BY portfolio_id, instrument_id, ts DESC",
        ),
    )
}
BY_PRODUCT = {k.product: k for k in KINDS.values()}


def plain(v):
    """A value as JSON has it: timestamps as ISO 8601 (UTC), NaN as null, numpy scalars as Python's."""
    if isinstance(v, (pd.Timestamp, datetime)):
        ts = pd.Timestamp(v)
        return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def latest_rows(kind: Kind, rows: pd.DataFrame | list[dict]) -> list[dict]:
    """The newest row per key among `rows` (a batch's writes, or the store's answer), as plain dicts."""
    best: dict[str, tuple[str, dict]] = {}
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows
    for r in records:
        r = {k: plain(v) for k, v in r.items()}
        f, ver = kind.field(r), kind.version(r)
        if f not in best or best[f][0] <= ver:
            best[f] = (ver, r)
    return [r for _, r in best.values()]


def latest_arrow(kind: Kind, table, order: str, columns: list[str]) -> list[dict]:
    """The last row per key of an Arrow table (an ingest batch) in `order`, reduced in Arrow: a row per key, not per
    message, for `publish`."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return []
    t = table.select(columns).take(pc.sort_indices(table, [(order, "ascending")]))
    last = t.group_by(list(kind.keys), use_threads=False).aggregate(
        [(c, "last") for c in columns if c not in kind.keys]
    )
    return last.rename_columns([n.removesuffix("_last") for n in last.column_names]).to_pylist()


def entries(kind: Kind, rows: list[dict]) -> list[tuple[str, str, dict]]:
    return [(kind.field(r), kind.version(r), r) for r in rows]


_dirty: set[str] = set()  # kinds whose last write in this process failed: the next write forgets them first


def publish(cache: RedisResource | None, kind: str, rows, log: Callable[[str], None] = print) -> int:
    """Write a batch's rows of `kind` to the cache; returns entries written. Never fails the batch: the store
    is the system of record, and a failed write makes the APIs read the store (module doc)."""
    if cache is None:
        return 0
    k = KINDS[kind]
    try:
        if kind in _dirty:
            cache.invalidate(kind)
            _dirty.discard(kind)
        latest = latest_rows(k, rows)
        return cache.put(kind, entries(k, latest)) if latest else 0
    except Exception as e:  # noqa: BLE001 - Redis down or slow: forget the kind, serve from the store
        _dirty.add(kind)
        try:
            cache.invalidate(kind)
            _dirty.discard(kind)
        except Exception:  # noqa: BLE001
            pass
        log(f"current-state cache: {kind} not written ({type(e).__name__}: {e}); the APIs read the store")
        return 0


def from_store(kind: Kind, clickhouse=None, postgres=None) -> list[dict]:
    """The latest row per key, read from the kind's store (for a rebuild, or when the cache cannot answer)."""
    if kind.store == "clickhouse":
        with clickhouse.session() as c:
            res = c.query(kind.sql)
            rows = [dict(zip(res.column_names, r)) for r in res.result_rows]
    else:
        with postgres.connect() as conn:
            cur = conn.execute(kind.sql)
            names = [d.name for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
    return latest_rows(kind, rows)


def rebuild(cache: RedisResource, kind: Kind, rows: list[dict]) -> int:
    """Fill the cache from the store's rows and mark the kind complete."""
    return cache.put(kind.name, entries(kind, rows), complete=True)
