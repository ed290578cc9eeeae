"""The `market_microstructure` product: VPIN (bulk volume classification and aggressor-side variants) and the
bucket order imbalance per instrument, in ClickHouse `microstructure.vpin_buckets`.

A long-lived run follows the bars' change feed. Each batch continues from kept states (`vpin_states`: the
VpinState of each instrument before the first bar of each UTC day and before its latest bar): the bars from
the first changed minute are replayed from the latest state at or before it, so late trades are honoured and
the result is exactly that of one pass over the full history, while a live batch replays a bar or two.
Daily parameters come from past trades in the lake.

The same run follows the order book's change feed too: per instrument and minute, spread, depth imbalance, microprice
and order-flow imbalance (book.py) from the rebuilt depth-10 books, in `microstructure.book_1m`."""

import json
import time
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from nautilus_assets import current
from nautilus_assets.market_data import changes
from nautilus_assets.market_data.assets import BARS_KEY, DEPTH10_KEY, TRADES_KEY
from nautilus_assets.market_data.bars import changed_since
from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.market_data.sinks import bronze_table
from nautilus_assets.product import Product, png_markdown
from nautilus_assets.streaming import Changes, FollowConfig, follow, follow_job, log_batch
from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource
from resources.pulsar import PulsarResource
from resources.redis import RedisResource
from resources.topics import BARS_CHANGES, BOOK_CHANGES

from . import book, store
from .params import ADV_DAYS, daily_params
from .vpin import VpinState

PRODUCT = Product(
    "market_microstructure",
    "microstructure",
    ("team:microstructure",),
    "vpin-microstructure",
    fail_after=timedelta(minutes=2),
    warn_after=timedelta(minutes=1),
    latency_target_ms=0.1,
    availability_target=0.9999,
)
KEY = dg.AssetKey(["market_microstructure", "vpin"])
BOOK_KEY = dg.AssetKey(["market_microstructure", "book_1m"])
VARIANTS = ("bvc", "aggressor")
WINDOW = 50

NO_PARAMS_RECHECK_S = 300  # a day without parameters (no earlier trades in the lake) is looked up again after this


def params_for(
    ch: ClickHouseResource, lake: LakeResource, instrument: str, days: list[date], memo: dict | None = None
) -> dict:
    """{day: {sigma, bucket_volume}} for the days that have parameters. A day's parameters come from past days
    only and are fixed for it, so a long-lived run remembers them in `memo` ((instrument, day) -> (params or None,
    when looked up)); it also remembers for NO_PARAMS_RECHECK_S that a day has none, instead of reading the lake
    for them (inside the batch's ClickHouse session) in every batch."""
    memo = {} if memo is None else memo
    now = time.monotonic()
    todo = [
        d
        for d in days
        if (instrument, d) not in memo
        or (memo[(instrument, d)][0] is None and now - memo[(instrument, d)][1] > NO_PARAMS_RECHECK_S)
    ]
    found = _params_for(ch, lake, instrument, todo) if todo else {}
    for d in todo:
        memo[(instrument, d)] = (found.get(d), now)
    return {d: memo[(instrument, d)][0] for d in days if memo[(instrument, d)][0] is not None}


def _params_for(ch: ClickHouseResource, lake: LakeResource, instrument: str, days: list[date]) -> dict:
    """Stored parameters, else computed (and stored) from the lake's trades of the 20 trading days before each
    day, read once for all the missing days."""
    out = store.stored_params(ch, instrument, days)
    missing = [d for d in days if d not in out]
    dt = lake.table(bronze_table(TRADES)) if missing else None
    if dt is None:
        return out
    span = range(1, (max(missing) - min(missing)).days + 3 * ADV_DAYS)  # 20 trading days (and gaps) before each
    dates = sorted({(max(missing) - timedelta(days=k)).isoformat() for k in span})
    trades = (
        dt.to_pyarrow_dataset(partitions=[("date", "in", dates)])
        .to_table(
            columns=["instrument_id", "price", "size", "ts_event"], filter=pc.field("instrument_id") == instrument
        )
        .to_pandas()
    )
    new = pd.concat([daily_params(trades, d) for d in missing], ignore_index=True)
    new = new[new["bucket_volume"] > 0]
    if len(new):
        store.write_params(ch, new.assign(version=time.time_ns()))
    out.update({r.date: {"sigma": r.sigma, "bucket_volume": r.bucket_volume} for r in new.itertuples()})
    return out


