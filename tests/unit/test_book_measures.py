"""Order-book minute measures: a hand-worked example covering each CKS case, a straightforward row-by-row
implementation of the definitions compared on a randomized multi-instrument feed, the continuation contract
(re-reading the split minute, batch by batch into an upserting store), and properties of symmetric books."""

import math
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from nautilus_assets.microstructure.book import MINUTE_NS, last_states, minute_measures, ofi_events

S = 1_000_000_000
T0 = 1_700_000_040 * S  # a UTC minute start
FLOATS = (
    "spread_mean",
    "spread_close",
    "relative_spread_bps_mean",
    "depth_imbalance_mean",
    "l1_imbalance_close",
    "microprice_close",
    "mid_close",
    "ofi",
    "mean_depth",
    "ofi_normalized",
)


def book(inst: str, ts: int, bids: list[tuple[float, float]], asks: list[tuple[float, float]]) -> dict:
    return {
        "instrument_id": inst,
        "ts_event": ts,
        "bid_prices": [p for p, _ in bids],
        "bid_sizes": [q for _, q in bids],
        "ask_prices": [p for p, _ in asks],
        "ask_sizes": [q for _, q in asks],
    }


def table(rows: list[dict]) -> pa.Table:
    lst = pa.list_(pa.float64())
    schema = pa.schema(
        [("instrument_id", pa.string()), ("ts_event", pa.int64())]
        + [(c, lst) for c in ("bid_prices", "bid_sizes", "ask_prices", "ask_sizes")]
    )
    return pa.Table.from_pylist(rows, schema=schema)


# One instrument, two minutes; prices are binary fractions so the arithmetic below is exact.
# Each update names the CKS case it exercises (bid/ask price up, down, or same price with a new size).
HAND = [
    book("X", T0 + 5 * S, [(100.0, 10), (99.75, 5)], [(100.5, 8), (100.75, 7)]),  # u0: first, e = 0
    book("X", T0 + 15 * S, [(100.25, 4), (100.0, 10)], [(100.5, 8), (100.75, 7)]),  # u1: bid price up
    book("X", T0 + 30 * S, [(100.25, 6), (100.0, 10)], [(100.5, 8), (100.75, 7)]),  # u2: bid same price, 4 -> 6
    book("X", T0 + 45 * S, [(100.25, 6), (100.0, 10)], [(100.375, 3), (100.5, 8)]),  # u3: ask price down
    book("X", T0 + 70 * S, [(100.0, 10), (99.75, 5)], [(100.375, 3), (100.5, 8)]),  # u4: bid price down
    book("X", T0 + 80 * S, [(100.0, 10), (99.75, 5)], [(100.375, 5), (100.5, 8)]),  # u5: ask same price, 3 -> 5
    book("X", T0 + 100 * S, [(100.0, 10), (99.75, 5)], [(100.5, 8), (100.75, 7)]),  # u6: ask price up
]
# e_n = 1{Pb_n>=Pb_n-1} qb_n - 1{Pb_n<=Pb_n-1} qb_n-1 - 1{Pa_n<=Pa_n-1} qa_n + 1{Pa_n>=Pa_n-1} qa_n-1
# u1: bid up: +qb_n = +4;              ask same 100.5: -8 + 8 = 0   -> e = 4
# u2: bid same: +6 - 4 = +2;           ask same: -8 + 8 = 0         -> e = 2
# u3: bid same: +6 - 6 = 0;            ask down: -qa_n = -3         -> e = -3
# u4: bid down: -qb_n-1 = -6;          ask same: -3 + 3 = 0         -> e = -6
# u5: bid same: +10 - 10 = 0;          ask same: -5 + 3 = -2        -> e = -2
# u6: bid same: 0;                     ask up: +qa_n-1 = +5         -> e = 5
HAND_E = [0.0, 4.0, 2.0, -3.0, -6.0, -2.0, 5.0]


