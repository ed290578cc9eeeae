"""The level-2 order book: BookSimulator's MBP-10 deltas follow the level-1 quotes, and `rebuild` reconstructs the
same depth-10 books as a plain dict book (tests/reference_book.py), skipping redeliveries and quarantining gaps,
crossed books and invalid operations until a snapshot resyncs the instrument."""

import numpy as np
import pyarrow as pa
import pytest

from nautilus_assets.market_data.orderbook import (
    DELTA_FIELDS,
    DEPTH,
    F_LAST,
    F_MBP,
    F_SNAPSHOT,
    BookSimulator,
    rebuild,
)
from nautilus_assets.market_data.simulator import MarketSimulator
from tests.reference_book import DictBook

INSTR = ["AAPL.XNAS", "BTCUSDT.BINANCE"]
START = 1_790_000_000_000_000_000
S, M, L = F_SNAPSHOT, F_MBP, F_LAST


def simulate(n_quotes: int, seed: int = 3, start: int = START) -> tuple[pa.Table, pa.Table]:
    """(quotes, deltas) of a simulated market: ~100 quotes/s, so a snapshot about every 6,000 quotes."""
    _, quotes = MarketSimulator(INSTR, seed=seed, start_ns=start).take(0, n_quotes)
    return quotes, BookSimulator(INSTR, seed=seed, start_ns=start).deltas(quotes)


@pytest.fixture(scope="module")
def stream():
    quotes, deltas = simulate(20_000)
    ids = pa.array([f"m{i}" for i in range(deltas.num_rows)])
    return quotes, deltas.append_column("message_id", ids)


def hand_deltas(rows: list[tuple], instrument: str = "X") -> pa.Table:
    """Deltas from (sequence, action, side, price, size, flags) rows; message ids m<sequence>, ts_event = seq."""
    seq, action, side, price, size, flags = zip(*rows)
    return pa.table(
        {
            "instrument_id": [instrument] * len(rows),
            "action": list(action),
            "side": list(side),
            "price": pa.array(price, pa.float64()),
            "size": pa.array(size, pa.float64()),
            "order_id": pa.array([0] * len(rows), pa.int64()),
            "flags": pa.array(flags, pa.int32()),
            "sequence": pa.array(seq, pa.int64()),
            "ts_event": pa.array(seq, pa.int64()),
            "ts_init": pa.array([s + 1 for s in seq], pa.int64()),
            "message_id": [f"m{s}" for s in seq],
        }
    )


SNAPSHOT = [
    (1, "CLEAR", "NO_ORDER_SIDE", 0.0, 0.0, S | M),
    (2, "ADD", "BUY", 100.0, 5.0, S | M),
    (3, "ADD", "BUY", 99.5, 7.0, S | M),
    (4, "ADD", "SELL", 100.5, 3.0, S | M),
    (5, "ADD", "SELL", 101.0, 4.0, S | M | L),
]


def depths(table: pa.Table) -> list[tuple]:
    """Depth rows as (instrument, sequence, bid prices, bid sizes, ask prices, ask sizes)."""
    cols = ["instrument_id", "sequence", "bid_prices", "bid_sizes", "ask_prices", "ask_sizes"]
    return list(zip(*(table[c].to_pylist() for c in cols)))


def reference(deltas: pa.Table, books: dict | None = None) -> list[tuple]:
    """The DictBook replay: each instrument's deltas in sequence order, depth(10) at each F_LAST."""
    books = {} if books is None else books
    rows = sorted(deltas.to_pylist(), key=lambda r: (r["instrument_id"], r["sequence"]))
    out = []
    for r in rows:
        b = books.setdefault(r["instrument_id"], DictBook())
        b.apply(r["action"], r["side"], r["price"], r["size"])
        if r["flags"] & F_LAST:
            out.append((r["instrument_id"], r["sequence"], *b.depth(DEPTH)))
    return out


def by_key(rows: list[tuple]) -> list[tuple]:
    return sorted(rows, key=lambda r: (r[0], r[1]))


