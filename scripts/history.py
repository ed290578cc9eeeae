"""History mode: write N past days of simulated ticks straight into the lake's bronze Delta tables."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from nautilus_assets.market_data import changes, sinks
from nautilus_assets.market_data.decode import build_table
from nautilus_assets.market_data.schema import QUOTES, TRADES
from nautilus_assets.market_data.simulator import CHUNK, NS_PER_DAY, MarketSimulator, volume_settings
from nautilus_assets.portfolio.models import model_fills
from resources.lake import LakeResource


def _with_provenance(feed, t: pa.Table, day: date) -> pa.Table:
    n = t.num_rows
    return build_table(
        feed,
        {name: t[name] for name, *_ in feed.fields if name in t.column_names},  # a later version's: null
        ts_event=t["ts_event"],
        ts_init=t["ts_init"],
        topic="history",
        batch_id=f"history-{day}",
        now_ns=time.time_ns(),
        message_id=pa.array([f"h:{day}:{i}" for i in range(n)], pa.string()),
        ledger_id=pa.array([-1] * n, pa.int64()),
        entry_id=pa.array(range(n), pa.int64()),
    )


def simulate_days(
    instruments: list[str],
    first: date,
    days: int,
    events_per_day: int,
    seed: int,
    model: str = "stylized",
    volume: str = "small",
):
    """Yield (day, trades, quotes) for consecutive UTC days from one continuous simulation (prices carry over).
    A named `volume` other than "small" replaces events_per_day (e.g. "realistic": a listed stock's day)."""
    start_ns = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()) * 1_000_000_000
    kw = {"events_per_second": events_per_day / 86_400, **volume_settings(volume, len(instruments))}
    events_per_day = int(kw["events_per_second"] * 86_400)
    sim = MarketSimulator(instruments, seed=seed, start_ns=start_ns, model=model, **kw)
    carry = {TRADES.name: [], QUOTES.name: []}
    for k in range(days):
        day_end = start_ns + (k + 1) * NS_PER_DAY
        while sim.now_ns < day_end:
            trades, quotes = sim.chunk(min(CHUNK, max(100, events_per_day // 4)))
            carry[TRADES.name].append(trades)
            carry[QUOTES.name].append(quotes)
        out = []
        for name in (TRADES.name, QUOTES.name):
            t = pa.concat_tables(carry[name])
            today = pc.less(t["ts_event"], day_end)
            out.append(t.filter(today))
            carry[name] = [t.filter(pc.invert(today))]
        yield first + timedelta(days=k), out[0], out[1]


MANIFEST = "history/manifest.json"  # in the lake bucket: where the stored history's simulation starts, its settings


def read_manifest(lake: LakeResource) -> dict | None:
    s3 = lake.s3_client()
    try:
        return json.loads(s3.get_object(Bucket=lake.bucket, Key=MANIFEST)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def stored_dates(lake: LakeResource) -> tuple[set, set]:
    """(dates holding only history rows, dates holding live rows) in the bronze tables, from the Delta log's file
    statistics of `topic` (no data read): a file whose topics are not all "history" holds live ticks."""
    history, live = set(), set()
    for feed in (TRADES, QUOTES):
        dt = lake.table(sinks.bronze_table(feed))
        if dt is None:
            continue
        for d, lo, hi in sinks.file_dates(dt):
            (history if lo == hi == "history" else live).add(d)
    return history - live, live


def write_history(
    lake: LakeResource,
    instruments: list[str],
    days: int,
    events_per_day: int = 40_000,
    seed: int = 11,
    end: date | None = None,
    postgres=None,
    clickhouse=None,
    clickhouse_days: int | None = None,
    days_per_commit: int = 30,
    pulsar=None,
    model: str = "stylized",
    volume: str = "small",
) -> dict:
    """Days end-days .. end-1 (UTC) into the lake's bronze tables; given `postgres`, the model portfolios' fills
    into the portfolio store; given `clickhouse`, the ticks and their 1-minute bars into ClickHouse too (so the
    streaming products can compute over history; only the last `clickhouse_days` if given), announced on the bars'
    change feed given `pulsar`. `model` and `volume` choose the simulated market (simulator.MODELS, VOLUMES).

    Run again (on a later day, or after a crash), it extends the stored history instead of rewriting it: the
    simulation starts where the stored one started (MANIFEST), so its days come out identical and the new days
    continue the same price path; days up to the manifest's last complete one, and days holding live ticks, are
    simulated (to carry the path on) but not written. A different instrument list, seed, model or volume is refused:
    its days would be another market under the same ids."""
    end = end or datetime.now(UTC).date()
    params = {
        "instruments": list(instruments),
        "events_per_day": events_per_day,
        "seed": seed,
        "model": model,
        "volume": volume,
    }
    manifest, (history_dates, live_dates) = read_manifest(lake), stored_dates(lake)
    first, done = end - timedelta(days=days), None
    if manifest and history_dates:
        if manifest["params"] != params:
            raise ValueError(
                f"the stored history was simulated with {manifest['params']}, not {params}: use those "
                "settings, or another instance (NAUTILUS_INSTANCE) for another market"
            )
        first, done = date.fromisoformat(manifest["first_day"]), date.fromisoformat(manifest["complete_through"])
        if first > end - timedelta(days=days):
            print(f"[history] the stored history starts on {first}; it is extended, not moved earlier", flush=True)
    days = max(0, (end - first).days)
    skip = set(live_dates)
    if done:
        skip |= {first + timedelta(days=k) for k in range((done - first).days + 1)}
    totals = {TRADES.name: 0, QUOTES.name: 0, "fills": 0}
    pending = {TRADES.name: [], QUOTES.name: []}
    t0 = time.time()

    def flush(label):
        for feed in (TRADES, QUOTES):
            if pending[feed.name]:
                table = pa.concat_tables(pending[feed.name])
                added, _, _ = sinks.write_delta(lake, feed, table, f"history-{label}")
                totals[feed.name] += added
                pending[feed.name] = []
                if clickhouse is not None and clickhouse_days is not None:
                    table = table.filter(
                        pc.greater_equal(table["date"], pa.scalar(end - timedelta(days=clickhouse_days)))
                    )
                if clickhouse is not None and table.num_rows:
                    with clickhouse.session() as c:
                        sinks.write_clickhouse(c, feed, table)
                        if feed.bars:
                            dates = pc.unique(table["date"]).to_pylist()
                            version, spans = sinks.recompute_bars_for_dates(
                                c, min(dates), max(dates), f"history-{label}"
                            )
                    if feed.bars and pulsar is not None:  # the streaming products learn of the history's bars
                        with pulsar.client() as client:
                            changes.announce_once(client, f"history-{label}", version, spans=spans)

    written = unflushed = 0
    for n, (day, trades, quotes) in enumerate(
        simulate_days(instruments, first, days, events_per_day, seed, model, volume), start=1
    ):
        if day not in skip:
            written, unflushed = written + 1, unflushed + 1
            pending[TRADES.name].append(_with_provenance(TRADES, trades, day))
            pending[QUOTES.name].append(_with_provenance(QUOTES, quotes, day))
            if postgres is not None:
                totals["fills"] += store_fills(
                    postgres, model_fills(trades, seed=seed + day.toordinal(), **HISTORY_MODEL)
                )
        if unflushed and (unflushed == days_per_commit or n == days):
            flush(day)
            unflushed = 0
            write_manifest(lake, params, first, day)
            print(
                f"[history] {n}/{days} days ({written} written, {n - written} already stored or live: "
                f"{totals}) in {time.time() - t0:.0f}s",
                flush=True,
            )
    return totals


def write_manifest(lake: LakeResource, params: dict, first: date, complete_through: date) -> None:
    """After a flush: every day up to complete_through is stored (trades, quotes, fills)."""
    body = {"params": params, "first_day": first.isoformat(), "complete_through": complete_through.isoformat()}
    lake.s3_client().put_object(Bucket=lake.bucket, Key=MANIFEST, Body=json.dumps(body).encode())


HISTORY_MODEL = {"every": 100, "notional": 2_000.0}  # positions stay a sensible multiple of NAV over years


def store_fills(postgres, fills: pa.Table) -> int:
    """Fills straight into the portfolio store (idempotent on fill_id)."""
    from nautilus_assets.portfolio import store

    rows = [
        (
            r["fill_id"],
            r["portfolio_id"],
            r["instrument_id"],
            r["quantity"],
            r["price"],
            r["fee"],
            r["ts_event"],
            None,
            "history",
        )
        for r in fills.to_pylist()
    ]
    with postgres.connect() as conn:
        store.ensure_schema(conn)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO portfolio.fills VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (fill_id) DO NOTHING",
                rows,
            )
            added = cur.rowcount
        conn.commit()
    return max(added, 0)