def test_hand_worked_example():
    np.testing.assert_array_equal(ofi_events(table(HAND)), HAND_E)
    # rows in another order give the same events, in the rows' own order
    np.testing.assert_array_equal(ofi_events(table(HAND[::-1])), HAND_E[::-1])
    m0, m1 = minute_measures(table(HAND[::-1])).to_pylist()
    assert int(m0["minute"].timestamp()) * S == T0 and int(m1["minute"].timestamp()) * S == T0 + MINUTE_NS
    assert (m0["updates"], m1["updates"]) == (4, 3)

    # minute 0, no earlier state: covered from u0 (5 s) to the minute's end, 55 s
    # spreads: u0 100.5-100 = 0.5 for 10 s; u1, u2 0.25 for 15 s each; u3 100.375-100.25 = 0.125 for 15 s
    assert m0["spread_mean"] == pytest.approx((0.5 * 10 + 0.25 * 15 + 0.25 * 15 + 0.125 * 15) / 55, rel=1e-12)
    # mids 100.25, 100.375, 100.375, 100.3125
    rel0 = (0.5 / 100.25 * 10 + 0.25 / 100.375 * 30 + 0.125 / 100.3125 * 15) * 1e4 / 55
    assert m0["relative_spread_bps_mean"] == pytest.approx(rel0, rel=1e-12)
    # depth (Σbid - Σask)/(Σbid + Σask): u0 (15-15)/30 = 0, u1 (14-15)/29, u2 (16-15)/31, u3 (16-11)/27
    assert m0["depth_imbalance_mean"] == pytest.approx((0 * 10 - 1 / 29 * 15 + 1 / 31 * 15 + 5 / 27 * 15) / 55)
    # close at u3: bid 100.25 x 6, ask 100.375 x 3
    assert m0["spread_close"] == 0.125 and m0["mid_close"] == 100.3125
    assert m0["l1_imbalance_close"] == pytest.approx((6 - 3) / 9)
    assert m0["microprice_close"] == pytest.approx((100.375 * 6 + 100.25 * 3) / 9)  # 903/9 = 100.333…
    # OFI 0 + 4 + 2 - 3 = 3; depth (qb+qa)/2: u0 (10+8)/2 = 9, u1 6, u2 7, u3 4.5 -> D = 26.5/4 = 6.625
    assert m0["ofi"] == 3.0 and m0["mean_depth"] == 6.625
    assert m0["ofi_normalized"] == pytest.approx(3 / 6.625)

    # minute 1, [60 s, 120 s): u3 in force 60-70 s (spread 0.125), u4 70-80 s (0.375), u5 80-100 s (0.375),
    # u6 100-120 s (0.5; the input's last update holds to the minute's end)
    assert m1["spread_mean"] == pytest.approx((0.125 * 10 + 0.375 * 10 + 0.375 * 20 + 0.5 * 20) / 60)  # 0.375
    assert m1["spread_mean"] == pytest.approx(0.375)
    # depth: u3 5/27, u4 (15-11)/26, u5 (15-13)/28, u6 (15-15)/30 = 0
    assert m1["depth_imbalance_mean"] == pytest.approx((5 / 27 * 10 + 4 / 26 * 10 + 2 / 28 * 20 + 0 * 20) / 60)
    # OFI -6 - 2 + 5 = -3; D: u4 (10+3)/2 = 6.5, u5 7.5, u6 9 -> 23/3
    assert m1["ofi"] == -3.0 and m1["mean_depth"] == pytest.approx(23 / 3)
    assert m1["ofi_normalized"] == pytest.approx(-9 / 23)
    # close at u6: bid 100 x 10, ask 100.5 x 8, symmetric two-level sizes on each side: 15 vs 15
    assert m1["spread_close"] == 0.5 and m1["mid_close"] == 100.25
    assert m1["l1_imbalance_close"] == pytest.approx(2 / 18)
    assert m1["microprice_close"] == pytest.approx((100.5 * 10 + 100.0 * 8) / 18)

    # minute 1 alone, with u3 as the previous state, is the same row
    assert minute_measures(table(HAND[4:]), previous=last_states(table(HAND[:4]))).to_pylist() == [m1]
    # levels=1: the depth imbalance is the level-1 one: u3 (6-3)/9, u4 (10-3)/13, u5 (10-5)/15, u6 (10-8)/18
    m1_l1 = minute_measures(table(HAND), levels=1).to_pylist()[1]
    assert m1_l1["depth_imbalance_mean"] == pytest.approx((3 / 9 * 10 + 7 / 13 * 10 + 5 / 15 * 20 + 2 / 18 * 20) / 60)