def replay(
    ch: ClickHouseResource,
    lake: LakeResource,
    since: dict,
    run_id: str,
    log=print,
    memo: dict | None = None,
    sink: list | None = None,
) -> tuple[dict, dict]:
    """Recompute each instrument's buckets from its latest state at or before its `since` minute onwards.

    States are kept before the first bar of each UTC day, before the latest bar (the minute still filling, which
    the next batch touches again: it replays from there, one or two bars) and at every minute that held one
    already in the replayed span (rewritten, so none goes stale). All the instruments share each read and each
    write (five round trips a batch, whatever their number). Returns (counts, first bucket_seq written per
    instrument); `sink` receives the bucket frames written."""
    since = {i: pd.Timestamp(m) for i, m in since.items()}
    stats, firsts = {"instruments": len(since), "buckets_written": 0}, {}
    with ch.session():  # the three reads in one session
        kept = store.checkpoints(ch, since)
        start = {i: kept[i][0] if i in kept else pd.Timestamp("1970-01-01") for i in since}
        cuts_after = store.state_minutes(ch, start)
        all_bars = store.bars_from(ch, start)
    out, checkpoints, version = [], [], time.time_ns()
    if all_bars.empty:  # chDB answers an empty result with a frame without columns
        return stats, firsts
    all_bars["instrument_id"] = all_bars["instrument_id"].astype(str)
    for instrument, bars in all_bars.groupby("instrument_id", sort=True):
        m0, states = kept.get(instrument, (None, None))
        bars = bars.reset_index(drop=True)
        st = {v: VpinState.from_dict(states[v]) if states else VpinState(window=WINDOW) for v in VARIANTS}
        first_seq = st["bvc"].buckets
        bars["minute"] = pd.to_datetime(bars["minute"]).dt.tz_localize(None)
        bars["date"] = bars["minute"].dt.date
        cuts = cuts_after.get(instrument, set()) | {bars["minute"].iloc[-1]}
        if m0 is not None:
            cuts.add(m0)
        params = params_for(ch, lake, instrument, sorted(bars["date"].unique()), memo)
        written = 0
        for day, g in bars.groupby("date", sort=True):
            p = params.get(day)
            seg = np.cumsum(g["minute"].isin(cuts).to_numpy() | (np.arange(len(g)) == 0))  # segments start at cuts
            for _, part in g.groupby(seg, sort=True):
                checkpoints.append(
                    {
                        "instrument_id": instrument,
                        "minute": part["minute"].iloc[0],
                        "version": version,
                        "state": json.dumps({v: st[v].to_dict() for v in VARIANTS}),
                    }
                )
                if p is None:
                    continue
                frames = _advance(st, part, p, instrument, day, version, run_id)
                written += sum(len(d) for d in frames)
                out.extend(frames)
            if p is None:
                log(f"{instrument} {day}: no earlier trades in the lake, VPIN undefined for the day")
        stats["buckets_written"] += written
        if written:
            firsts[instrument] = first_seq
    store.write_replay(ch, pd.DataFrame(checkpoints), pd.concat(out, ignore_index=True) if out else None)
    if sink is not None:
        sink.extend(out)
    return stats, firsts


def _advance(st: dict, g: pd.DataFrame, p: dict, instrument: str, day, version: int, run_id: str) -> list:
    """Pour bars `g` (one day's, in time order) into both variants' states; the completed buckets as frames."""
    close, vol = g["close"].to_numpy(np.float64), g["volume"].to_numpy(np.float64)
    aggr_vol = (g["buy_volume"] + g["sell_volume"]).to_numpy(np.float64)
    out = []
    for variant, res in (
        ("bvc", st["bvc"].advance(close, vol, p["bucket_volume"], sigma=p["sigma"])),
        (
            "aggressor",
            st["aggressor"].advance(close, aggr_vol, p["bucket_volume"], buy=g["buy_volume"].to_numpy(np.float64)),
        ),
    ):
        idx = res.pop("bar_index")
        df = pd.DataFrame(res)
        df["end_minute"] = g["minute"].to_numpy()[idx]
        df["close"] = close[idx]
        out.append(
            df.assign(
                instrument_id=instrument, variant=variant, date=day, sigma=p["sigma"], version=version, run_id=run_id
            )
        )
    return out


