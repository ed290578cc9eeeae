"""Order-book measures per instrument and UTC minute from reconstructed depth-10 book states. Pure: no I/O.

A state is one row per book update: `instrument_id`, `ts_event` (UTC ns) and `bid_prices`, `bid_sizes`,
`ask_prices`, `ask_sizes` (list<float64>, best level first; a side may be empty). Rows may come in any order;
they are taken sorted by (instrument_id, ts_event), ties in input order, `previous` rows before `states` rows.

Time weighting. A state is in force from its ts_event until the instrument's next update. Minute m = [s, s + 60 s)
averages over [start, s + 60 s): start = s when a state was in force at s (an earlier update, in `states` or in
`previous`), else the minute's first update. The minute's last state holds to the minute's end even when it is the
last update of the input, so a minute's row depends only on its own updates and the state before it: it is final
once the minute has closed and all its updates are in, whatever the input holds after it. Where a measure is
undefined for a state (a spread or mid with an empty side, an imbalance with no size) that time is left out of its
mean (numerator and denominator); the mean is null when the measure is undefined throughout.

Order-flow imbalance (Cont, Kukanov & Stoikov 2014, "The price impact of order book events", J. Financial
Econometrics 12(1):47-88), with P the best price and q the size at it:
    e_n = 1{Pb_n ≥ Pb_{n−1}}·qb_n − 1{Pb_n ≤ Pb_{n−1}}·qb_{n−1} − 1{Pa_n ≤ Pa_{n−1}}·qa_n + 1{Pa_n ≥ Pa_{n−1}}·qa_{n−1}
n−1 is the instrument's previous update, in an earlier minute or in `previous` if need be; an instrument's first
update without one contributes 0. An empty bid side is Pb = −∞, qb = 0 (an empty ask side Pa = +∞, qa = 0): a side
emptying removes its whole best level (−qb_{n−1}, or +qa_{n−1}), one refilling adds it, both empty add nothing.
A minute's OFI is Σ e_n over its updates and D (CKS's depth) the mean of (qb_n + qa_n)/2 over them.

Continuation. Because a minute needs only its updates and the state before it, `minute_measures(states, previous)`
gives, for every minute present in `states`, the row of one pass over all data provided `states` holds ALL of that
minute's updates of the instrument and the last update before the minute is in `states` or `previous`. A caller
that follows a feed therefore handles a batch whose earliest update lies in minute M as: states = the stored updates
with ts ≥ M plus the batch; previous = last_states(stored updates with ts < M); the rows replace stored rows for the
same (instrument_id, minute). A batch that starts on a minute boundary needs no re-read: previous =
last_states(last batch, previous=its previous). The newest minute's row is provisional until that minute closes.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MINUTE_NS = 60_000_000_000
BOOK_SCHEMA = pa.schema(
    [
        ("instrument_id", pa.string()),
        ("ts_event", pa.int64()),
        ("bid_prices", pa.list_(pa.float64())),
        ("bid_sizes", pa.list_(pa.float64())),
        ("ask_prices", pa.list_(pa.float64())),
        ("ask_sizes", pa.list_(pa.float64())),
    ]
)
MEASURES_SCHEMA = pa.schema(
    [
        ("instrument_id", pa.string()),
        ("minute", pa.timestamp("s", tz="UTC")),
        ("updates", pa.int64()),
        ("spread_mean", pa.float64()),
        ("spread_close", pa.float64()),
        ("relative_spread_bps_mean", pa.float64()),
        ("depth_imbalance_mean", pa.float64()),
        ("l1_imbalance_close", pa.float64()),
        ("microprice_close", pa.float64()),
        ("mid_close", pa.float64()),
        ("ofi", pa.float64()),
        ("mean_depth", pa.float64()),
        ("ofi_normalized", pa.float64()),
    ]
)


def _book_table(states: pa.Table, previous: pa.Table | None) -> tuple[pa.Table, int]:
    """`previous` then `states`, book columns only, in BOOK_SCHEMA's types; and how many rows came from previous."""
    parts = [t for t in (previous, states) if t is not None]
    cast = [pa.table([t.column(f.name).cast(f.type) for f in BOOK_SCHEMA], schema=BOOK_SCHEMA) for t in parts]
    return pa.concat_tables(cast), 0 if previous is None else previous.num_rows


def _order(book: pa.Table, n_prev: int) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """Sorting permutation (instrument_id, previous before states, ts_event; stable), each row's instrument rank
    (in string order) and the instrument names by rank. Raises if a previous state is later than an update."""
    inst = book.column("instrument_id").combine_chunks()
    if inst.null_count:
        raise ValueError("instrument_id must not be null")
    enc = pc.dictionary_encode(inst)
    names = enc.dictionary
    by_name = np.argsort(np.array(names.to_pylist(), dtype=object), kind="stable")
    rank = np.empty(len(names), np.int64)
    rank[by_name] = np.arange(len(names))
    code = rank[enc.indices.to_numpy(zero_copy_only=False)]
    ts = book.column("ts_event").to_numpy()
    from_states = np.arange(len(code)) >= n_prev
    order = np.lexsort((ts, from_states, code))
    if n_prev:
        c, t = code[order], ts[order]
        if np.any((c[1:] == c[:-1]) & (t[1:] < t[:-1])):
            raise ValueError("a previous state is later than an update of its instrument")
    return order, code, names.take(pa.array(by_name))


