"""The `market_microstructure` product: VPIN (bulk volume classification and aggressor-side variants) and the
bucket order imbalance per instrument, in ClickHouse `microstructure.vpin_buckets`.

A long-lived run follows the bars' change feed. Each batch continues from kept states (`vpin_states`: the
VpinState of each instrument before the first bar of each UTC day and before its latest bar): the bars from
the first changed minute are replayed from the latest state at or before it, so late trades are honoured and
the result is exactly that of one pass over the full history, while a live batch replays a bar or two.
Daily parameters come from past trades in the lake."""
import json
import time
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from nautilus_assets import current
from nautilus_assets.market_data.assets import BARS_KEY, TRADES_KEY
from nautilus_assets.market_data.bars import BARS, changed_since, since_condition
from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.market_data.sinks import bronze_table
from nautilus_assets.product import Product, png_markdown
from nautilus_assets.streaming import Changes, FollowConfig, follow, follow_job, log_batch
from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource
from resources.pulsar import PulsarResource
from resources.redis import RedisResource
from resources.topics import BARS_CHANGES

from .params import ADV_DAYS, daily_params
from .vpin import VpinState

PRODUCT = Product("market_microstructure", "microstructure", ("team:microstructure",), "vpin-microstructure",
                  fail_after=timedelta(minutes=2), warn_after=timedelta(minutes=1),
                  latency_target_ms=0.1, availability_target=0.9999)
KEY = dg.AssetKey(["market_microstructure", "vpin"])
DB = "microstructure"
VARIANTS = ("bvc", "aggressor")
WINDOW = 50

DDL = [f"CREATE DATABASE IF NOT EXISTS {DB}",
       f"""CREATE TABLE IF NOT EXISTS {DB}.vpin_buckets (instrument_id LowCardinality(String),
           variant LowCardinality(String), bucket_seq UInt64, date Date, end_minute DateTime('UTC'), close Float64,
           buy Float64, sell Float64, bucket_volume Float64, order_imbalance Float64, vpin Float64, sigma Float64,
           version UInt64, run_id String)
           ENGINE = ReplacingMergeTree(version) ORDER BY (instrument_id, variant, bucket_seq)""",
       f"ALTER TABLE {DB}.vpin_buckets ADD COLUMN IF NOT EXISTS batch_id String ALIAS run_id",  # row provenance
       f"""CREATE TABLE IF NOT EXISTS {DB}.vpin_states (instrument_id LowCardinality(String),
           minute DateTime('UTC'), state String, version UInt64)
           ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(minute) ORDER BY (instrument_id, minute)""",
       f"""CREATE TABLE IF NOT EXISTS {DB}.vpin_params (instrument_id LowCardinality(String), date Date,
           sigma Float64, adv Float64, bucket_volume Float64, days_used UInt32, version UInt64)
           ENGINE = ReplacingMergeTree(version) ORDER BY (instrument_id, date)"""]

COLUMNS = [
    ("instrument_id", "LowCardinality(String)", "Instrument", [(BARS_KEY, "instrument_id")]),
    ("variant", "LowCardinality(String)", "bvc (bulk volume classification) or aggressor (trades' side)", []),
    ("bucket_seq", "UInt64", "Bucket number in the instrument's history", []),
    ("date", "Date", "UTC date the bucket completed", [(BARS_KEY, "minute")]),
    ("end_minute", "DateTime('UTC')", "Bar in which the bucket completed", [(BARS_KEY, "minute")]),
    ("close", "Float64", "Close of that bar", [(BARS_KEY, "close")]),
    ("buy", "Float64", "Buy volume in the bucket", [(BARS_KEY, "close"), (BARS_KEY, "volume"), (BARS_KEY, "buy_volume")]),
    ("sell", "Float64", "Sell volume in the bucket", [(BARS_KEY, "close"), (BARS_KEY, "volume"), (BARS_KEY, "sell_volume")]),
    ("bucket_volume", "Float64", "20-day average daily volume / 50 (fixed for the day)", [(TRADES_KEY, "size")]),
    ("order_imbalance", "Float64", "(buy − sell) / (buy + sell)", [(BARS_KEY, "volume")]),
    ("vpin", "Float64", "Σ|sell − buy| / (50 · bucket volume) over the last 50 buckets (NaN before 50)",
     [(BARS_KEY, "close"), (BARS_KEY, "volume")]),
    ("sigma", "Float64", "Std of 1-minute price changes over the previous trading day", [(TRADES_KEY, "price")]),
    ("version", "UInt64", "Row version; the latest wins", []),
    ("run_id", "String", "Run (micro-batch) that computed the row", []),
]
SCHEMA = dg.TableSchema(columns=[dg.TableColumn(n, t, description=d) for n, t, d, _ in COLUMNS])
LINEAGE = dg.TableColumnLineage(deps_by_column={
    n: [dg.TableColumnDep(asset_key=k, column_name=c) for k, c in deps] for n, _, _, deps in COLUMNS if deps})