def cut_between_groups(deltas: pa.Table, near: int) -> int:
    """A row count >= near after which no instrument has a group begun and not ended."""
    inst, flags = deltas["instrument_id"].to_pylist(), deltas["flags"].to_pylist()
    open_ = set()
    for i, (n, f) in enumerate(zip(inst, flags)):
        if f & F_LAST:
            open_.discard(n)
        else:
            open_.add(n)
        if i + 1 >= near and not open_:
            return i + 1
    raise AssertionError("no cut")


def test_hand_worked_example():
    deltas = hand_deltas(
        SNAPSHOT
        + [
            (6, "UPDATE", "BUY", 100.0, 6.0, M),
            (7, "DELETE", "SELL", 100.5, 0.0, M),
            (8, "ADD", "SELL", 100.25, 2.0, M),
            (9, "ADD", "BUY", 99.0, 1.0, M | L),
            (10, "DELETE", "BUY", 100.0, 0.0, M | L),
        ]
    )
    res = rebuild({}, deltas)
    assert depths(res.depth10) == [
        ("X", 5, [100.0, 99.5], [5.0, 7.0], [100.5, 101.0], [3.0, 4.0]),
        ("X", 9, [100.0, 99.5, 99.0], [6.0, 7.0, 1.0], [100.25, 101.0], [2.0, 4.0]),
        ("X", 10, [99.5, 99.0], [7.0, 1.0], [100.25, 101.0], [2.0, 4.0]),
    ]
    d = res.depth10
    assert d["message_id"].to_pylist() == ["m5", "m9", "m10"]
    assert d["flags"].to_pylist() == [S | M | L, M | L, M | L]
    assert d["ts_event"].to_pylist() == [5, 9, 10] and d["ts_init"].to_pylist() == [6, 10, 11]
    st = res.states["X"]
    assert st.synced and st.last_sequence == 10
    assert st.bids == {99.5: 7.0, 99.0: 1.0} and st.asks == {100.25: 2.0, 101.0: 4.0}
    assert res.quarantine == [] and res.crossed == 0 and res.counters["applied"] == 10
    assert depths(res.depth10) == reference(deltas)  # the reference agrees with the hand


def test_deltas_within_a_group_apply_in_order():
    """Two writes to one level in a group (the last counts), a level deleted and added again, and a CLEAR in the
    middle of a group (it wipes what the group did before it; a level may be added again after it)."""
    deltas = hand_deltas(
        SNAPSHOT
        + [
            (6, "UPDATE", "BUY", 100.0, 6.0, M),
            (7, "UPDATE", "BUY", 100.0, 8.0, M),
            (8, "DELETE", "SELL", 100.5, 0.0, M),
            (9, "ADD", "SELL", 100.5, 2.5, M),
            (10, "DELETE", "BUY", 99.5, 0.0, M | L),
            (11, "UPDATE", "SELL", 101.0, 9.0, M),
            (12, "CLEAR", "NO_ORDER_SIDE", 0.0, 0.0, M),
            (13, "ADD", "BUY", 100.0, 3.0, M),
            (14, "ADD", "SELL", 100.25, 1.0, M | L),
        ]
    )
    res = rebuild({}, deltas)
    assert depths(res.depth10)[1:] == [
        ("X", 10, [100.0], [8.0], [100.5, 101.0], [2.5, 4.0]),
        ("X", 14, [100.0], [3.0], [100.25], [1.0]),
    ]
    assert res.quarantine == [] and depths(res.depth10) == reference(deltas)


def test_depth_keeps_the_best_ten():
    rows = [(1, "CLEAR", "NO_ORDER_SIDE", 0.0, 0.0, S | M)]
    rows += [(2 + i, "ADD", "BUY", 100.0 - i, 1.0 + i, S | M) for i in range(12)]
    rows += [(14 + i, "ADD", "SELL", 101.0 + i, 1.0, S | M) for i in range(3)]
    rows[-1] = (*rows[-1][:5], S | M | L)
    res = rebuild({}, hand_deltas(rows[::-1]))  # any order: sorted by sequence inside
    (_, _, bp, bs, ap, _), *_ = depths(res.depth10)
    assert bp == [100.0 - i for i in range(10)] and bs == [1.0 + i for i in range(10)]
    assert ap == [101.0, 102.0, 103.0]
    assert len(res.states["X"].bids) == 12  # the state keeps the whole book