def plot(ch: ClickHouseResource, instrument: str) -> dg.MetadataValue | None:
    """Markdown with a PNG of VPIN against price for an instrument's latest 400 buckets (a primary-key range)."""
    df = store.latest_buckets(ch, instrument, 400)
    if df.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = df.iloc[::-1]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(df["end_minute"], df["close"], color="tab:blue", lw=1)
    ax.set_ylabel(f"{df['instrument_id'].iloc[0]} price", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(df["end_minute"], df["vpin"], color="tab:red", lw=1)
    ax2.set_ylabel("VPIN (BVC, 50 buckets)", color="tab:red")
    ax.set_title("VPIN against price, latest buckets")
    fig.autofmt_xdate()
    return png_markdown(fig, "VPIN against price")


def bootstrap(ch: ClickHouseResource) -> dict:
    """Every instrument's first bar minute when the product holds no state yet (see analytics.bootstrap); the tables
    exist (the set-up made them)."""
    return {} if store.has_states(ch) else changed_since(ch, 0)


def _spec(key: dg.AssetKey, deps: list, description: str, table) -> dg.AssetSpec:
    """One of the product's stored assets (the same group, owners, kinds and SLA)."""
    return dg.AssetSpec(
        key,
        deps=deps,
        group_name=PRODUCT.group,
        owners=list(PRODUCT.owners),
        kinds={"clickhouse", "python"},
        code_version="1",
        freshness_policy=PRODUCT.freshness,
        skippable=True,
        description=description,
        metadata=PRODUCT.stored_in(table),
    )


PLOT_EVERY_S = 60  # a chart a minute, not a chart a batch


@dg.multi_asset(
    specs=[
        _spec(
            KEY,
            [BARS_KEY, TRADES_KEY],
            "VPIN (Easley, López de Prado, O'Hara 2012) per 50-bucket window with bulk volume "
            "classification and with the trades' aggressor side, plus the bucket order imbalance, in "
            f"ClickHouse {store.BUCKETS.name} (read with FINAL). A long-lived run follows the bars' change "
            f"feed ({BARS_CHANGES}); each batch continues from the state kept before the first minute that "
            "changed (the open bucket and the window), not from midnight. Sigma and bucket volume come from "
            "past days only and are fixed for the day.",
            store.BUCKETS,
        ),
        _spec(
            BOOK_KEY,
            [DEPTH10_KEY],
            "Order-book measures per instrument and UTC minute from the rebuilt depth-10 books: "
            "time-weighted spread, relative spread and depth imbalance, level-1 imbalance, size-weighted mid "
            "(microprice), and the order-flow imbalance of Cont, Kukanov and Stoikov (2014) with their depth D, in "
            f"ClickHouse {store.BOOK_1M.name} (read with FINAL). The same run follows the book's change feed "
            f"({BOOK_CHANGES}): each batch recomputes the minutes that changed from their stored book updates and "
            "the update before them (book.py), whatever the table holds.",
            store.BOOK_1M,
        ),
    ],
    name="market_microstructure__vpin",
    pool="clickhouse",
    can_subset=True,  # each batch is logged as it commits
    check_specs=[
        dg.AssetCheckSpec(
            "buckets_are_exact",
            asset=KEY,
            description="Every bucket the batch wrote holds exactly its bucket volume, buy and sell >= 0",
        ),
        dg.AssetCheckSpec("vpin_in_unit_interval", asset=KEY, description="0 <= VPIN <= 1"),
        dg.AssetCheckSpec(
            "book_measures_in_range",
            asset=BOOK_KEY,
            description="In the minutes the batch wrote: spreads >= 0, imbalances within [-1, 1], microprice within "
            "the spread",
        ),
    ],
)
def vpin_buckets(
    context: dg.AssetExecutionContext,
    config: FollowConfig,
    clickhouse: ClickHouseResource,
    lake: LakeResource,
    pulsar: PulsarResource,
    redis: RedisResource,
):
    last_plot, params = [0.0], {}  # params: the run's memo of each day's VPIN parameters (params_for)
    reported: set[str] = set()

    def log_once(msg: str) -> None:  # "no parameters for the day" once a run, not once a batch
        if msg not in reported:
            reported.add(msg)
            context.log.info(msg)

    def apply_book(batch: Changes) -> None:
        since, upstream, bad = changes.since_by_instrument(
            [m.data() for m in batch.others if m.topic_name().endswith(BOOK_CHANGES.split("://", 1)[1])],
            changes.BOOK_SCHEMA,
        )
        if bad:
            context.log.warning(f"skipped {bad} messages on {BOOK_CHANGES} that are not announcements")
        if not since:
            return
        first = {i: int(m.timestamp()) for i, m in since.items()}
        states, previous = store.book_inputs(clickhouse, first)
        rows = book.minute_measures(states, previous if previous.num_rows else None)
        store.write_book(clickhouse, rows, batch.batch_id, time.time_ns())
        out_of_range = store.check_book(clickhouse, first)
        meta = {
            "minutes_written": rows.num_rows,
            "book_updates_read": states.num_rows,
            "upstream_batches": len(upstream),
            "first_changed_minute": min(since.values()).isoformat(),
            "dagster/column_lineage": store.BOOK_1M.lineage,
        }
        log_batch(
            context,
            BOOK_KEY,
            batch,
            meta,
            {"book_measures_in_range": (out_of_range == 0, {"out_of_range": out_of_range})},
        )

    def apply(batch: Changes) -> None:
        apply_book(batch)
        since = dict(batch.since)
        if batch.first:
            for inst, m in bootstrap(clickhouse).items():
                since[inst] = min(since.get(inst, m), m)
        if not since:
            return
        with clickhouse.session():  # the batch's reads, writes and checks in this run's one session
            written: list[pd.DataFrame] = []
            stats, firsts = replay(clickhouse, lake, since, batch.batch_id, log=log_once, memo=params, sink=written)
            inexact, outside = store.check_batch(clickhouse, firsts)
        if written:  # the latest bucket per instrument and variant, committed with the batch
            current.publish(redis, "vpin", pd.concat(written, ignore_index=True), log=context.log.warning)
        meta = {
            **stats,
            "upstream_batches": len(batch.upstream),
            "first_changed_minute": min(since.values()).isoformat(),
            "dagster/column_lineage": store.BUCKETS.lineage,
        }
        later = None
        if firsts and time.monotonic() - last_plot[0] >= PLOT_EVERY_S:
            last_plot[0], instrument = time.monotonic(), min(firsts)

            def later() -> dict:
                chart = plot(clickhouse, instrument)
                return {"vpin_vs_price": chart} if chart else {}

        log_batch(
            context,
            KEY,
            batch,
            meta,
            {
                "buckets_are_exact": (inexact == 0, {"inexact": inexact}),
                "vpin_in_unit_interval": (outside == 0, {"outside": outside}),
            },
            later,
        )
        batch.record(lambda: PRODUCT.announce(batch.client, KEY, batch.batch_id, **stats))

    follow(
        context,
        config,
        pulsar,
        SUBSCRIPTION,
        apply,
        topics=(BOOK_CHANGES,),
        warm=lambda: warm(clickhouse, lake, params),
    )
    yield from ()


def warm(ch: ClickHouseResource, lake: LakeResource, memo: dict) -> None:
    """A run's start-up before it takes the subscription over: today's parameters of every instrument with bars
    today (a read of the lake where none are stored yet), the plotting library."""
    today = pd.Timestamp.now(tz="UTC").date()
    for inst in store.instruments_today(ch):
        params_for(ch, lake, inst, [today], memo)
    import matplotlib.pyplot  # noqa: F401


SUBSCRIPTION = "nautilus-microstructure"
JOB = follow_job("market_microstructure", vpin_buckets)
ASSETS = [vpin_buckets]