def test_previous_state_inside_the_first_minute_and_empty_sides():
    prev = table([book("X", T0 - 30 * S, [(10.0, 2)], [(10.5, 2)])])  # spread 0.5 in force from before the minute
    rows = [
        book("X", T0 + 20 * S, [(10.0, 2)], []),  # ask side empties: ask term +qa_n-1 = +2; bid same 2-2 = 0
        book("X", T0 + 40 * S, [], []),  # bid side empties: -qb_n-1 = -2; both asks empty: -0 + 0
        book("X", T0 + 50 * S, [(9.5, 1)], [(11.0, 3)]),  # both refill: +qb_n = +1, -qa_n = -3
    ]
    np.testing.assert_array_equal(ofi_events(table(rows), previous=prev), [2.0, -2.0, -2.0])
    np.testing.assert_array_equal(ofi_events(table(rows)), [0.0, -2.0, -2.0])  # first update: no n-1
    (m,) = minute_measures(table(rows), previous=prev).to_pylist()
    # spread defined 0-20 s (0.5, previous) and 50-60 s (1.5); the one-sided 30 s are left out
    assert m["spread_mean"] == pytest.approx((0.5 * 20 + 1.5 * 10) / 30)
    # imbalance: 0 for 20 s, +1 (only bids) for 20 s, undefined (no size) 10 s, (1-3)/4 for 10 s
    assert m["depth_imbalance_mean"] == pytest.approx((0 * 20 + 1 * 20 - 0.5 * 10) / 50)
    assert m["ofi"] == -2.0 and m["mean_depth"] == pytest.approx((1 + 0 + 2) / 3)
    # without previous the minute is covered from its first update (20 s): spread only over 50-60 s
    (m_alone,) = minute_measures(table(rows)).to_pylist()
    assert m_alone["spread_mean"] == 1.5 and m_alone["depth_imbalance_mean"] == pytest.approx((20 - 5) / 30)
    # an undefined close is null, not NaN; an undefined mean too
    (m_empty,) = minute_measures(table(rows[1:2])).to_pylist()
    for c in ("spread_mean", "spread_close", "relative_spread_bps_mean", "depth_imbalance_mean"):
        assert m_empty[c] is None
    for c in ("l1_imbalance_close", "microprice_close", "mid_close", "ofi_normalized"):
        assert m_empty[c] is None
    assert m_empty["ofi"] == 0.0 and m_empty["mean_depth"] == 0.0
    # a previous state in force must precede the input
    with pytest.raises(ValueError):
        minute_measures(table(rows), previous=table([book("X", T0 + 30 * S, [], [])]))


# -- a straightforward implementation: rows per instrument, minutes as dicts, segments of constant state --------


def _best(prices: list, sizes: list, empty: float) -> tuple[float, float]:
    return (prices[0], sizes[0]) if prices else (empty, 0.0)


def _spread(r: dict):
    return r["ask_prices"][0] - r["bid_prices"][0] if r["bid_prices"] and r["ask_prices"] else None


def _mid(r: dict):
    return (r["ask_prices"][0] + r["bid_prices"][0]) / 2 if r["bid_prices"] and r["ask_prices"] else None


def _rel(r: dict):
    mid = _mid(r)
    return _spread(r) / mid * 1e4 if mid else None


def _imbalance(b: float, a: float):
    return (b - a) / (b + a) if b + a > 0 else None


def _micro(r: dict):
    if not (r["bid_prices"] and r["ask_prices"]):
        return None
    qb, qa = r["bid_sizes"][0], r["ask_sizes"][0]
    return (r["ask_prices"][0] * qb + r["bid_prices"][0] * qa) / (qb + qa) if qb + qa > 0 else None


