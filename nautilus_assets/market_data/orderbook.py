"""The level-2 order book's pure core: an MBP-10 feed of NautilusTrader-style `OrderBookDelta`s consistent with the
simulator's level-1 quotes (`BookSimulator`), and the reconstruction of depth-10 books from such deltas (`rebuild`).
No I/O: Arrow tables in, Arrow tables and plain objects out.

Deltas (`DELTA_FIELDS`) follow NautilusTrader: `action` ADD | UPDATE | DELETE | CLEAR, `side` BUY (bid) | SELL (ask)
| NO_ORDER_SIDE (CLEAR), `flags` RecordFlag bits, `sequence` +1 per delta per instrument. An event group ends with
the delta that carries F_LAST; a snapshot is a CLEAR (F_SNAPSHOT) and then one ADD per level, best first.

`rebuild` applies groups atomically (a group's depth row is emitted, or the whole group is quarantined) and works
per instrument in vectorised blocks: within a run of consecutive sequences each level's size after each group is
the last write to it (a forward fill over a groups × price-levels matrix), and the top 10 are read off that matrix,
so the Python work is per block and per anomaly (gap, rejected group, resync), not per delta. It never modifies
the states it is given: the result holds new BookState objects (whose arrays are never written in place).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEPTH = 10
ACTIONS = ("ADD", "UPDATE", "DELETE", "CLEAR")  # NautilusTrader BookAction order
BOOK_SIDES = ("NO_ORDER_SIDE", "BUY", "SELL")  # NautilusTrader OrderSide values 0, 1, 2
ADD, UPDATE, DELETE, CLEAR = range(4)  # codes: index in ACTIONS
NO_SIDE, BUY, SELL = range(3)  # codes: index in BOOK_SIDES
F_LAST, F_TOB, F_SNAPSHOT, F_MBP = 128, 64, 32, 16  # NautilusTrader RecordFlag

DELTA_FIELDS = [
    ("instrument_id", pa.string()),
    ("action", pa.string()),
    ("side", pa.string()),
    ("price", pa.float64()),
    ("size", pa.float64()),
    ("order_id", pa.int64()),
    ("flags", pa.int32()),  # u8 in NautilusTrader; int32 as Delta Lake has no unsigned types
    ("sequence", pa.int64()),
    ("ts_event", pa.int64()),
    ("ts_init", pa.int64()),
]
DEPTH_FIELDS = [
    ("instrument_id", pa.string()),
    ("sequence", pa.int64()),
    ("flags", pa.int32()),
    ("ts_event", pa.int64()),
    ("ts_init", pa.int64()),
    ("bid_prices", pa.list_(pa.float64())),
    ("bid_sizes", pa.list_(pa.float64())),
    ("ask_prices", pa.list_(pa.float64())),
    ("ask_sizes", pa.list_(pa.float64())),
    ("message_id", pa.string()),
]

NS_PER_S = 1_000_000_000
# sizes of levels that enter the book: log-uniform between these (deeper levels hold more than the quoted top)
NEW_SIZE_LO, NEW_SIZE_HI = 20.0, 2000.0


# --------------------------------------------------------------------------------------------------- simulator


@dataclass
class _SimBook:
    next_seq: int
    bids: dict[float, float] = field(default_factory=dict)  # price -> size, best first
    asks: dict[float, float] = field(default_factory=dict)
    last_snapshot_ns: int | None = None


class BookSimulator:
    """MBP-10 deltas whose best bid/ask (price and size) follow level-1 quotes, one event group per quote.

    Deeper levels sit at one-tick steps behind the best (tick 0.25 above a mid of 1000, else 0.01, as the market
    simulator); a level that stays in the book keeps its size, a new one gets a random size, and with probability
    `deep_change_p` per quote one deep level's size changes. Groups are minimal (DELETE what leaves the book, ADD
    what enters, UPDATE a changed size); a quote that changes nothing still gets a group (a no-op UPDATE of the best
    bid). Each instrument's first quote gets a snapshot group (CLEAR, then an ADD per level) instead; and then, once
    `snapshot_interval_ns` of event time has passed since the last snapshot, the quote's group is followed by a
    snapshot group of the same book (same timestamps): a snapshot describes the book the deltas before it built, so
    a consumer can check its book against it (a snapshot in place of the quote's deltas would differ from the book
    before it by that quote's change).

    Sequences start at `start_ns // 1000` per instrument (+1 per delta), so a simulator restarted later never reuses
    one while it makes fewer than one delta per microsecond. Deterministic for (instruments, seed, start_ns, the
    quotes), and however the quotes are split into calls (the random draws are a fixed number per quote).
    """

    def __init__(
        self,
        instruments: list[str],
        seed: int = 7,
        start_ns: int = 0,
        snapshot_interval_ns: int = 60 * NS_PER_S,
        levels: int = DEPTH,
        deep_change_p: float = 0.1,
    ):
        if not instruments:
            raise ValueError("at least one instrument")
        if not 1 <= levels <= DEPTH:
            raise ValueError(f"levels {levels}: 1 to {DEPTH}")
        self.instruments = list(instruments)
        self.levels, self.snapshot_interval_ns, self.deep_change_p = levels, int(snapshot_interval_ns), deep_change_p
        self._rng = np.random.default_rng([seed, start_ns % 2**63, 0xB00C])
        self._books = {i: _SimBook(next_seq=start_ns // 1000) for i in self.instruments}

    def deltas(self, quotes: pa.Table) -> pa.Table:
        """The event groups (in quote order) that take each instrument's book to the next quote."""
        n, L = quotes.num_rows, self.levels
        if n == 0:
            return pa.table({k: pa.array([], t) for k, t in DELTA_FIELDS})
        names = quotes["instrument_id"].to_pylist()
        if unknown := set(names) - self._books.keys():
            raise ValueError(f"quotes for instruments the simulator was not given: {sorted(unknown)}")
        bid, ask = (quotes[c].to_numpy().astype(np.float64) for c in ("bid_price", "ask_price"))
        ts_event = quotes["ts_event"].to_numpy()
        bid_prices, ask_prices = _ladders(bid, ask, L)
        u = self._rng.random((n, 2 * L + 3))  # per quote: fresh sizes per level and side, then the deep change
        fresh = np.ceil(np.exp(np.log(NEW_SIZE_LO) + np.log(NEW_SIZE_HI / NEW_SIZE_LO) * u[:, : 2 * L]))
        change = u[:, 2 * L] < self.deep_change_p
        change_bid = u[:, 2 * L + 1] < 0.5
        change_level = 1 + (u[:, 2 * L + 2] * (L - 1)).astype(np.int64) if L > 1 else np.zeros(n, np.int64)
        out = _Out()
        rows = zip(
            names,
            bid_prices.tolist(),
            ask_prices.tolist(),
            quotes["bid_size"].to_pylist(),
            quotes["ask_size"].to_pylist(),
            fresh.tolist(),
            change.tolist(),
            change_bid.tolist(),
            change_level.tolist(),
            ts_event.tolist(),
        )
        for r, (name, bp, ap, bs, as_, fr, ch, ch_bid, ch_lvl, ts) in enumerate(rows):
            st = self._books[name]
            bids = _ladder(bp, fr[:L], bs, st.bids)
            asks = _ladder(ap, fr[L:], as_, st.asks)
            if ch:  # an order deep in the book changes its size
                book, prices, sizes = (bids, bp, fr[:L]) if ch_bid else (asks, ap, fr[L:])
                if ch_lvl < len(book):
                    book[prices[ch_lvl]] = sizes[ch_lvl]
            start = len(out.action)
            if st.last_snapshot_ns is not None:
                out.diff(st.bids, bids, BUY)
                out.diff(st.asks, asks, SELL)
                if len(out.action) == start:  # nothing changed: the quote still gets its group
                    p = next(iter(bids))
                    out.add(UPDATE, BUY, p, bids[p], F_MBP)
                out.flags[-1] |= F_LAST
            if st.last_snapshot_ns is None or ts - st.last_snapshot_ns >= self.snapshot_interval_ns:
                out.snapshot(bids, asks)
                out.flags[-1] |= F_LAST
                st.last_snapshot_ns = ts
            k = len(out.action) - start
            out.row.extend([r] * k)
            out.seq.extend(range(st.next_seq, st.next_seq + k))
            st.next_seq += k
            st.bids, st.asks = bids, asks
        return out.table(quotes)


def _ladders(bid: np.ndarray, ask: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Each quote's bid and ask price ladders (n × levels, best first): one tick apart, rounded like the simulator's
    quotes (so a level's price is the same float whichever quote's ladder it is in); the best is the quote's own."""
    tick = np.where((bid + ask) / 2 > 1000, 0.25, 0.01)[:, None]
    off = np.arange(levels)
    bids = np.round((np.rint(bid / tick[:, 0])[:, None] - off) * tick, 8)
    asks = np.round((np.rint(ask / tick[:, 0])[:, None] + off) * tick, 8)
    bids[:, 0], asks[:, 0] = bid, ask
    return bids, asks


def _ladder(prices: list[float], fresh: list[float], best_size: float, old: dict[float, float]) -> dict[float, float]:
    """The side's new levels: the best at the quote's size, the others keep their old size or get a fresh one."""
    book = {prices[0]: best_size}
    for p, f in zip(prices[1:], fresh[1:]):
        if p <= 0:
            break
        book[p] = old.get(p, f)
    return book


class _Out:
    """Columns of the deltas being made (action/side as codes)."""

    def __init__(self):
        self.action, self.side, self.price, self.size, self.flags, self.row, self.seq = [], [], [], [], [], [], []

    def add(self, action: int, side: int, price: float, size: float, flags: int) -> None:
        self.action.append(action)
        self.side.append(side)
        self.price.append(price)
        self.size.append(size)
        self.flags.append(flags)

    def snapshot(self, bids: dict[float, float], asks: dict[float, float]) -> None:
        self.add(CLEAR, NO_SIDE, 0.0, 0.0, F_SNAPSHOT | F_MBP)
        for side, book in ((BUY, bids), (SELL, asks)):
            for p, s in book.items():
                self.add(ADD, side, p, s, F_SNAPSHOT | F_MBP)

    def diff(self, old: dict[float, float], new: dict[float, float], side: int) -> None:
        for p in old:
            if p not in new:
                self.add(DELETE, side, p, 0.0, F_MBP)
        for p, s in new.items():
            was = old.get(p)
            if was is None:
                self.add(ADD, side, p, s, F_MBP)
            elif was != s:
                self.add(UPDATE, side, p, s, F_MBP)

    def table(self, quotes: pa.Table) -> pa.Table:
        row = pa.array(self.row, pa.int64())
        codes = lambda v, names: pa.DictionaryArray.from_arrays(  # noqa: E731
            pa.array(v, pa.int8()), pa.array(names)
        ).dictionary_decode()
        cols = {
            "instrument_id": pc.take(quotes["instrument_id"], row).cast(pa.string()),
            "action": codes(self.action, ACTIONS),
            "side": codes(self.side, BOOK_SIDES),
            "price": pa.array(self.price, pa.float64()),
            "size": pa.array(self.size, pa.float64()),
            "order_id": pa.array(np.zeros(len(self.row), np.int64)),
            "flags": pa.array(self.flags, pa.int32()),
            "sequence": pa.array(self.seq, pa.int64()),
            "ts_event": pc.take(quotes["ts_event"], row).cast(pa.int64()),
            "ts_init": pc.take(quotes["ts_init"], row).cast(pa.int64()),
        }
        return pa.table(cols, schema=pa.schema(DELTA_FIELDS))


# ------------------------------------------------------------------------------------------------------ rebuild


def _empty() -> np.ndarray:
    return np.empty(0, np.float64)


@dataclass
class _Rows:
    """One instrument's deltas as arrays (action/side as codes, -1 if unknown). `pos` is the row in this call's
    table; a row carried over from an earlier call has pos < 0 and its identity in carried[-pos - 1]."""

    action: np.ndarray
    side: np.ndarray
    price: np.ndarray
    size: np.ndarray
    flags: np.ndarray
    seq: np.ndarray
    pos: np.ndarray
    carried: list = field(default_factory=list)

    def take(self, idx: np.ndarray) -> _Rows:
        return _Rows(*(getattr(self, f)[idx] for f in _ROW_ARRAYS), carried=self.carried)

    def __len__(self) -> int:
        return self.seq.size


_ROW_ARRAYS = ("action", "side", "price", "size", "flags", "seq", "pos")


@dataclass
class BookState:
    """One instrument's rebuilt book: levels best first, the last applied sequence, whether it is in sync with
    the feed (else it waits for a snapshot), and the deltas of an event group begun in an earlier call but not
    ended there (applied, atomically, once its F_LAST arrives)."""

    bid_prices: np.ndarray = field(default_factory=_empty)
    bid_sizes: np.ndarray = field(default_factory=_empty)
    ask_prices: np.ndarray = field(default_factory=_empty)
    ask_sizes: np.ndarray = field(default_factory=_empty)
    last_sequence: int | None = None
    synced: bool = False
    unsynced_since: str = "before the first snapshot"  # why it is not synced, for the quarantine reasons
    pending: _Rows | None = None

    @property
    def bids(self) -> dict[float, float]:
        return dict(zip(self.bid_prices.tolist(), self.bid_sizes.tolist()))

    @property
    def asks(self) -> dict[float, float]:
        return dict(zip(self.ask_prices.tolist(), self.ask_sizes.tolist()))

    def depth(self, n: int = DEPTH) -> tuple[list[float], list[float], list[float], list[float]]:
        """(bid prices, bid sizes, ask prices, ask sizes), best first, at most n levels each."""
        return (
            self.bid_prices[:n].tolist(),
            self.bid_sizes[:n].tolist(),
            self.ask_prices[:n].tolist(),
            self.ask_sizes[:n].tolist(),
        )


@dataclass
class RebuildResult:
    depth10: pa.Table  # one row per applied event group (DEPTH_FIELDS), in the input order of their F_LAST deltas
    states: dict[str, BookState]  # a new dict: new BookStates for the instruments in the call, the others as given
    quarantine: list[tuple[object, str]]  # (message_id, or the row's index in its call's table, reason), input order
    crossed: int  # event groups that would have left a book crossed (each one rejected)
    snapshot_mismatches: int  # snapshots on a synced book whose depth differs from the book rebuilt before them
    counters: dict[str, int]


COUNTERS = (
    "applied",  # deltas of applied groups
    "groups",  # applied groups (= depth rows)
    "skipped_already_applied",  # sequence <= the last applied one: a redelivery
    "skipped_duplicates",  # the same sequence again within the call
    "quarantined",
    "pending",  # deltas of a group not ended in this call, carried in the state
    "snapshots",  # applied snapshot groups
    "snapshots_compared",
    "resyncs",  # snapshots that brought an unsynced book back in sync
    "gaps",
    "rejected_groups",  # crossed books and invalid operations
)
BLOCK_GROUPS = 1024  # event groups per vectorised block (fewer where the price levels are many)
CELLS = 1 << 20  # at most this many groups × price levels in one block's matrix


def rebuild(states: dict[str, BookState], deltas: pa.Table) -> RebuildResult:
    """Apply `deltas` (any order across instruments; each instrument's in `sequence` order inside) to `states`.

    Per instrument: a sequence <= the last applied one is skipped (a redelivery); a CLEAR with F_SNAPSHOT is
    accepted at any higher sequence and brings the book in sync; otherwise a sequence that is not the last + 1 is a
    gap: quarantined (`sequence_gap`), as is everything after it (`awaiting_snapshot`) until a snapshot, and so is
    an instrument without a state until its first snapshot. The deltas of a group cut by the gap are quarantined too
    (`incomplete_group`). A group that leaves the book crossed (`crossed_book`) or holds an invalid operation
    (`unknown_level`, `level_exists`, `invalid_delta`) is quarantined whole, the book stays as before it and waits
    for a snapshot. A snapshot that follows the last applied sequence on a synced book is compared with the book
    before it; one after a sequence jump (a restarted feed) is not: the deltas in between were never seen.
    """
    t = _Table(deltas)
    out = _Collect()
    for pos in t.unkeyed().tolist():
        out.quarantine.append((pos, (t.ident(pos), "invalid_delta: no instrument_id or sequence")))
        out.counters["quarantined"] += 1
    new_states = dict(states)
    for name, idx in t.instruments():
        run = _Instrument(name, states.get(name), t, out)
        new_states[name] = run.replay(t.rows(idx))
    return RebuildResult(
        depth10=out.depth_table(t),
        states=new_states,
        quarantine=[q for _, q in sorted(out.quarantine, key=lambda x: x[0])],
        crossed=out.crossed,
        snapshot_mismatches=out.mismatches,
        counters=out.counters,
    )


class _Table:
    """The input's columns as arrays, and each row's identity for the quarantine."""

    def __init__(self, deltas: pa.Table):
        missing = {n for n, _ in DELTA_FIELDS} - {"order_id"} - set(deltas.column_names)
        if missing:
            raise ValueError(f"deltas without {sorted(missing)}")
        self._t = deltas
        self.action = self._codes("action", ACTIONS)
        self.side = self._codes("side", BOOK_SIDES)
        self.price = self._numbers("price", np.nan, pa.float64())
        self.size = self._numbers("size", np.nan, pa.float64())
        self.flags = self._numbers("flags", 0, pa.int64())
        self.seq = self._numbers("sequence", -1, pa.int64())
        self.seq_null = self._col("sequence").is_null().to_numpy(zero_copy_only=False)
        self.ts_event = self._numbers("ts_event", 0, pa.int64())
        self.ts_init = self._numbers("ts_init", 0, pa.int64())
        has_ids = "message_id" in deltas.column_names
        self.message_id = self._col("message_id").cast(pa.string()) if has_ids else None
        self._ids: list | None = None
        inst = self._col("instrument_id").cast(pa.string()).dictionary_encode()
        self.names = inst.dictionary.to_pylist()
        self.inst = pc.fill_null(inst.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)

    def _col(self, name: str) -> pa.Array:
        return self._t[name].combine_chunks()

    def _numbers(self, name: str, fill, dtype: pa.DataType) -> np.ndarray:
        return pc.fill_null(self._col(name).cast(dtype), fill).to_numpy(zero_copy_only=False)

    def _codes(self, name: str, names: tuple[str, ...]) -> np.ndarray:
        """Each row's index in `names`, -1 for anything else (null included)."""
        idx = pc.fill_null(pc.index_in(self._col(name).cast(pa.string()), pa.array(names)), -1)
        return idx.to_numpy(zero_copy_only=False).astype(np.int8)

    def instruments(self):
        """(name, row indices sorted by sequence, stable) per instrument; rows without either are left out."""
        ok = (self.inst >= 0) & ~self.seq_null
        order = np.lexsort((self.seq, self.inst))
        order = order[ok[order]]
        codes = self.inst[order]
        for idx in np.split(order, np.flatnonzero(np.diff(codes)) + 1):
            if idx.size:
                yield self.names[self.inst[idx[0]]], idx

    def unkeyed(self) -> np.ndarray:
        """Rows without an instrument or a sequence: nothing to apply them to."""
        return np.flatnonzero((self.inst < 0) | self.seq_null)

    def rows(self, idx: np.ndarray) -> _Rows:
        return _Rows(
            self.action[idx], self.side[idx], self.price[idx], self.size[idx], self.flags[idx], self.seq[idx], idx
        )

    def ident(self, pos: int) -> object:
        if self.message_id is None:
            return pos
        if self._ids is None:
            self._ids = self.message_id.to_pylist()
        return self._ids[pos]


class _Collect:
    """What the instruments' replays produce, gathered into the result."""

    def __init__(self):
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.quarantine: list[tuple[int, tuple[object, str]]] = []  # (input order, (identity, reason))
        self.crossed = self.mismatches = 0
        self.pieces: list[tuple] = []  # (name, F_LAST rows, then per side: counts, prices, sizes)

    def depth_table(self, t: _Table) -> pa.Table:
        schema = pa.schema(DEPTH_FIELDS)
        if not self.pieces:
            return schema.empty_table()
        pos = np.concatenate([p[1] for p in self.pieces])
        order = np.argsort(pos, kind="stable")  # rows in the input order of their F_LAST deltas
        pos = pos[order]
        inst = np.repeat(np.arange(len(self.pieces), dtype=np.int32), [p[1].size for p in self.pieces])[order]
        names = pa.DictionaryArray.from_arrays(
            pa.array(inst), pa.array([p[0] for p in self.pieces], pa.string())
        ).dictionary_decode()
        cols = {
            "instrument_id": names,
            "sequence": pa.array(t.seq[pos]),
            "flags": pa.array(t.flags[pos].astype(np.int32)),
            "ts_event": pa.array(t.ts_event[pos]),
            "ts_init": pa.array(t.ts_init[pos]),
        }
        for k, side in enumerate(("bid", "ask")):
            counts = np.concatenate([p[2 + 3 * k] for p in self.pieces])
            starts = (np.cumsum(counts) - counts)[order]  # each row's first value in the concatenated pieces
            counts = counts[order]
            ends = np.cumsum(counts)
            take = np.repeat(starts - (ends - counts), counts) + np.arange(ends[-1] if ends.size else 0)
            offsets = pa.array(np.r_[0, ends].astype(np.int32))
            for j, what in enumerate(("prices", "sizes")):
                values = np.concatenate([p[3 + 3 * k + j] for p in self.pieces])[take]
                cols[f"{side}_{what}"] = pa.ListArray.from_arrays(offsets, pa.array(values))
        ids = pc.take(t.message_id, pa.array(pos)) if t.message_id is not None else pa.nulls(pos.size, pa.string())
        cols["message_id"] = ids
        return pa.table(cols, schema=schema)


class _Instrument:
    """Replays one instrument's deltas (sorted by sequence) onto its state."""

    def __init__(self, name: str, state: BookState | None, table: _Table, out: _Collect):
        st = state or BookState()
        self.name, self.t, self.out, self.c = name, table, out, out.counters
        self.book = [st.bid_prices, st.bid_sizes, st.ask_prices, st.ask_sizes]  # best first
        self.last, self.synced, self.why, self.pending = st.last_sequence, st.synced, st.unsynced_since, st.pending

    def replay(self, rows: _Rows) -> BookState:
        if self.pending is not None:  # the group begun in the last call goes first (it is older)
            p = self.pending
            rows = _Rows(*(np.concatenate([getattr(p, f), getattr(rows, f)]) for f in _ROW_ARRAYS), p.carried)
            rows = rows.take(np.argsort(rows.seq, kind="stable"))
        old = rows.seq <= self.last if self.last is not None else np.zeros(len(rows), bool)
        dup = np.r_[False, rows.seq[1:] == rows.seq[:-1]] & ~old
        self.c["skipped_already_applied"] += int(old.sum())
        self.c["skipped_duplicates"] += int(dup.sum())
        self.r = r = rows.take(np.flatnonzero(~(old | dup)))
        self.snap = (r.action == CLEAR) & (r.flags & F_SNAPSHOT != 0)
        self._loop()
        bp, bs, ap, as_ = self.book
        return BookState(bp, bs, ap, as_, self.last, self.synced, self.why, self.pending)

    def _loop(self) -> None:
        """Stretches of consecutive sequences, split at gaps (then wait for a snapshot) and rejected groups."""
        r, m = self.r, len(self.r)
        snaps = np.flatnonzero(self.snap)
        breaks = np.flatnonzero(np.diff(r.seq) != 1) + 1
        nxt = None if self.last is None else self.last + 1  # the sequence that continues the feed
        mode, compare, i = self.synced, True, 0
        self.pending = None
        while i < m:
            if not mode:  # wait for a snapshot
                j = snaps[np.searchsorted(snaps, i)] if snaps.size and snaps[-1] >= i else m
                self._reject(i, j, lambda s: f"awaiting_snapshot: sequence {s} {self.why}")
                if j == m:
                    return
                i, mode, compare = j, True, False
            elif nxt is not None and r.seq[i] != nxt:
                if not self.snap[i]:
                    self._gap(i, nxt)
                    mode, i = False, i + 1
                    continue
                compare = False  # a jump to a snapshot: a restarted feed, nothing to compare with
            k = breaks[np.searchsorted(breaks, i, side="right")] if breaks.size and breaks[-1] > i else m
            done, bad = self._stretch(i, k, compare)
            if bad is not None:
                end, reason = bad
                self._reject(done, end, lambda s, why=reason: why)
                self.c["rejected_groups"] += 1
                self.synced, self.why, mode, i = False, "after a rejected group", False, end
                continue
            if done < k and k == m:  # a group not ended yet: apply it when its F_LAST arrives
                self._carry(done)
            elif done < k:
                why = f"incomplete_group: sequence {r.seq[k - 1] + 1} never came (next {r.seq[k]})"
                self._reject(done, k, lambda s, why=why: why)
            nxt, compare, i = r.seq[k - 1] + 1, True, k

    def _gap(self, i: int, expected: int) -> None:
        self._reject(i, i + 1, lambda s: f"sequence_gap: expected {expected}, got {s}")
        self.c["gaps"] += 1
        self.synced, self.why = False, "after a gap"

    def _reject(self, lo: int, hi: int, reason) -> None:
        r = self.r
        for x in range(lo, hi):
            pos = int(r.pos[x])
            ident = self.t.ident(pos) if pos >= 0 else r.carried[-pos - 1]
            key = pos if pos >= 0 else -(1 << 62) - pos
            self.out.quarantine.append((key, (ident, reason(int(r.seq[x])))))
        self.c["quarantined"] += int(hi - lo)

    def _carry(self, lo: int) -> None:
        r = self.r
        idx = np.arange(lo, len(r))
        carried = [self.t.ident(int(p)) if p >= 0 else r.carried[-p - 1] for p in r.pos[idx].tolist()]
        self.pending = r.take(idx)
        self.pending.pos, self.pending.carried = -1 - np.arange(idx.size), carried
        self.c["pending"] += int(idx.size)

    def _stretch(self, i: int, k: int, compare: bool) -> tuple[int, tuple[int, str] | None]:
        """Apply the ended groups of rows [i, k) (consecutive sequences). Returns (the row after the last applied
        group, None) or (the first row of a rejected group, (the row after it, reason))."""
        r = self.r
        ends = i + np.flatnonzero(r.flags[i:k] & F_LAST)
        if not ends.size:
            return i, None
        starts = np.r_[i, ends[:-1] + 1]
        bad_row, bad_reason = self._first_invalid(i, int(ends[-1]) + 1)
        g_bad = ends.size if bad_row is None else int(np.searchsorted(ends, bad_row))
        g, step = 0, BLOCK_GROUPS
        while g < g_bad:
            g2 = min(g_bad, g + step)
            res = self._block(starts[g:g2], ends[g:g2], compare or g > 0)
            if res is _TOO_BIG:  # too many price levels for one matrix: fewer groups at a time
                step = max(1, (g2 - g) // 2)
                continue
            if res is not None:
                gc, reason = res
                self.out.crossed += 1
                return int(starts[g + gc]), (int(ends[g + gc]) + 1, reason)
            g = g2
        if g_bad < ends.size:
            return int(starts[g_bad]), (int(ends[g_bad]) + 1, bad_reason)
        return int(ends[-1]) + 1, None

    def _first_invalid(self, lo: int, hi: int) -> tuple[int | None, str]:
        """The first row of [lo, hi) that is invalid given the rows before it (all applied): an operation on a level
        that is not there (or an ADD of one that is), an unknown action or side, a non-positive or missing size."""
        r = self.r
        a, s, p, q = r.action[lo:hi], r.side[lo:hi], r.price[lo:hi], r.size[lo:hi]
        clear = a == CLEAR
        sized = (a == ADD) | (a == UPDATE)
        bad = (a < 0) | (~clear & (s != BUY) & (s != SELL)) | (~clear & ~np.isfinite(p))
        bad |= sized & ~(np.isfinite(q) & (q > 0))
        found = [(int(x), "invalid_delta") for x in np.flatnonzero(bad)[:1]]
        epoch = np.cumsum(clear)  # a CLEAR empties the book: levels before it are gone
        for side, book_prices in ((BUY, self.book[0]), (SELL, self.book[2])):
            idx = np.flatnonzero((s == side) & ~clear & ~bad)
            o = idx[np.lexsort((idx, p[idx]))]  # by price, then in order
            po, eo, ao = p[o], epoch[o], a[o]
            same = np.r_[False, (po[1:] == po[:-1]) & (eo[1:] == eo[:-1])]
            there = np.where(same, np.r_[False, ao[:-1] != DELETE], (eo == 0) & np.isin(po, book_prices))
            for what, wrong in (("level_exists", (ao == ADD) & there), ("unknown_level", (ao != ADD) & ~there)):
                if wrong.any():
                    found.append((int(o[wrong].min()), what))
        if not found:
            return None, ""
        x, what = min(found)
        act = ACTIONS[a[x]] if a[x] >= 0 else "?"
        sd = BOOK_SIDES[s[x]] if s[x] >= 0 else "?"
        return lo + x, f"{what}: {act} {sd} {p[x]} size {q[x]} at sequence {r.seq[lo + x]}"

    def _block(self, starts: np.ndarray, ends: np.ndarray, compare_first: bool):
        """Apply the groups [starts, ends] (valid operations) and emit their depth rows, up to the first that leaves
        the book crossed. Returns _TOO_BIG (too many groups × levels for one matrix), None (all applied), or the
        crossing group (its index in the block, reason)."""
        r = self.r
        a, b, G = int(starts[0]), int(ends[-1]) + 1, ends.size
        gid = np.repeat(np.arange(G), ends - starts + 1)
        act = r.action[a:b]
        clears = np.flatnonzero(act == CLEAR)
        last_clear = np.full(G, -1)
        np.maximum.at(last_clear, gid[clears], clears)
        sides = []
        for k, side in enumerate((BUY, SELL)):
            w = np.flatnonzero((r.side[a:b] == side) & (act != CLEAR))
            w = w[w > last_clear[gid[w]]]  # a later CLEAR in the same group wipes these
            vals = np.where(act[w] == DELETE, 0.0, r.size[a:b][w])
            res = _side_depth(
                self.book[2 * k], self.book[2 * k + 1], gid[w], r.price[a:b][w], vals, gid[clears], G, side == BUY
            )
            if res is None:
                return _TOO_BIG
            sides.append(res)
        (cb, pb, sb, Vb, Ub), (ca, pa_, sa, Va, Ua) = sides
        ob, oa = np.cumsum(cb) - cb, np.cumsum(ca) - ca
        best_b, best_a = np.full(G, np.nan), np.full(G, np.nan)
        best_b[cb > 0], best_a[ca > 0] = pb[ob[cb > 0]], pa_[oa[ca > 0]]
        crossed = np.flatnonzero(best_b >= best_a)  # NaN (an empty side) compares False
        g_ok = int(crossed[0]) if crossed.size else G
        if g_ok:
            self._emit(starts, ends, g_ok, compare_first, a, (cb, pb, sb, ob), (ca, pa_, sa, oa))
            self.book = [*_levels(Vb[g_ok - 1], Ub), *_levels(Va[g_ok - 1], Ua)]
        if crossed.size:
            seq = r.seq[int(ends[g_ok])]
            return g_ok, f"crossed_book: best bid {best_b[g_ok]} >= best ask {best_a[g_ok]} at sequence {seq}"
        return None

    def _emit(self, starts, ends, g_ok: int, compare_first: bool, a: int, bid, ask) -> None:
        """Depth rows and counters for the block's first g_ok groups (applied), and the snapshots' comparisons."""
        r = self.r
        (cb, pb, sb, ob), (ca, pa_, sa, oa) = bid, ask
        nb, na = int(ob[g_ok - 1] + cb[g_ok - 1]), int(oa[g_ok - 1] + ca[g_ok - 1])
        self.out.pieces.append(
            (self.name, r.pos[ends[:g_ok]], cb[:g_ok], pb[:nb], sb[:nb], ca[:g_ok], pa_[:na], sa[:na])
        )
        applied = int(ends[g_ok - 1]) + 1 - a
        self.c["applied"] += applied
        self.c["groups"] += g_ok
        snap_groups = np.unique(np.searchsorted(ends, a + np.flatnonzero(self.snap[a : a + applied])))
        self.c["snapshots"] += snap_groups.size
        if not self.synced:
            self.c["resyncs"] += 1
        before = [x.tolist() for x in _top(self.book)]

        def row(g: int) -> list[list[float]]:
            return [pb[ob[g] : ob[g] + cb[g]].tolist(), sb[ob[g] : ob[g] + cb[g]].tolist()] + [
                pa_[oa[g] : oa[g] + ca[g]].tolist(),
                sa[oa[g] : oa[g] + ca[g]].tolist(),
            ]

        for g in snap_groups.tolist():
            if g == 0 and not compare_first:
                continue
            self.c["snapshots_compared"] += 1
            self.out.mismatches += (before if g == 0 else row(g - 1)) != row(g)
        self.last, self.synced = int(r.seq[ends[g_ok - 1]]), True


_TOO_BIG = object()


def _levels(v: np.ndarray, u: np.ndarray) -> list[np.ndarray]:
    """A side's levels (prices, sizes), best first, from one row of its matrix."""
    there = v > 0
    return [u[there], v[there]]


def _top(book: list[np.ndarray]) -> list[np.ndarray]:
    return [x[:DEPTH] for x in book]


def _side_depth(init_p, init_s, w_grp, w_price, w_val, clear_grp, G: int, bid: bool):
    """One side over a block of G groups: each group's top levels (counts, flat prices, flat sizes, best first) and
    the groups × levels size matrix (with its column prices, best first). A level's size after a group is its
    last write at or before that group (a CLEAR writes 0 everywhere), else its size at the block's start."""
    u = np.unique(np.concatenate([init_p, w_price]))  # ascending
    n_u = u.size
    if G * n_u > CELLS and G > 1:
        return None
    col = np.searchsorted(u, w_price)
    init_v = np.zeros(n_u)
    init_v[np.searchsorted(u, init_p)] = init_s
    if bid:  # columns best first
        u, col, init_v = u[::-1], n_u - 1 - col, init_v[::-1]
    W = np.full((G, n_u), -1, np.int32)  # which write (index into vals) set the cell
    vals = np.append(w_val, 0.0)
    W[clear_grp] = w_val.size
    key = w_grp * n_u + col
    _, first = np.unique(key[::-1], return_index=True)
    last = key.size - 1 - first  # the last write per (group, level) wins
    W.ravel()[key[last]] = last
    R = np.where(W >= 0, np.arange(G, dtype=np.int32)[:, None], np.int32(-1))
    np.maximum.accumulate(R, axis=0, out=R)  # the group of the latest write so far
    src = W.ravel()[np.maximum(R, 0) * n_u + np.arange(n_u, dtype=np.int32)]
    V = np.where(R >= 0, vals[src], init_v)
    there = V > 0
    c = np.cumsum(there, axis=1, dtype=np.int32)
    counts = np.minimum(c[:, -1], DEPTH) if n_u else np.zeros(G, np.int32)
    rr, cc = np.nonzero(there & (c <= DEPTH))
    return counts.astype(np.int64), u[cc], V[rr, cc], V, u
