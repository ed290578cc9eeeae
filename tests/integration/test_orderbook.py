"""Issue 12 item 1: the level-2 order book end to end. The simulator's MBP-10 deltas go through Pulsar into
`orderbook_deltas` (Delta + ClickHouse, exactly once) and each batch continues the books it touches from their
stored state into `orderbook_depth10`; the top of every depth row is the quote it was made from, a batch boundary
inside an event group changes nothing, a lost delta quarantines its instrument's deltas until the next snapshot,
and the Dagster job records each batch with its checks."""

import time

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nautilus_assets.definitions import defs
from nautilus_assets.market_data.assets import BATCH_TAG, DELTAS_KEY, DEPTH10_KEY
from nautilus_assets.market_data.ingest import run_batch
from nautilus_assets.market_data.orderbook import F_LAST, F_SNAPSHOT, BookSimulator
from nautilus_assets.market_data.schema import ORDERBOOK_DELTAS, ORDERBOOK_DEPTH10
from nautilus_assets.market_data.simulator import MarketSimulator, messages
from nautilus_assets.microstructure import assets as micro
from nautilus_assets.microstructure import book
from scripts.publisher import Publisher
from tests.helpers import WEEK, counts

INSTRUMENTS = ["AAPL.XNAS", "BTCUSDT.BINANCE"]


def _market(n_quotes: int, seed: int, snapshot_s: float = 20.0, rate: float = 50.0):
    start = time.time_ns() - 15 * 60 * 10**9  # a flat rate: the quotes end well before now at any hour
    sim = MarketSimulator(INSTRUMENTS, seed=seed, start_ns=start, events_per_second=rate, intraday_profile=False)
    quotes = sim.take(0, n_quotes)[1]
    deltas = BookSimulator(INSTRUMENTS, seed=seed, start_ns=start, snapshot_interval_ns=snapshot_s * 1e9).deltas(quotes)
    return quotes, deltas


def _publish(res, deltas: pa.Table) -> None:
    with res["pulsar"].client() as client:
        pub = Publisher(client)
        pub.send(ORDERBOOK_DELTAS.name, messages(deltas))
        pub.flush()


def _batches(res, prefix: str, max_messages: int) -> list:
    out = []
    while True:
        r = run_batch(
            ORDERBOOK_DELTAS,
            res["pulsar"],
            res["lake"],
            res["clickhouse"],
            f"{prefix}.{len(out) + 1}",
            max_messages,
            20,
            WEEK,
        )
        if not r.consumed:
            return out
        out.append(r)


def _depth(res) -> pa.Table:
    with res["clickhouse"].session() as c:
        return c.query_arrow(
            "SELECT instrument_id, sequence, ts_event, bid_prices, bid_sizes, ask_prices, ask_sizes, message_id "
            f"FROM market_data.{ORDERBOOK_DEPTH10.name} ORDER BY instrument_id, sequence"
        )