def reference(states: pa.Table, previous: pa.Table | None = None, levels: int = 10) -> dict:
    """{(instrument, minute ns): row} read literally off the definitions, one state at a time."""
    per = defaultdict(list)  # instrument -> [(ts, is_update, row)], previous first
    for r in [] if previous is None else previous.to_pylist():
        per[r["instrument_id"]].append((r["ts_event"], False, r))
    for r in states.to_pylist():
        per[r["instrument_id"]].append((r["ts_event"], True, r))
    out = {}
    for inst, seq in per.items():
        seq.sort(key=lambda x: (x[1], x[0]))  # stable: equal timestamps keep input order
        minutes = defaultdict(list)  # minute -> positions of its updates in seq
        for i, (ts, is_update, _) in enumerate(seq):
            if is_update:
                minutes[ts // MINUTE_NS * MINUTE_NS].append(i)
        for m, idx in minutes.items():
            end = m + MINUTE_NS
            segments = []  # (row, from, to)
            if idx[0] > 0:  # a state in force before the minute's first update
                segments.append((seq[idx[0] - 1][2], max(m, seq[idx[0] - 1][0]), seq[idx[0]][0]))
            for j, i in enumerate(idx):
                to = seq[idx[j + 1]][0] if j + 1 < len(idx) else end
                segments.append((seq[i][2], seq[i][0], to))

            def tw(f, segments=segments):
                num = den = 0.0
                for r, a, b in segments:
                    v = f(r)
                    if v is not None:
                        num += v * (b - a)
                        den += b - a
                return num / den if den > 0 else None

            ofi, depth = 0.0, 0.0
            for i in idx:
                r = seq[i][2]
                pb, qb = _best(r["bid_prices"], r["bid_sizes"], -math.inf)
                pa_, qa = _best(r["ask_prices"], r["ask_sizes"], math.inf)
                depth += (qb + qa) / 2
                if i == 0:
                    continue
                p = seq[i - 1][2]
                pb0, qb0 = _best(p["bid_prices"], p["bid_sizes"], -math.inf)
                pa0, qa0 = _best(p["ask_prices"], p["ask_sizes"], math.inf)
                if pb > pb0:
                    ofi += qb
                elif pb < pb0:
                    ofi -= qb0
                else:
                    ofi += qb - qb0
                if pa_ < pa0:
                    ofi -= qa
                elif pa_ > pa0:
                    ofi += qa0
                else:
                    ofi += qa0 - qa
            close = seq[idx[-1]][2]
            d = depth / len(idx)
            q1 = (close["bid_sizes"] or [0.0])[0], (close["ask_sizes"] or [0.0])[0]
            out[(inst, m)] = {
                "updates": len(idx),
                "spread_mean": tw(_spread),
                "spread_close": _spread(close),
                "relative_spread_bps_mean": tw(_rel),
                "depth_imbalance_mean": tw(
                    lambda r: _imbalance(sum(r["bid_sizes"][:levels]), sum(r["ask_sizes"][:levels]))
                ),
                "l1_imbalance_close": _imbalance(*q1),
                "microprice_close": _micro(close),
                "mid_close": _mid(close),
                "ofi": ofi,
                "mean_depth": d,
                "ofi_normalized": ofi / d if d else None,
            }
    return out


def as_dict(t: pa.Table) -> dict:
    out = {}
    for r in t.to_pylist():
        key = (r.pop("instrument_id"), int(r.pop("minute").timestamp()) * S)
        assert key not in out
        out[key] = r
    return out


def assert_rows_close(ours: dict, ref: dict, rel: float = 1e-9) -> None:
    assert ours.keys() == ref.keys()
    for key, r in ref.items():
        o = ours[key]
        assert o["updates"] == r["updates"], key
        for c in FLOATS:
            if r[c] is None:
                assert o[c] is None, (key, c)
            else:
                assert o[c] is not None and math.isclose(o[c], r[c], rel_tol=rel, abs_tol=1e-9), (key, c, o[c], r[c])


def random_feed(seed: int, n: int = 4000, minutes: int = 10) -> pa.Table:
    """Several instruments on a tick grid (so equal prices are equal floats), sparse clustered timings with
    gaps over a minute and equal timestamps, depth 0-10 per side, sometimes an empty side or zero sizes."""
    rng = np.random.default_rng(seed)
    insts = ["ES.GLBX", "AAPL.XNAS", "BTC-USD.COIN", "ZN.GLBX", "MSFT.XNAS"]
    share = rng.dirichlet(np.ones(len(insts)) * 2)
    rows = []
    for inst, f in zip(insts, share):
        k = max(int(n * f), 2)
        ts = np.sort(rng.integers(T0, T0 + minutes * MINUTE_NS, k))
        ts[rng.random(k) < 0.05] = T0 + 2 * MINUTE_NS  # a burst of equal timestamps
        ts = np.sort(ts)
        tick = float(rng.choice([0.25, 0.01, 0.5]))
        bid, half = 4000, 1
        for t in ts:
            bid += int(rng.choice([-1, 0, 0, 0, 1]))
            odd = rng.random()  # now and then a book with no side, or with nothing at the best levels
            half = max(1, half + int(rng.choice([-1, 0, 0, 1])))
            sides = []
            for sign, best in ((-1, bid), (1, bid + half)):
                depth = 0 if rng.random() < 0.04 or odd < 0.03 else int(rng.integers(1, 11))
                ticks = best + sign * np.cumsum(np.r_[0, rng.integers(1, 3, max(depth - 1, 0))])[:depth]
                sizes = np.round(rng.gamma(1.5, 40.0, depth), 2)
                if depth and (rng.random() < 0.03 or odd > 0.97):
                    sizes[:] = 0.0
                sides.append(list(zip((ticks * tick).tolist(), sizes.tolist())))
            rows.append(book(inst, int(t), *sides))
    for i, inst in enumerate(insts):  # closes that are undefined: no book at all, or nothing at the best levels
        odd = [[], []] if i % 2 else [[(1.0, 0.0)], [(1.5, 0.0)]]
        rows.append(book(inst, T0 + (3 + i) * MINUTE_NS - 1, *odd))
    order = rng.permutation(len(rows))
    return table([rows[i] for i in order])


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_the_straightforward_implementation(seed: int):
    feed = random_feed(seed)
    ours = as_dict(minute_measures(feed))
    assert len(ours) > 30
    nulls = {c: sum(r[c] is None for r in ours.values()) for c in ("spread_close", "l1_imbalance_close", "mid_close")}
    assert all(nulls.values()), nulls  # the feed does reach the undefined cases
    assert_rows_close(ours, reference(feed))
    for levels in (1, 3):
        assert_rows_close(as_dict(minute_measures(feed, levels=levels)), reference(feed, levels=levels))
    # with previous states for some instruments, from before the feed
    prev = table(
        [
            book("ES.GLBX", T0 - 5 * S, [(1000.0, 7)], [(1000.5, 9)]),
            book("ZN.GLBX", T0 - 90 * S, [], [(2.0, 1)]),
            book("NOT.TRADED", T0 - 5 * S, [(1.0, 1)], [(2.0, 1)]),
        ]
    )
    assert_rows_close(as_dict(minute_measures(feed, previous=prev)), reference(feed, prev))


def _sorted_by_ts(t: pa.Table) -> pa.Table:
    return t.take(pc.sort_indices(t, [("ts_event", "ascending")]))  # stable


def test_continuation_re_reading_the_split_minute():
    feed = _sorted_by_ts(random_feed(5))
    full = as_dict(minute_measures(feed))
    ts = feed.column("ts_event").to_numpy()
    rng = np.random.default_rng(6)
    for i in rng.integers(1, feed.num_rows - 1, 8):
        first, second = feed.slice(0, i), feed.slice(i)
        m = int(ts[i]) // MINUTE_NS * MINUTE_NS  # the minute the second part starts in
        # the first part alone: every minute before m is final
        a = as_dict(minute_measures(first))
        assert {k: v for k, v in a.items() if k[1] < m} == {k: v for k, v in full.items() if k[1] < m}
        # the contract: all updates from m on (the first part's tail and the second part), previous = before m
        before = first.filter(pc.less(first.column("ts_event"), m))
        tail = first.filter(pc.greater_equal(first.column("ts_event"), m))
        b = as_dict(minute_measures(pa.concat_tables([tail, second]), previous=last_states(before)))
        assert_rows_close(b, {k: v for k, v in full.items() if k[1] >= m}, rel=1e-12)
    # a split on a minute boundary needs no re-read
    j = int(np.searchsorted(ts, T0 + 4 * MINUTE_NS))
    b = as_dict(minute_measures(feed.slice(j), previous=last_states(feed.slice(0, j))))
    assert_rows_close(b, {k: v for k, v in full.items() if k[1] >= T0 + 4 * MINUTE_NS}, rel=1e-12)


def test_batch_by_batch_into_an_upserting_store_equals_one_pass():
    feed = _sorted_by_ts(random_feed(7))
    full = as_dict(minute_measures(feed))
    rows, stored = {}, feed.slice(0, 0)  # the measures table (upsert by key) and the stored book states
    for batch in np.array_split(np.arange(feed.num_rows), 23):
        new = feed.take(pa.array(batch))
        m = int(pc.min(new.column("ts_event")).as_py()) // MINUTE_NS * MINUTE_NS
        ts = stored.column("ts_event")
        prev = last_states(stored.filter(pc.less(ts, m)))
        rows.update(as_dict(minute_measures(pa.concat_tables([stored.filter(pc.greater_equal(ts, m)), new]), prev)))
        stored = pa.concat_tables([stored, new])
    assert_rows_close(rows, full, rel=1e-12)


def test_last_states():
    feed = random_feed(8, n=500)
    ls = last_states(feed)
    ref = {}
    for r in _sorted_by_ts(feed).to_pylist():  # stable: the last of equal timestamps in input order wins
        ref[r["instrument_id"]] = r
    assert ls.to_pylist() == [ref[k] for k in sorted(ref)]
    # with previous: instruments absent from the batch keep their state
    prev = table([book("OLD", T0 - S, [(1.0, 1)], []), book("ES.GLBX", T0 - S, [], [])])
    got = {r["instrument_id"]: r for r in last_states(feed, previous=prev).to_pylist()}
    assert got["OLD"]["ts_event"] == T0 - S and got["ES.GLBX"] == ref["ES.GLBX"]


def test_symmetric_book_and_ofi_signs():
    rng = np.random.default_rng(9)
    for _ in range(20):
        mid, depth = float(rng.integers(1000, 2000)) / 4, int(rng.integers(1, 11))
        gaps = np.cumsum(rng.integers(1, 4, depth)) / 8
        sizes = rng.gamma(2.0, 10.0, depth).round(3).tolist()
        r = book("S", T0 + S, list(zip((mid - gaps).tolist(), sizes)), list(zip((mid + gaps).tolist(), sizes)))
        (m,) = minute_measures(table([r])).to_pylist()
        assert m["depth_imbalance_mean"] == 0 and m["l1_imbalance_close"] == 0
        assert m["microprice_close"] == pytest.approx(m["mid_close"], rel=1e-15) and m["mid_close"] == mid
        # a pure size increase at the best bid is positive flow of that size, at the best ask negative
        dq = float(rng.uniform(0.5, 50))
        more_bid = dict(r, ts_event=T0 + 2 * S, bid_sizes=[sizes[0] + dq, *sizes[1:]])
        more_ask = dict(r, ts_event=T0 + 2 * S, ask_sizes=[sizes[0] + dq, *sizes[1:]])
        e_bid, e_ask = ofi_events(table([r, more_bid]))[1], ofi_events(table([r, more_ask]))[1]
        assert e_bid > 0 and e_bid == pytest.approx(dq)
        assert e_ask < 0 and e_ask == pytest.approx(-dq)
        (m2,) = minute_measures(table([r, more_bid])).to_pylist()
        assert m2["ofi"] > 0 and m2["depth_imbalance_mean"] > 0 and m2["microprice_close"] > m2["mid_close"]