def _side(prices: pa.ChunkedArray, sizes: pa.ChunkedArray, levels: int, empty_price: float):
    """Best price, size at the best, Σ sizes over the top `levels` levels, and whether the side has a level.
    An empty side gets `empty_price` and size 0 (see the OFI convention in the module docstring)."""
    n = len(prices)
    length = pc.fill_null(pc.list_value_length(prices), 0).to_numpy().astype(np.int64)
    if not np.array_equal(length, pc.fill_null(pc.list_value_length(sizes), 0).to_numpy()):
        raise ValueError("a book side has as many prices as sizes")
    flat_p = pc.list_flatten(prices).to_numpy()
    flat_q = pc.list_flatten(sizes).to_numpy()
    start = np.zeros(n, np.int64)
    np.cumsum(length[:-1], out=start[1:])
    has = length > 0
    best_p, best_q = np.full(n, empty_price), np.zeros(n)
    best_p[has], best_q[has] = flat_p[start[has]], flat_q[start[has]]
    row = np.repeat(np.arange(n), length)
    if length.size and length.max() > levels:  # only the top `levels` levels count
        keep = np.arange(flat_q.size) - start[row] < levels
        row, flat_q = row[keep], flat_q[keep]
    return best_p, best_q, np.bincount(row, weights=flat_q, minlength=n), has


def _cks_events(pb: np.ndarray, qb: np.ndarray, pa_: np.ndarray, qa: np.ndarray) -> np.ndarray:
    """e_n for n = 1..len−1 of consecutive states (CKS 2014; formula in the module docstring)."""
    e = (pb[1:] >= pb[:-1]) * qb[1:]
    e -= (pb[1:] <= pb[:-1]) * qb[:-1]
    e -= (pa_[1:] <= pa_[:-1]) * qa[1:]
    e += (pa_[1:] >= pa_[:-1]) * qa[:-1]
    return e


class _Sorted:
    """previous + states sorted, with the per-state book quantities."""

    def __init__(self, states: pa.Table, previous: pa.Table | None, levels: int):
        if levels < 1:
            raise ValueError("levels must be at least 1")
        book, self.n_prev = _book_table(states, previous)
        self.order, code, self.names = _order(book, self.n_prev)
        o = self.order
        self.code = code[o]
        self.ts = book.column("ts_event").to_numpy()[o]
        self.from_states = o >= self.n_prev
        bp, bq, bsum, bhas = _side(book.column("bid_prices"), book.column("bid_sizes"), levels, -np.inf)
        ap, aq, asum, ahas = _side(book.column("ask_prices"), book.column("ask_sizes"), levels, np.inf)
        self.bp, self.bq, self.bsum, self.ap, self.aq, self.asum = bp[o], bq[o], bsum[o], ap[o], aq[o], asum[o]
        self.both = bhas[o] & ahas[o]
        # does row i have an earlier update of its instrument (row i−1)?
        self.has_prior = np.zeros(self.ts.size, bool)
        self.has_prior[1:] = self.code[1:] == self.code[:-1]

    def events(self) -> np.ndarray:
        e = np.zeros(self.ts.size)
        if self.ts.size > 1:
            e[1:] = _cks_events(self.bp, self.bq, self.ap, self.aq)
        e[~self.has_prior] = 0.0  # n−1 belongs to another instrument
        return e


def ofi_events(states: pa.Table, previous: pa.Table | None = None) -> np.ndarray:
    """CKS e_n of each row of `states`, in the rows' input order (0 for an instrument's first update when `previous`
    has no state for it). See the module docstring for the formula and the empty-side convention."""
    s = _Sorted(states, previous, 1)
    e = np.empty(s.ts.size)
    e[s.order] = s.events()
    return e[s.n_prev :]


def last_states(states: pa.Table, previous: pa.Table | None = None) -> pa.Table:
    """The last state per instrument (latest ts_event; of equal ones the last in input order), in BOOK_SCHEMA:
    what the next batch passes as `previous`. With `previous`, instruments absent from `states` keep theirs."""
    book, n_prev = _book_table(states, previous)
    order, code, _ = _order(book, n_prev)
    c = code[order]
    last = np.ones(c.size, bool)
    last[:-1] = c[1:] != c[:-1]
    return book.take(pa.array(order[last]))


def _nullable(values: np.ndarray, defined: np.ndarray) -> pa.Array:
    return pa.array(np.where(defined, values, 0.0), pa.float64(), mask=~defined)