def test_deltas_land_exactly_once_and_rebuild_the_quoted_book_across_batch_boundaries(clean):
    res = clean
    quotes, deltas = _market(1500, seed=41)
    # the first batches end inside an event group (published in two parts, each drained by its batches): the next
    # batch reads the group's start back from the stored deltas
    flags = deltas["flags"].to_numpy()
    end = next(
        i for i in range(deltas.num_rows // 3, deltas.num_rows) if flags[i] & F_LAST and not flags[i - 1] & F_LAST
    )
    _publish(res, deltas.slice(0, 5))  # a cut inside the first snapshot: the book has applied nothing yet
    first = _batches(res, "book-snapshot", 100_000)
    assert first[-1].book.depth.num_rows == 0 and deltas["action"][0].as_py() == "CLEAR"
    _publish(res, deltas.slice(5, end - 5))  # up to the cut group's last delta
    first += _batches(res, "book-first", 100_000)
    assert len(first) >= 2 and first[1].book.carried == 5  # read back from the stored deltas
    _publish(res, deltas.slice(end))
    rest = _batches(res, "book-rest", 997)  # and further batch boundaries wherever the windows end
    assert rest[0].book.carried > 0
    results = first + rest
    assert sum(r.quarantined for r in results) == 0
    assert counts(res, ORDERBOOK_DELTAS) == (deltas.num_rows, deltas.num_rows)
    depth = _depth(res)
    groups = pc.sum(pc.not_equal(pc.bit_wise_and(deltas["flags"], F_LAST), 0)).as_py()
    # one row per event group: each quote's, plus the periodic snapshots after an instrument's first (sent after
    # the quote's own group, at its time)
    snapshots = deltas.filter(pc.equal(deltas["action"], "CLEAR")).num_rows
    assert depth.num_rows == groups == quotes.num_rows + snapshots - len(INSTRUMENTS)
    assert counts(res, ORDERBOOK_DEPTH10)[1] == groups
    # each quote's book top (its last depth row) is that quote (the simulator's consistency, end to end)
    q = quotes.sort_by([("instrument_id", "ascending"), ("ts_event", "ascending")])
    d = depth.sort_by([("instrument_id", "ascending"), ("sequence", "ascending")])
    key = pc.binary_join_element_wise(d["instrument_id"], d["ts_event"].cast(pa.string()), "/")
    last = pc.not_equal(key, pa.concat_arrays([key.combine_chunks()[1:], pa.array([""])]))
    d = d.filter(last)
    assert d["ts_event"].to_pylist() == q["ts_event"].to_pylist()
    for side, price, size in (("bid", "bid_price", "bid_size"), ("ask", "ask_price", "ask_size")):
        assert pc.list_element(d[f"{side}_prices"], 0).to_pylist() == q[price].to_pylist()
        assert pc.list_element(d[f"{side}_sizes"], 0).to_pylist() == q[size].to_pylist()
    assert (
        res["clickhouse"].scalar(
            "SELECT countIf(bid_prices[1] >= ask_prices[1] OR length(bid_prices) > 10) "
            f"FROM market_data.{ORDERBOOK_DEPTH10.name}"
        )
        == 0
    )
    # the same deltas again (a redelivery of everything): nothing new anywhere
    _publish(res, deltas)
    again = _batches(res, "book-again", 100_000)
    assert sum(r.quarantined for r in again) == deltas.num_rows  # new message ids, reused sequences: duplicates
    assert counts(res, ORDERBOOK_DELTAS) == (deltas.num_rows, deltas.num_rows) and _depth(res).num_rows == groups


def test_a_lost_delta_quarantines_its_instrument_until_the_next_snapshot(clean):
    res = clean
    _, deltas = _market(800, seed=43, snapshot_s=10.0)
    aapl = pc.equal(deltas["instrument_id"], "AAPL.XNAS")
    flags = deltas["flags"].to_numpy()
    # drop one incremental AAPL delta some way in, not part of a snapshot
    idx = [i for i, a in enumerate(aapl.to_pylist()) if a and not flags[i] & F_SNAPSHOT][200]
    lost = deltas.slice(idx, 1)
    kept = pa.concat_tables([deltas.slice(0, idx), deltas.slice(idx + 1)])
    _publish(res, kept)
    results = _batches(res, "book-gap", 100_000)
    reasons = [why for r in results for why in r.quarantine.values()]
    assert len([w for w in reasons if w.startswith("sequence_gap")]) == 1
    assert all(w.startswith(("sequence_gap", "awaiting_snapshot", "incomplete_group")) for w in reasons)
    assert sum(r.book.gaps for r in results) == 1
    # quarantined: the lost delta's group (its deltas before the loss) and everything after the gap up to the next
    # AAPL snapshot; nothing of BTCUSDT
    seq = lost["sequence"][0].as_py()
    mine = kept.filter(pc.equal(kept["instrument_id"], "AAPL.XNAS"))
    ends = mine.filter(pc.and_(pc.less(mine["sequence"], seq), pc.not_equal(pc.bit_wise_and(mine["flags"], F_LAST), 0)))
    group_start = pc.max(ends["sequence"]).as_py()
    cut = pc.sum(pc.and_(pc.greater(mine["sequence"], group_start), pc.less(mine["sequence"], seq))).as_py() or 0
    after = mine.filter(pc.greater(mine["sequence"], seq))
    snap = pc.index(pc.not_equal(pc.bit_wise_and(after["flags"], F_SNAPSHOT), 0), True).as_py()
    assert snap > 0 and sum(r.quarantined for r in results) == cut + snap
    assert counts(res, ORDERBOOK_DELTAS)[0] == kept.num_rows - cut - snap
    # the book is back in sync from the snapshot: depth rows resume after it
    depth = _depth(res)
    depth = depth.filter(pc.equal(depth["instrument_id"], "AAPL.XNAS"))
    assert pc.max(depth["sequence"]).as_py() > after["sequence"][snap].as_py()
    assert (
        res["clickhouse"].scalar(
            "SELECT count() FROM market_data.quarantine WHERE topic = %(t)s", parameters={"t": ORDERBOOK_DELTAS.topic}
        )
        == cut + snap
    )


def test_the_ingest_job_records_each_batch_with_its_book_checks(clean, instance):
    res = clean
    _, deltas = _market(600, seed=47)
    _publish(res, deltas)
    op = "ingest_orderbook_batch"
    result = defs.resolve_job_def("ingest_orderbook_deltas").execute_in_process(
        instance=instance,
        tags={BATCH_TAG: "book-job"},
        run_config={"ops": {op: {"config": {"idle_seconds": 3, "max_messages": 500}}}},
    )
    assert result.success
    mats = result.asset_materializations_for_node(op)
    deltas_mats = [m for m in mats if m.asset_key == DELTAS_KEY]
    depth_mats = [m for m in mats if m.asset_key == DEPTH10_KEY]
    assert len(deltas_mats) >= 2 and len(depth_mats) == len(deltas_mats)
    assert sum(m.metadata["written_clickhouse"].value for m in deltas_mats) == deltas.num_rows
    assert sum(m.metadata["depth_rows"].value for m in depth_mats) == _depth(res).num_rows
    evals = {}
    for e in result.get_asset_check_evaluations():
        evals.setdefault(e.check_name, []).append(e)
    for name in (
        "reconciles_with_consumed",
        "no_duplicate_ids",
        "sequences_contiguous",
        "book_never_crossed",
        "snapshots_match_rebuilt_book",
    ):
        assert len(evals[name]) == len(deltas_mats) and all(e.passed for e in evals[name]), (name, evals.get(name))
    assert sum(e.metadata["snapshots_compared"].value for e in evals["snapshots_match_rebuilt_book"]) > 0
    stored = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=DEPTH10_KEY), limit=100).records
    assert len([r for r in stored if r.run_id == result.run_id]) == len(depth_mats)