def test_books_follow_the_quotes(stream):
    quotes, deltas = stream
    res = rebuild({}, deltas)
    assert res.quarantine == [] and res.crossed == 0 and res.counters["rejected_groups"] == 0
    q = {r["ts_event"]: r for r in quotes.to_pylist()}
    d = res.depth10.to_pylist()
    assert {r["ts_event"] for r in d} == set(q)  # every quote has its group(s)
    for r in d:
        quote = q[r["ts_event"]]
        assert r["instrument_id"] == quote["instrument_id"] and r["ts_init"] == quote["ts_init"]
        assert (r["bid_prices"][0], r["bid_sizes"][0]) == (quote["bid_price"], quote["bid_size"])
        assert (r["ask_prices"][0], r["ask_sizes"][0]) == (quote["ask_price"], quote["ask_size"])
        assert len(r["bid_prices"]) == len(r["ask_prices"]) == DEPTH  # the simulator fills ten levels
        tick = 0.25 if (quote["bid_price"] + quote["ask_price"]) / 2 > 1000 else 0.01
        assert np.allclose(np.diff(r["bid_prices"]), -tick) and np.allclose(np.diff(r["ask_prices"]), tick)
        assert r["bid_prices"][0] < r["ask_prices"][0]
    assert by_key(depths(res.depth10)) == by_key(reference(deltas))


def test_groups_are_minimal(stream):
    """Every incremental delta changes the book (a new level, a level that goes, a new size), but for the no-op
    group of a quote that changes nothing; levels that stay keep their size (else the reference would differ)."""
    _, deltas = stream
    books, group, useless = {}, [], 0
    for r in sorted(deltas.to_pylist(), key=lambda r: (r["instrument_id"], r["sequence"])):
        b = books.setdefault(r["instrument_id"], DictBook())
        side = b.bids if r["side"] == "BUY" else b.asks
        group.append(r["action"] == "UPDATE" and side.get(r["price"]) == r["size"])
        b.apply(r["action"], r["side"], r["price"], r["size"])
        if r["flags"] & F_LAST:
            if any(group):
                assert group == [True], "a no-op UPDATE is a group of its own"
                useless += 1
            group = []
    assert useless < deltas.num_rows / 1000
    assert deltas.num_rows / 20_000 < 10  # deltas per quote: levels that stay keep their size


def test_snapshots(stream):
    _, deltas = stream
    rows = deltas.to_pylist()
    res = rebuild({}, deltas)
    for inst in INSTR:
        mine = [r for r in rows if r["instrument_id"] == inst]
        seqs = [r["sequence"] for r in mine]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] == START // 1000
        assert all(r["flags"] & F_MBP for r in mine) and all(r["order_id"] == 0 for r in mine)
        clears = [i for i, r in enumerate(mine) if r["action"] == "CLEAR"]
        assert clears[0] == 0 and len(clears) >= 3
        for i in clears:
            assert mine[i]["side"] == "NO_ORDER_SIDE" and mine[i]["price"] == mine[i]["size"] == 0
            group = mine[i : i + 21]
            assert all(r["flags"] & F_SNAPSHOT for r in group) and all(r["action"] == "ADD" for r in group[1:])
            assert [bool(r["flags"] & F_LAST) for r in group] == [False] * 20 + [True]
            assert {r["ts_event"] for r in group} == {mine[i]["ts_event"]}
            if i:  # the quote's own group comes first, at the same time
                assert mine[i - 1]["ts_event"] == mine[i]["ts_event"] and mine[i - 1]["flags"] & F_LAST
        times = [mine[i]["ts_event"] for i in clears]
        assert min(np.diff(times)) >= 60e9 and max(np.diff(times)) < 70e9
    n_snapshots = sum(r["action"] == "CLEAR" for r in rows)
    assert res.counters["snapshots"] == n_snapshots
    assert res.counters["snapshots_compared"] == n_snapshots - len(INSTR)  # the first ones meet no book
    assert res.snapshot_mismatches == 0


