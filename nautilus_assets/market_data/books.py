"""The order book's side of an ingest batch (I/O around orderbook.py's pure rebuild): each batch of deltas continues
the books it touches from their stored state, quarantines what cannot be applied (a sequence gap until the next
snapshot, a group that would cross the book), and stores one depth-10 row per applied event group.

The state of each instrument's book (its levels, last applied sequence, whether it is in sync) is one row of
`market_data.orderbook_books` (ReplacingMergeTree by instrument: a batch reads the few rows of its instruments,
whatever the history). A group that a batch boundary cut is not kept there: its first deltas are in the bronze
deltas table already (sequence above the state's), and the next batch reads them back (a primary-key range).
Order of writes: deltas, depth rows, states, then the acknowledgement; a crash anywhere re-runs the batch from the
unchanged state, and the sinks' de-duplication on the message id makes the repeated depth rows a no-op."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from nautilus_assets.tables import Column, Table

from . import orderbook
from .decode import build_table
from .schema import ORDERBOOK_DELTAS, ORDERBOOK_DEPTH10
from .sinks import DB, IN_RANGE_SQL, id_range

STATES = Table(
    f"{DB}.orderbook_books",
    (
        Column("instrument_id", "LowCardinality(String)", "Instrument"),
        Column("sequence", "Int64", "Last applied sequence (-1: none)"),
        Column("synced", "UInt8", "1: in sync with the feed; 0: waiting for a snapshot"),
        Column("unsynced_since", "String", "Why it is not in sync"),
        Column("bid_prices", "Array(Float64)", "Bid prices, best first"),
        Column("bid_sizes", "Array(Float64)", "Sizes at bid_prices"),
        Column("ask_prices", "Array(Float64)", "Ask prices, best first"),
        Column("ask_sizes", "Array(Float64)", "Sizes at ask_prices"),
        Column("version", "UInt64", "Write version; the latest wins"),
        Column("batch_id", "String", "Batch that wrote the state"),
    ),
    "ENGINE = ReplacingMergeTree(version) ORDER BY instrument_id",
)
DELTA_COLUMNS = [n for n, _ in orderbook.DELTA_FIELDS] + ["message_id"]


@dataclass
class BookBatch:
    """What a batch did to the books (BatchResult.book)."""

    depth: pa.Table  # the depth-10 rows to store (ORDERBOOK_DEPTH10.arrow_schema)
    states: dict[str, orderbook.BookState]
    crossed: int  # groups rejected because they would have crossed a book
    snapshot_mismatches: int  # snapshots that differed from the book rebuilt from deltas before them
    gaps: int
    quarantined: int
    carried: int  # deltas of groups begun in an earlier batch, read back from the bronze table
    counters: dict = field(default_factory=dict)
    written_clickhouse: int = 0
    written_delta: int = 0
    crossed_stored: int | None = None  # stored depth rows of the batch's span with bid >= ask (inspector)


def read_states(c: Client, instruments: list[str]) -> dict[str, orderbook.BookState]:
    if not instruments:
        return {}
    rows = c.query(
        f"SELECT instrument_id, sequence, synced, unsynced_since, bid_prices, bid_sizes, ask_prices, ask_sizes "
        f"FROM {STATES.name} FINAL WHERE instrument_id IN %(i)s",
        parameters={"i": instruments},
    ).result_rows
    return {
        name: orderbook.BookState(
            *(np.asarray(v, np.float64) for v in (bp, bs, ap, as_)),
            last_sequence=None if seq < 0 else seq,
            synced=bool(synced),
            unsynced_since=why,
        )
        for name, seq, synced, why, bp, bs, ap, as_ in rows
    }


def carried_deltas(c: Client, states: dict[str, orderbook.BookState]) -> pa.Table:
    """Stored deltas above each book's last applied sequence: the start of a group a batch boundary cut (a book
    waiting for its first snapshot included: the cut group may be that snapshot). Nothing else is stored above it:
    what a book could not apply was quarantined, not stored."""
    known = {i: -1 if s.last_sequence is None else s.last_sequence for i, s in states.items()}
    if not known:
        return pa.table({})
    cond = " OR ".join(f"(instrument_id = %(i{k})s AND sequence > %(s{k})s)" for k in range(len(known)))
    params = {f"i{k}": i for k, i in enumerate(known)} | {f"s{k}": s for k, s in enumerate(known.values())}
    return c.query_arrow(
        f"SELECT {', '.join(DELTA_COLUMNS)} FROM {DB}.{ORDERBOOK_DELTAS.name} WHERE {cond}", parameters=params
    )


def rebuild_batch(c: Client, deltas: pa.Table, topic: str, batch_id: str, now_ns: int) -> tuple[BookBatch, dict]:
    """The batch's deltas applied to the stored books: (what it did, {message id: quarantine reason})."""
    instruments = pc.unique(deltas["instrument_id"]).to_pylist() if deltas.num_rows else []
    states = read_states(c, instruments)
    mine = deltas.select(DELTA_COLUMNS)
    carried = carried_deltas(c, states)
    if carried.num_rows:
        carried = carried.filter(pc.invert(pc.is_in(carried["message_id"], mine["message_id"])))
        mine = pa.concat_tables([carried.cast(mine.schema), mine])
    result = orderbook.rebuild(states, mine)
    ours = set(deltas["message_id"].to_pylist())
    reasons = {mid: why for mid, why in result.quarantine if mid in ours}
    book = BookBatch(
        depth=_stored(result.depth10, deltas, topic, batch_id, now_ns),
        states=result.states,
        crossed=result.crossed,
        snapshot_mismatches=result.snapshot_mismatches,
        gaps=result.counters.get("gaps", 0),
        quarantined=len(reasons),
        carried=carried.num_rows,
        counters=dict(result.counters),
    )
    return book, reasons