def test_book_measures_batch_by_batch_equal_one_pass_over_the_stored_books(clean, instance):
    """Issue 12 item 2 end to end: each order-book batch announces the minutes it changed on the book's change feed;
    the microstructure run recomputes them from the stored depth rows and the update before them. Three rounds of
    (publish, ingest, microstructure run), cut anywhere, store what one pass over every stored book computes."""
    res = clean
    _, deltas = _market(1200, seed=53, rate=5.0)  # about eight minutes of books
    resources = {k: res[k] for k in ("clickhouse", "pulsar", "lake", "redis")}
    for k, idx in enumerate(np.array_split(np.arange(deltas.num_rows), 3)):
        _publish(res, deltas.take(idx))
        done = _batches(res, f"bm-{k}", 100_000)
        assert sum(r.quarantined for r in done) == 0, sorted(
            {w.split(":")[0] for r in done for w in r.quarantine.values()}
        )
        result = dg.materialize([micro.vpin_buckets], instance=instance, resources=resources)
        assert result.success
        evals = [e for e in result.get_asset_check_evaluations() if e.check_name == "book_measures_in_range"]
        assert evals and all(e.passed for e in evals)
    with res["clickhouse"].session() as c:
        stored = c.query_arrow(
            "SELECT * EXCEPT (version, run_id) FROM microstructure.book_1m FINAL ORDER BY instrument_id, minute"
        )
        depth = c.query_arrow(
            "SELECT instrument_id, ts_event, bid_prices, bid_sizes, ask_prices, ask_sizes "
            f"FROM market_data.{ORDERBOOK_DEPTH10.name}"
        )
    once = book.minute_measures(depth)
    assert stored.num_rows == once.num_rows >= 2 * 6
    for name in once.column_names:
        a, b = stored[name].to_pylist(), once[name].to_pylist()
        if name == "minute":
            assert a == once[name].cast(pa.int64()).to_pylist()
            continue
        if name in ("instrument_id", "updates"):
            assert a == b, name
            continue
        assert [x is None for x in a] == [x is None for x in b], name
        np.testing.assert_allclose(
            [x for x in a if x is not None], [x for x in b if x is not None], rtol=1e-9, atol=1e-12, err_msg=name
        )
    assert pc.sum(pc.is_valid(stored["ofi"])).as_py() > 0