NO_PARAMS_RECHECK_S = 300   # a day without parameters (no earlier trades in the lake) is looked up again after this


def params_for(ch: ClickHouseResource, lake: LakeResource, instrument: str, days: list[date],
               memo: dict | None = None) -> dict:
    """{day: {sigma, bucket_volume}} for the days that have parameters. A day's parameters come from past days
    only and are fixed for it, so a long-lived run remembers them in `memo` ((instrument, day) -> (params or None,
    when looked up)); it also remembers for NO_PARAMS_RECHECK_S that a day has none, instead of reading the lake
    for them (inside the batch's ClickHouse session) in every batch."""
    memo = {} if memo is None else memo
    now = time.monotonic()
    todo = [d for d in days if (instrument, d) not in memo
            or (memo[(instrument, d)][0] is None and now - memo[(instrument, d)][1] > NO_PARAMS_RECHECK_S)]
    found = _params_for(ch, lake, instrument, todo) if todo else {}
    for d in todo:
        memo[(instrument, d)] = (found.get(d), now)
    return {d: memo[(instrument, d)][0] for d in days if memo[(instrument, d)][0] is not None}


def _params_for(ch: ClickHouseResource, lake: LakeResource, instrument: str, days: list[date]) -> dict:
    """Stored parameters, else computed (and stored) from the lake's trades of the 20 trading days before each
    day, read once for all the missing days."""
    with ch.session() as c:
        rows = c.query(f"SELECT date, sigma, bucket_volume FROM {DB}.vpin_params FINAL WHERE instrument_id = %(i)s "
                       "AND date IN %(d)s", parameters={"i": instrument, "d": days}).result_rows
    out = {d: {"sigma": sg, "bucket_volume": bv} for d, sg, bv in rows}
    missing = [d for d in days if d not in out]
    dt = lake.table(bronze_table(TRADES)) if missing else None
    if dt is None:
        return out
    span = range(1, (max(missing) - min(missing)).days + 3 * ADV_DAYS)   # 20 trading days (and gaps) before each
    dates = sorted({(max(missing) - timedelta(days=k)).isoformat() for k in span})
    trades = dt.to_pyarrow_dataset(partitions=[("date", "in", dates)]).to_table(
        columns=["instrument_id", "price", "size", "ts_event"], filter=pc.field("instrument_id") == instrument).to_pandas()
    new = pd.concat([daily_params(trades, d) for d in missing], ignore_index=True)
    new = new[new["bucket_volume"] > 0]
    if len(new):
        with ch.session() as c:
            c.insert_df(f"{DB}.vpin_params", new.assign(version=time.time_ns()))
    out.update({r.date: {"sigma": r.sigma, "bucket_volume": r.bucket_volume} for r in new.itertuples()})
    return out


def _checkpoints(c, since: dict) -> dict[str, tuple[pd.Timestamp, dict]]:
    """Per instrument, the latest state at or before its `since` minute (the state before that minute's bar):
    {instrument: (its minute, states by variant)}, for all the instruments in one query."""
    cond, params = since_condition(since, op="<=")
    rows = c.query(f"SELECT instrument_id, toUnixTimestamp(minute), state FROM {DB}.vpin_states FINAL WHERE {cond} "
                   "ORDER BY instrument_id, minute DESC LIMIT 1 BY instrument_id", parameters=params).result_rows
    return {str(i): (pd.Timestamp(m, unit="s"), json.loads(st)) for i, m, st in rows}


def _state_minutes(c, start: dict) -> dict[str, set[pd.Timestamp]]:
    """Per instrument, the minutes after its `start` that hold a state: the replay rewrites each (a late bar makes
    them stale)."""
    cond, params = since_condition(start, op=">")
    rows = c.query(f"SELECT DISTINCT instrument_id, toUnixTimestamp(minute) FROM {DB}.vpin_states WHERE {cond}",
                   parameters=params).result_rows
    out: dict[str, set] = {}
    for i, m in rows:
        out.setdefault(str(i), set()).add(pd.Timestamp(m, unit="s"))
    return out