def test_a_corrupted_delta_is_caught_by_the_next_snapshot(stream):
    _, deltas = stream
    inst = deltas["instrument_id"].to_pylist()
    action = deltas["action"].to_pylist()
    second_clear = [i for i, (n, a) in enumerate(zip(inst, action)) if n == INSTR[0] and a == "CLEAR"][1]
    before = max(i for i in range(second_clear) if inst[i] == INSTR[0] and action[i] in ("ADD", "UPDATE"))
    size = deltas["size"].to_numpy().copy()
    size[before] += 1
    bad = deltas.set_column(deltas.schema.get_field_index("size"), "size", pa.array(size))
    res = rebuild({}, bad)
    assert res.snapshot_mismatches == 1 and res.quarantine == []


@pytest.mark.parametrize("cut", [1, 21, 22, 60_001, "random"])
def test_two_calls_equal_one(stream, cut):
    _, deltas = stream
    if cut == "random":
        flags = deltas["flags"].to_numpy()
        cut = int(np.random.default_rng(1).choice(np.flatnonzero(flags[:-1] & F_LAST == 0))) + 1  # mid-group
    whole = rebuild({}, deltas)
    first = rebuild({}, deltas.slice(0, cut))
    kept = {k: (v.depth(), v.last_sequence, v.synced) for k, v in first.states.items()}
    second = rebuild(first.states, deltas.slice(cut))
    assert {k: (v.depth(), v.last_sequence, v.synced) for k, v in first.states.items()} == kept  # not modified
    assert pa.concat_tables([first.depth10, second.depth10]).equals(whole.depth10)
    for k, v in whole.states.items():
        w = second.states[k]
        assert (w.depth(), w.bids, w.asks, w.last_sequence, w.synced) == (
            v.depth(),
            v.bids,
            v.asks,
            v.last_sequence,
            v.synced,
        )
    assert first.counters["applied"] + second.counters["applied"] == whole.counters["applied"] == deltas.num_rows
    assert first.quarantine == second.quarantine == [] and second.snapshot_mismatches == 0


def test_redelivered_deltas_are_skipped(stream):
    _, deltas = stream
    n = cut_between_groups(deltas, 50_000)
    once = rebuild({}, deltas.slice(0, n))
    assert all(st.pending is None for st in once.states.values())
    again = rebuild(once.states, deltas.slice(n - 1000, 1000))
    assert again.depth10.num_rows == 0 and again.quarantine == []
    assert again.counters["skipped_already_applied"] == 1000 and again.counters["applied"] == 0
    twice = rebuild({}, pa.concat_tables([deltas.slice(0, n), deltas.slice(n - 700, 500)]))
    assert twice.depth10.equals(once.depth10) and twice.counters["skipped_duplicates"] == 500
    assert twice.quarantine == []