def _stored(depth: pa.Table, deltas: pa.Table, topic: str, batch_id: str, now_ns: int) -> pa.Table:
    """Depth rows with the provenance of the delta that completed each (its message id, ledger and entry)."""
    if depth.num_rows == 0:
        return ORDERBOOK_DEPTH10.arrow_schema.empty_table()
    at = pc.index_in(depth["message_id"], deltas["message_id"])
    fields = {n: depth[n].cast(t) for n, t, *_ in ORDERBOOK_DEPTH10.fields}
    return build_table(
        ORDERBOOK_DEPTH10,
        fields,
        ts_event=depth["ts_event"],
        ts_init=depth["ts_init"],
        topic=topic,
        batch_id=batch_id,
        now_ns=now_ns,
        message_id=depth["message_id"],
        ledger_id=deltas["ledger_id"].take(at),
        entry_id=deltas["entry_id"].take(at),
    )


def write_states(c: Client, states: dict[str, orderbook.BookState], batch_id: str, version: int) -> None:
    if not states:
        return
    names = sorted(states)
    s = [states[n] for n in names]
    levels = pa.list_(pa.float64())
    c.insert_arrow(
        STATES.name,
        pa.table(
            {
                "instrument_id": pa.array(names, pa.string()),
                "sequence": pa.array([-1 if x.last_sequence is None else x.last_sequence for x in s], pa.int64()),
                "synced": pa.array([int(x.synced) for x in s], pa.uint8()),
                "unsynced_since": pa.array(["" if x.synced else x.unsynced_since for x in s], pa.string()),
                "bid_prices": pa.array([x.bid_prices.tolist() for x in s], levels),
                "bid_sizes": pa.array([x.bid_sizes.tolist() for x in s], levels),
                "ask_prices": pa.array([x.ask_prices.tolist() for x in s], levels),
                "ask_sizes": pa.array([x.ask_sizes.tolist() for x in s], levels),
                "version": pa.array([version] * len(s), pa.uint64()),
                "batch_id": pa.array([batch_id] * len(s), pa.string()),
            }
        ),
    )


def crossed_in_span(c: Client, depth: pa.Table) -> int:
    """Stored depth rows in the batch's message-id span whose best bid is not below the best ask: the check reads
    what the store holds, not the rows the batch meant to write (a primary-key and min/max-index range)."""
    if depth.num_rows == 0:
        return 0
    dates = [d.isoformat() for d in pc.unique(depth["date"]).to_pylist()]
    return int(
        c.query(
            f"SELECT countIf(length(bid_prices) > 0 AND length(ask_prices) > 0 AND bid_prices[1] >= ask_prices[1]) "
            f"FROM {DB}.{ORDERBOOK_DEPTH10.name} WHERE date IN %(d)s AND {IN_RANGE_SQL}",
            parameters={"d": dates, **id_range(depth)},
        ).first_row[0]
    )