def replay(ch: ClickHouseResource, lake: LakeResource, since: dict, run_id: str, log=print,
           memo: dict | None = None, sink: list | None = None) -> tuple[dict, dict]:
    """Recompute each instrument's buckets from its latest state at or before its `since` minute onwards.

    States are kept before the first bar of each UTC day, before the latest bar (the minute still filling, which
    the next batch touches again: it replays from there, one or two bars) and at every minute that held one
    already in the replayed span (rewritten, so none goes stale). All the instruments share each read and each
    write (five round trips a batch, whatever their number). Returns (counts, first bucket_seq written per
    instrument); `sink` receives the bucket frames written."""
    since = {i: pd.Timestamp(m) for i, m in since.items()}
    stats, firsts = {"instruments": len(since), "buckets_written": 0}, {}
    with ch.session() as c:
        kept = _checkpoints(c, since)
        start = {i: kept[i][0] if i in kept else pd.Timestamp("1970-01-01") for i in since}
        cuts_after = _state_minutes(c, start)
        cond, params = since_condition(start)
        all_bars = c.query_df(f"SELECT * FROM {BARS} WHERE {cond} ORDER BY instrument_id, minute", parameters=params)
    out, checkpoints, version = [], [], time.time_ns()
    if all_bars.empty:   # chDB answers an empty result with a frame without columns
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
            seg = np.cumsum(g["minute"].isin(cuts).to_numpy() | (np.arange(len(g)) == 0))   # segments start at cuts
            for _, part in g.groupby(seg, sort=True):
                checkpoints.append({"instrument_id": instrument, "minute": part["minute"].iloc[0], "version": version,
                                    "state": json.dumps({v: st[v].to_dict() for v in VARIANTS})})
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
    with ch.session() as c:
        c.insert_df(f"{DB}.vpin_states", pd.DataFrame(checkpoints))
        if out:
            c.insert_df(f"{DB}.vpin_buckets", pd.concat(out, ignore_index=True))
    if sink is not None:
        sink.extend(out)
    return stats, firsts


def _advance(st: dict, g: pd.DataFrame, p: dict, instrument: str, day, version: int, run_id: str) -> list:
    """Pour bars `g` (one day's, in time order) into both variants' states; the completed buckets as frames."""
    close, vol = g["close"].to_numpy(np.float64), g["volume"].to_numpy(np.float64)
    aggr_vol = (g["buy_volume"] + g["sell_volume"]).to_numpy(np.float64)
    out = []
    for variant, res in (("bvc", st["bvc"].advance(close, vol, p["bucket_volume"], sigma=p["sigma"])),
                         ("aggressor", st["aggressor"].advance(close, aggr_vol, p["bucket_volume"],
                                                               buy=g["buy_volume"].to_numpy(np.float64)))):
        idx = res.pop("bar_index")
        df = pd.DataFrame(res)
        df["end_minute"] = g["minute"].to_numpy()[idx]
        df["close"] = close[idx]
        out.append(df.assign(instrument_id=instrument, variant=variant, date=day, sigma=p["sigma"],
                             version=version, run_id=run_id))
    return out