def test_a_dropped_delta_quarantines_until_the_next_snapshot(stream):
    _, deltas = stream
    rows = deltas.to_pylist()
    aapl = [i for i, r in enumerate(rows) if r["instrument_id"] == INSTR[0]]
    clears = [i for i in aapl if rows[i]["action"] == "CLEAR"]
    # the second delta of an incremental group between the first two snapshots
    group_start = next(i for i in aapl if i > clears[0] + 1000 and rows[i - 1]["flags"] & F_LAST)
    group_start = max(aapl[aapl.index(group_start) - 1] + 1, group_start)
    dropped = aapl[aapl.index(group_start) + 1]
    assert not rows[group_start]["flags"] & F_LAST and rows[group_start]["action"] != "CLEAR"
    resync = next(i for i in clears if i > dropped)
    res = rebuild({}, pa.concat_tables([deltas.slice(0, dropped), deltas.slice(dropped + 1)]))

    s = rows[dropped]["sequence"]
    reasons = dict(res.quarantine)
    assert reasons[rows[group_start]["message_id"]].startswith("incomplete_group:")
    assert reasons[rows[dropped + 1 if dropped + 1 in aapl else aapl[aapl.index(dropped) + 1]]["message_id"]] == (
        f"sequence_gap: expected {s}, got {s + 1}"
    )
    lost = [rows[i]["message_id"] for i in aapl if group_start <= i < resync and i != dropped]
    assert [m for m, _ in res.quarantine] == lost
    later = [i for i in aapl if dropped + 1 < i < resync]
    assert later and all(reasons[rows[i]["message_id"]].startswith("awaiting_snapshot:") for i in later)
    assert (
        reasons[rows[later[-1]]["message_id"]]
        == f"awaiting_snapshot: sequence {rows[later[-1]]['sequence']} after a gap"
    )
    assert res.counters["gaps"] == 1 and res.crossed == 0

    got = depths(res.depth10)
    want = reference(deltas)
    first_lost, first_back = rows[group_start]["sequence"], rows[resync]["sequence"]
    lost_seqs = range(first_lost, first_back)
    assert not [r for r in got if r[0] == INSTR[0] and r[1] in lost_seqs]
    kept = [r for r in want if not (r[0] == INSTR[0] and r[1] in lost_seqs)]
    assert by_key(got) == by_key(kept)  # resumed at the snapshot, equal to a book rebuilt from it
    after = pa.Table.from_pylist([r for r in rows[resync:] if r["instrument_id"] == INSTR[0]], deltas.schema)
    assert [r for r in got if r[0] == INSTR[0] and r[1] >= first_back] == reference(after)


def test_no_state_waits_for_the_first_snapshot(stream):
    _, deltas = stream
    tail = deltas.slice(5_000)
    res = rebuild({}, tail)
    rows = tail.to_pylist()
    reasons = dict(res.quarantine)
    want = by_key(reference(deltas))
    for inst in INSTR:
        first_clear = next(i for i, r in enumerate(rows) if r["instrument_id"] == inst and r["action"] == "CLEAR")
        waiting = [r for r in rows[:first_clear] if r["instrument_id"] == inst]
        assert waiting and [reasons[r["message_id"]] for r in waiting] == [
            f"awaiting_snapshot: sequence {r['sequence']} before the first snapshot" for r in waiting
        ]
        mine = [r for r in by_key(depths(res.depth10)) if r[0] == inst]
        assert mine == [r for r in want if r[0] == inst and r[1] >= rows[first_clear]["sequence"]]
    assert len(res.quarantine) == res.counters["quarantined"] and res.counters["gaps"] == 0


def test_a_crossing_group_is_rejected():
    deltas = hand_deltas(
        SNAPSHOT
        + [
            (6, "ADD", "BUY", 100.75, 1.0, M),  # a bid above the best ask
            (7, "UPDATE", "SELL", 101.0, 9.0, M | L),
            (8, "UPDATE", "BUY", 100.0, 2.0, M | L),
        ]
    )
    res = rebuild({}, deltas)
    assert res.crossed == 1 and res.counters["rejected_groups"] == 1
    assert [m for m, _ in res.quarantine] == ["m6", "m7", "m8"]
    assert res.quarantine[0][1].startswith("crossed_book: best bid 100.75 >= best ask 100.5")
    assert res.quarantine[1][1] == res.quarantine[0][1]
    assert res.quarantine[2][1] == "awaiting_snapshot: sequence 8 after a rejected group"
    st = res.states["X"]
    assert not st.synced and st.last_sequence == 5
    assert st.bids == {100.0: 5.0, 99.5: 7.0} and st.asks == {100.5: 3.0, 101.0: 4.0}  # as before the group
    assert [r[1] for r in depths(res.depth10)] == [5]
    resync = hand_deltas(
        [
            (9, "CLEAR", "NO_ORDER_SIDE", 0.0, 0.0, S | M),
            (10, "ADD", "BUY", 99.0, 1.0, S | M),
            (11, "ADD", "SELL", 99.5, 2.0, S | M | L),
        ]
    )
    back = rebuild(res.states, resync)
    assert depths(back.depth10) == [("X", 11, [99.0], [1.0], [99.5], [2.0])] and back.states["X"].synced
    assert back.snapshot_mismatches == 0 and back.counters["resyncs"] == 1  # an unsynced book: not compared