def minute_measures(states: pa.Table, previous: pa.Table | None = None, levels: int = 10) -> pa.Table:
    """One row per (instrument_id, minute) with an update in `states` (MEASURES_SCHEMA), sorted by both:

    updates                   book updates in the minute
    spread_mean               time-weighted mean of Pa − Pb (both sides non-empty)
    spread_close              Pa − Pb at the minute's last update
    relative_spread_bps_mean  time-weighted mean of (Pa − Pb) / mid · 1e4, mid = (Pa + Pb) / 2 (mid ≠ 0)
    depth_imbalance_mean      time-weighted mean of (ΣQb − ΣQa) / (ΣQb + ΣQa) over the top `levels` levels
                              (an empty side counts 0; undefined when the sum is 0)
    l1_imbalance_close        (qb − qa) / (qb + qa) at the last update (same rule, level 1)
    microprice_close          (Pa·qb + Pb·qa) / (qb + qa) at the last update (both sides, qb + qa > 0)
    mid_close                 (Pa + Pb) / 2 at the last update
    ofi                       Σ e_n (Cont, Kukanov & Stoikov 2014) over the minute's updates
    mean_depth                mean of (qb_n + qa_n) / 2 over the minute's updates (CKS's D)
    ofi_normalized            ofi / mean_depth (null when mean_depth is 0)

    Time weighting, the OFI conventions and the contract for continuing with `previous` are in the module
    docstring; undefined values are null."""
    s = _Sorted(states, previous, levels)
    if not s.from_states.any():
        return MEASURES_SCHEMA.empty_table()
    e = s.events()
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = s.ap - s.bp
        mid = (s.ap + s.bp) / 2
        rel = spread / mid * 1e4
        tot, l1 = s.bsum + s.asum, s.bq + s.aq
        depth_imb = (s.bsum - s.asum) / tot
        l1_imb = (s.bq - s.aq) / l1
        micro = (s.ap * s.bq + s.bp * s.aq) / l1
    rel_ok = s.both & (mid != 0)
    depth_ok, l1_ok = tot > 0, l1 > 0

    k = np.flatnonzero(s.from_states)  # the updates (previous rows only lend their state and e_n's n−1)
    minute = s.ts // MINUTE_NS * MINUTE_NS
    end = minute + MINUTE_NS
    new = np.ones(k.size, bool)
    new[1:] = (s.code[k[1:]] != s.code[k[:-1]]) | (minute[k[1:]] != minute[k[:-1]])
    gid = np.cumsum(new) - 1
    first = k[new]
    last = k[np.r_[new[1:], True]]
    groups = first.size

    # each update's state weighs from its ts to the next update or the minute's end, whichever is first
    nxt = np.append(s.ts[1:], 0)
    has_next = np.append(s.has_prior[1:], False)
    w = (np.minimum(np.where(has_next[k], nxt[k], end[k]), end[k]) - s.ts[k]).astype(np.float64)
    # and the state in force before the minute's first update weighs from the minute's start (or its own ts)
    tail = s.has_prior[first]
    before = first[tail] - 1
    w_before = (s.ts[first[tail]] - np.maximum(minute[first[tail]], s.ts[before])).astype(np.float64)

    def time_mean(x: np.ndarray, ok: np.ndarray) -> pa.Array:
        xv = np.where(ok, x, 0.0)
        okf = ok.astype(np.float64)
        num = np.bincount(gid, weights=w * xv[k], minlength=groups)
        den = np.bincount(gid, weights=w * okf[k], minlength=groups)
        num[tail] += w_before * xv[before]
        den[tail] += w_before * okf[before]
        defined = den > 0
        return _nullable(num / np.where(defined, den, 1.0), defined)

    updates = np.bincount(gid, minlength=groups)
    ofi = np.bincount(gid, weights=e[k], minlength=groups)
    mean_depth = np.bincount(gid, weights=(s.bq[k] + s.aq[k]) / 2, minlength=groups) / updates
    depth_nz = mean_depth != 0
    return pa.table(
        [
            s.names.take(pa.array(s.code[first])),
            pa.array(minute[first] // 1_000_000_000, pa.int64()).cast(pa.timestamp("s", tz="UTC")),
            pa.array(updates, pa.int64()),
            time_mean(spread, s.both),
            _nullable(spread[last], s.both[last]),
            time_mean(rel, rel_ok),
            time_mean(depth_imb, depth_ok),
            _nullable(l1_imb[last], l1_ok[last]),
            _nullable(micro[last], s.both[last] & l1_ok[last]),
            _nullable(mid[last], s.both[last]),
            pa.array(ofi, pa.float64()),
            pa.array(mean_depth, pa.float64()),
            _nullable(ofi / np.where(depth_nz, mean_depth, 1.0), depth_nz),
        ],
        schema=MEASURES_SCHEMA,
    )