def plot(ch: ClickHouseResource, instrument: str) -> dg.MetadataValue | None:
    """Markdown with a PNG of VPIN against price for an instrument's latest 400 buckets (a primary-key range)."""
    df = ch.query_df(f"SELECT instrument_id, end_minute, close, vpin FROM {DB}.vpin_buckets FINAL "
                     "WHERE instrument_id = %(i)s AND variant = 'bvc' ORDER BY bucket_seq DESC LIMIT 400",
                     parameters={"i": instrument})
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
    exist (`warm`, before a run's first batch)."""
    if ch.query_df(f"SELECT 1 FROM {DB}.vpin_states LIMIT 1").empty:
        return changed_since(ch, 0)
    return {}


def check_batch(ch: ClickHouseResource, firsts: dict) -> tuple[int, int]:
    """(inexact buckets, VPIN outside [0, 1]) among the buckets the batch wrote: primary-key ranges."""
    if not firsts:
        return 0, 0
    cond = " OR ".join(f"(instrument_id = %(i{k})s AND bucket_seq >= %(s{k})s)" for k in range(len(firsts)))
    params = {p: v for k, (i, q) in enumerate(sorted(firsts.items())) for p, v in ((f"i{k}", i), (f"s{k}", q))}
    with ch.session() as c:
        inexact, outside = c.query(
            f"SELECT countIf(abs(buy + sell - bucket_volume) > 1e-6 * bucket_volume OR buy < -1e-9 OR sell < -1e-9), "
            f"countIf(vpin < 0 OR vpin > 1) FROM {DB}.vpin_buckets FINAL WHERE {cond}", parameters=params).first_row
    return int(inexact), int(outside)


PLOT_EVERY_S = 60   # a chart a minute, not a chart a batch


@dg.multi_asset(
    specs=[dg.AssetSpec(
        KEY, deps=[BARS_KEY, TRADES_KEY], group_name=PRODUCT.group, owners=list(PRODUCT.owners),
        kinds={"clickhouse", "python"}, code_version="1", freshness_policy=PRODUCT.freshness, skippable=True,
        description="VPIN (Easley, López de Prado, O'Hara 2012) per 50-bucket window with bulk volume "
                    "classification and with the trades' aggressor side, plus the bucket order imbalance, in "
                    f"ClickHouse {DB}.vpin_buckets (read with FINAL). A long-lived run follows the bars' change feed "
                    f"({BARS_CHANGES}); each batch continues from the state kept before the first minute that "
                    "changed (the open bucket and the window), not from midnight. Sigma and bucket volume come from "
                    "past days only and are fixed for the day.",
        metadata={"dagster/column_schema": SCHEMA, "dagster/table_name": f"{DB}.vpin_buckets", **PRODUCT.metadata})],
    name="market_microstructure__vpin", pool="clickhouse", can_subset=True,   # each batch is logged as it commits
    check_specs=[dg.AssetCheckSpec("buckets_are_exact", asset=KEY,
                                   description="Every bucket the batch wrote holds exactly its bucket volume, buy and "
                                               "sell >= 0"),
                 dg.AssetCheckSpec("vpin_in_unit_interval", asset=KEY, description="0 <= VPIN <= 1")])
def vpin_buckets(context: dg.AssetExecutionContext, config: FollowConfig, clickhouse: ClickHouseResource,
                 lake: LakeResource, pulsar: PulsarResource, redis: RedisResource):
    last_plot, params = [0.0], {}   # params: the run's memo of each day's VPIN parameters (params_for)
    reported: set[str] = set()

    def log_once(msg: str) -> None:   # "no parameters for the day" once a run, not once a batch
        if msg not in reported:
            reported.add(msg)
            context.log.info(msg)

    def apply(batch: Changes) -> None:
        since = dict(batch.since)
        if batch.first:
            for inst, m in bootstrap(clickhouse).items():
                since[inst] = min(since.get(inst, m), m)
        if not since:
            return
        with clickhouse.session():   # the batch's reads, writes and checks in this run's one session
            written: list[pd.DataFrame] = []
            stats, firsts = replay(clickhouse, lake, since, batch.batch_id, log=log_once, memo=params, sink=written)
            inexact, outside = check_batch(clickhouse, firsts)
        if written:   # the latest bucket per instrument and variant, committed with the batch
            current.publish(redis, "vpin", pd.concat(written, ignore_index=True), log=context.log.warning)
        meta = {**stats, "upstream_batches": len(batch.upstream),
                "first_changed_minute": min(since.values()).isoformat(), "dagster/column_lineage": LINEAGE}
        later = None
        if firsts and time.monotonic() - last_plot[0] >= PLOT_EVERY_S:
            last_plot[0], instrument = time.monotonic(), min(firsts)

            def later() -> dict:
                chart = plot(clickhouse, instrument)
                return {"vpin_vs_price": chart} if chart else {}
        log_batch(context, KEY, batch, meta, {"buckets_are_exact": (inexact == 0, {"inexact": inexact}),
                                              "vpin_in_unit_interval": (outside == 0, {"outside": outside})}, later)
        batch.record(lambda: PRODUCT.announce(batch.client, KEY, batch.batch_id, **stats))

    follow(context, config, pulsar, SUBSCRIPTION, apply, warm=lambda: warm(clickhouse, lake, params))
    yield from ()


def warm(ch: ClickHouseResource, lake: LakeResource, memo: dict) -> None:
    """A run's start-up before it takes the subscription over: the tables, today's parameters of every instrument
    with bars today (a read of the lake where none are stored yet), the plotting library."""
    ch.ensure(DDL)
    today = pd.Timestamp.now(tz="UTC").date()
    with ch.session() as c:
        instruments = c.query(f"SELECT DISTINCT instrument_id FROM {BARS} WHERE minute >= "
                              "toStartOfDay(now('UTC'))").result_rows
    for (inst,) in instruments:
        params_for(ch, lake, str(inst), [today], memo)
    import matplotlib.pyplot  # noqa: F401


SUBSCRIPTION = "nautilus-microstructure"
JOB = follow_job("market_microstructure", [KEY])
ASSETS = [vpin_buckets]