@pytest.mark.parametrize(
    "op, reason",
    [
        ((7, "UPDATE", "BUY", 98.0, 1.0, M | L), "unknown_level: UPDATE BUY 98.0"),
        ((7, "DELETE", "SELL", 102.0, 0.0, M | L), "unknown_level: DELETE SELL 102.0"),
        ((7, "ADD", "BUY", 99.5, 1.0, M | L), "level_exists: ADD BUY 99.5"),
        ((7, "ADD", "BUY", 98.0, 0.0, M | L), "invalid_delta: ADD BUY 98.0"),
        ((7, "REPLACE", "BUY", 98.0, 1.0, M | L), "invalid_delta: ? BUY 98.0"),
    ],
)
def test_an_invalid_operation_rejects_its_group(op, reason):
    deltas = hand_deltas(SNAPSHOT + [(6, "UPDATE", "BUY", 100.0, 6.0, M), op])
    res = rebuild({}, deltas)
    assert [m for m, _ in res.quarantine] == ["m6", "m7"]
    assert all(r.startswith(reason) for _, r in res.quarantine), res.quarantine
    st = res.states["X"]
    assert not st.synced and st.bids == {100.0: 5.0, 99.5: 7.0}  # the valid UPDATE went back with its group
    assert res.crossed == 0 and res.depth10.num_rows == 1


def test_a_restarted_simulator_continues_above_the_old_sequences():
    ms = MarketSimulator(INSTR, seed=3, start_ns=START)
    _, q1 = ms.take(0, 3000)
    d1 = BookSimulator(INSTR, seed=3, start_ns=START).deltas(q1)
    restart = ms.now_ns + 1
    _, q2 = MarketSimulator(INSTR, seed=3, start_ns=restart).take(0, 3000)
    d2 = BookSimulator(INSTR, seed=3, start_ns=restart).deltas(q2)
    for inst in INSTR:
        s1 = [r["sequence"] for r in d1.to_pylist() if r["instrument_id"] == inst]
        s2 = [r["sequence"] for r in d2.to_pylist() if r["instrument_id"] == inst]
        assert min(s2) > max(s1)
    first = rebuild({}, d1)
    res = rebuild(first.states, d2)  # the restarted feed's first snapshot is taken at its higher sequence
    assert res.quarantine == [] and res.counters["gaps"] == 0 and res.snapshot_mismatches == 0
    assert by_key(depths(res.depth10)) == by_key(reference(d2))


def test_deterministic():
    quotes, deltas = simulate(4000, seed=5)
    assert deltas.schema == pa.schema(DELTA_FIELDS)
    assert simulate(4000, seed=5)[1].equals(deltas)
    assert not simulate(4000, seed=6)[1].equals(deltas)
    sim = BookSimulator(INSTR, seed=5, start_ns=START)
    parts = [sim.deltas(quotes.slice(a, b - a)) for a, b in [(0, 1), (1, 1777), (1777, 4000)]]
    assert pa.concat_tables(parts).equals(deltas)  # however the quotes are split
    assert BookSimulator(INSTR, seed=5, start_ns=START + 1000).deltas(quotes)["sequence"] != deltas["sequence"]


def test_unordered_input_gives_the_same_books(stream):
    _, deltas = stream
    shuffled = deltas.take(np.random.default_rng(2).permutation(deltas.num_rows))
    res = rebuild({}, shuffled)
    assert res.quarantine == [] and by_key(depths(res.depth10)) == by_key(depths(rebuild({}, deltas).depth10))
