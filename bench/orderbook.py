"""Depth-10 books from MBP-10 deltas: orderbook.rebuild (vectorised, with its sequence, crossing and snapshot
checks) against the plain reference (tests/reference_book.DictBook: a dict per side, one delta at a time, depth(10)
by sorting at each F_LAST), on the same simulated deltas; and the rate at which BookSimulator makes them.

    .venv/bin/python -m bench.orderbook [--quotes 40000] [--repeats 5]

The reference gets the same Arrow table (its columns turned into Python lists, in the table's order, which is each
instrument's sequence order) and returns the depth rows as Python lists (no Arrow table: the cheaper output);
rebuild returns its depth10 table. Both outputs are compared once. After a warm-up round, `--repeats` rounds time
each of them (alternating); prints each round, the medians in deltas/s and the ratio rebuild / reference. Single
threaded, like both. Prints figures; asserts nothing.
"""

import argparse
import statistics
import time

import pyarrow as pa

from nautilus_assets.market_data.orderbook import DEPTH, F_LAST, BookSimulator, rebuild
from nautilus_assets.market_data.simulator import MarketSimulator
from tests.reference_book import DictBook

INSTRUMENTS = ["AAPL.XNAS", "MSFT.XNAS", "ESZ6.GLBX", "BTCUSDT.BINANCE"]
START = 1_790_000_000_000_000_000


def reference(deltas: pa.Table) -> list[tuple]:
    """(instrument, sequence, bid prices, bid sizes, ask prices, ask sizes) at each F_LAST, one delta at a time."""
    books: dict[str, DictBook] = {}
    out = []
    cols = [deltas[c].to_pylist() for c in ("instrument_id", "action", "side", "price", "size", "flags", "sequence")]
    for inst, action, side, price, size, flags, seq in zip(*cols):
        book = books.get(inst)
        if book is None:
            book = books[inst] = DictBook()
        book.apply(action, side, price, size)
        if flags & F_LAST:
            out.append((inst, seq, *book.depth(DEPTH)))
    return out


def generate(quotes: pa.Table) -> tuple[pa.Table, float]:
    """The deltas of a fresh BookSimulator, and its rate (deltas/s)."""
    sim = BookSimulator(INSTRUMENTS, seed=7, start_ns=START)
    t = time.perf_counter()
    deltas = sim.deltas(quotes)
    return deltas, deltas.num_rows / (time.perf_counter() - t)


def timed(fn, deltas: pa.Table) -> float:
    t = time.perf_counter()
    fn(deltas)
    return deltas.num_rows / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quotes", type=int, default=40_000, help="level-1 quotes to turn into deltas")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    _, quotes = MarketSimulator(INSTRUMENTS, seed=7, start_ns=START).take(0, args.quotes)
    deltas, _ = generate(quotes)  # warm-up
    groups = sum(1 for f in deltas["flags"].to_pylist() if f & F_LAST)
    print(
        f"{deltas.num_rows:,} deltas from {quotes.num_rows:,} quotes ({len(INSTRUMENTS)} instruments): "
        f"{deltas.num_rows / quotes.num_rows:.2f} deltas per quote, {groups:,} event groups",
        flush=True,
    )
    res = rebuild({}, deltas)
    cols = ["instrument_id", "sequence", "bid_prices", "bid_sizes", "ask_prices", "ask_sizes"]
    same = list(zip(*(res.depth10[c].to_pylist() for c in cols))) == reference(deltas)
    print(
        f"outputs equal: {'yes' if same else 'NO'} ({res.depth10.num_rows:,} depth rows; quarantined "
        f"{len(res.quarantine)}, crossed {res.crossed}, snapshot mismatches {res.snapshot_mismatches})",
        flush=True,
    )
    fresh = lambda d: rebuild({}, d)  # noqa: E731
    timed(fresh, deltas)  # warm-up round
    timed(reference, deltas)

    fast, ref, gen = [], [], []
    for i in range(args.repeats):
        fast.append(timed(fresh, deltas))
        ref.append(timed(reference, deltas))
        gen.append(generate(quotes)[1])
        print(
            f"round {i + 1}: rebuild {fast[-1]:,.0f} deltas/s, reference {ref[-1]:,.0f} deltas/s, "
            f"generation {gen[-1]:,.0f} deltas/s",
            flush=True,
        )
    f, r, g = statistics.median(fast), statistics.median(ref), statistics.median(gen)
    print(f"median rebuild:    {f:,.0f} deltas/s")
    print(f"median reference:  {r:,.0f} deltas/s")
    print(f"ratio rebuild / reference: {f / r:.2f}")
    print(
        f"median generation: {g:,.0f} deltas/s ({g / (deltas.num_rows / quotes.num_rows):,.0f} quotes/s) "
        "(BookSimulator.deltas)"
    )


if __name__ == "__main__":
    main()
