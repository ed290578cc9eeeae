"""The `market_microstructure` product: VPIN (bulk volume classification and aggressor-side variants) and the
bucket order imbalance per instrument, in ClickHouse `microstructure.vpin_buckets`.

Each run continues from checkpoints: the VpinState of each instrument at every UTC midnight. Bars (re)written
since the last run are replayed from the checkpoint of their day, so late trades are honoured and the result
is exactly that of one pass over the full history. Daily parameters come from past trades in the lake."""
import json
import time
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from nautilus_assets.market_data.assets import BARS_KEY, TRADES_KEY
from nautilus_assets.market_data.bars import bars_from, changed_since
from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.market_data.sinks import bronze_table
from nautilus_assets.product import Product, follows_stream, png_markdown
from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource
from resources.pulsar import PulsarResource

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
       f"""CREATE TABLE IF NOT EXISTS {DB}.vpin_checkpoints (instrument_id LowCardinality(String), date Date,
           state String, version UInt64) ENGINE = ReplacingMergeTree(version) ORDER BY (instrument_id, date)""",
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


def params_for(ch: ClickHouseResource, lake: LakeResource, instrument: str, days: list[date]) -> dict:
    """{day: {sigma, bucket_volume}} for the days that have parameters: stored ones, else computed (and stored)
    from the lake's trades of the 20 trading days before each day, read once for all the missing days."""
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


def _checkpoint(ch: ClickHouseResource, instrument: str, day: date) -> tuple[date | None, dict | None]:
    """The latest checkpoint at or before `day`: (its date, states by variant)."""
    with ch.session() as c:
        row = c.query(f"SELECT date, state FROM {DB}.vpin_checkpoints FINAL WHERE instrument_id = %(i)s "
                      "AND date <= %(d)s ORDER BY date DESC LIMIT 1", parameters={"i": instrument, "d": day}).result_rows
    return (row[0][0], json.loads(row[0][1])) if row else (None, None)


def replay(ch: ClickHouseResource, lake: LakeResource, instrument: str, since: pd.Timestamp, run_id: str,
           log=print) -> int:
    """Recompute an instrument's buckets from the checkpoint of `since`'s day onwards; returns buckets written."""
    day0, states = _checkpoint(ch, instrument, since.date())
    start = pd.Timestamp(day0) if day0 else pd.Timestamp(since.date())
    bars = bars_from(ch, instrument, start if day0 else pd.Timestamp("1970-01-01"))
    if bars.empty:
        return 0
    st = {v: VpinState.from_dict(states[v]) if states else VpinState(window=WINDOW) for v in VARIANTS}
    bars["date"] = pd.to_datetime(bars["minute"]).dt.date
    out, checkpoints, version = [], [], time.time_ns()
    params = params_for(ch, lake, instrument, sorted(bars["date"].unique()))
    for day, g in bars.groupby("date", sort=True):
        checkpoints.append({"instrument_id": instrument, "date": day, "version": version,
                            "state": json.dumps({v: st[v].to_dict() for v in VARIANTS})})
        p = params.get(day)
        if p is None:
            log(f"{instrument} {day}: no earlier trades in the lake, VPIN undefined for the day")
            continue
        close, vol = g["close"].to_numpy(np.float64), g["volume"].to_numpy(np.float64)
        aggr_vol = (g["buy_volume"] + g["sell_volume"]).to_numpy(np.float64)
        for variant, res in (("bvc", st["bvc"].advance(close, vol, p["bucket_volume"], sigma=p["sigma"])),
                             ("aggressor", st["aggressor"].advance(close, aggr_vol, p["bucket_volume"],
                                                                   buy=g["buy_volume"].to_numpy(np.float64)))):
            idx = res.pop("bar_index")
            df = pd.DataFrame(res)
            df["end_minute"] = g["minute"].to_numpy()[idx]
            df["close"] = close[idx]
            out.append(df.assign(instrument_id=instrument, variant=variant, date=day, sigma=p["sigma"],
                                 version=version, run_id=run_id))
    with ch.session() as c:
        c.insert_df(f"{DB}.vpin_checkpoints", pd.DataFrame(checkpoints))
        if out:
            c.insert_df(f"{DB}.vpin_buckets", pd.concat(out, ignore_index=True))
    return int(sum(len(d) for d in out))


def plot(ch: ClickHouseResource) -> dg.MetadataValue | None:
    """Markdown with a PNG of VPIN against price for the most active instrument's latest buckets."""
    df = ch.query_df(f"SELECT instrument_id, end_minute, close, vpin FROM {DB}.vpin_buckets FINAL WHERE variant = 'bvc' "
                     f"AND instrument_id = (SELECT instrument_id FROM {DB}.vpin_buckets FINAL GROUP BY instrument_id "
                     "ORDER BY count() DESC LIMIT 1) ORDER BY bucket_seq DESC LIMIT 400")
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


def recompute(ch: ClickHouseResource, lake: LakeResource, run_id: str, log=print) -> dict:
    ch.ensure(DDL)
    cursor = int(ch.scalar(f"SELECT max(version) FROM {DB}.vpin_checkpoints") or 0)
    stats = {"instruments": 0, "buckets_written": 0}
    for instrument, since in changed_since(ch, cursor).items():
        stats["buckets_written"] += replay(ch, lake, instrument, pd.Timestamp(since), run_id, log)
        stats["instruments"] += 1
    return stats


@dg.asset(key=KEY, deps=[BARS_KEY, TRADES_KEY], group_name=PRODUCT.group, owners=list(PRODUCT.owners),
          kinds={"clickhouse", "python"}, code_version="1", freshness_policy=PRODUCT.freshness,
          automation_condition=follows_stream(), pool="clickhouse",
          description="VPIN (Easley, López de Prado, O'Hara 2012) per 50-bucket window with bulk volume "
                      "classification and with the trades' aggressor side, plus the bucket order imbalance, in "
                      f"ClickHouse {DB}.vpin_buckets (read with FINAL). Sigma and bucket volume come from past "
                      "days only and are fixed for the day; bucket state carries across micro-batches.",
          metadata={"dagster/column_schema": SCHEMA, "dagster/table_name": f"{DB}.vpin_buckets", **PRODUCT.metadata},
          check_specs=[dg.AssetCheckSpec("buckets_are_exact", asset=KEY,
                                         description="Every bucket holds exactly its bucket volume, buy and sell >= 0"),
                       dg.AssetCheckSpec("vpin_in_unit_interval", asset=KEY, description="0 <= VPIN <= 1")])
def vpin_buckets(context: dg.AssetExecutionContext, clickhouse: ClickHouseResource, lake: LakeResource,
                 pulsar: PulsarResource):
    stats = recompute(clickhouse, lake, context.run.run_id, log=context.log.info)
    meta = {**stats, "dagster/column_lineage": LINEAGE,
            "dagster/row_count": int(clickhouse.scalar(f"SELECT count() FROM {DB}.vpin_buckets FINAL"))}
    chart = plot(clickhouse)
    if chart:
        meta["vpin_vs_price"] = chart
    yield dg.MaterializeResult(metadata=meta)
    inexact = int(clickhouse.scalar(
        f"SELECT countIf(abs(buy + sell - bucket_volume) > 1e-6 * bucket_volume OR buy < -1e-9 OR sell < -1e-9) "
        f"FROM {DB}.vpin_buckets FINAL"))
    yield dg.AssetCheckResult(check_name="buckets_are_exact", passed=inexact == 0, metadata={"inexact": inexact})
    outside = int(clickhouse.scalar(f"SELECT countIf(vpin < 0 OR vpin > 1) FROM {DB}.vpin_buckets FINAL"))
    yield dg.AssetCheckResult(check_name="vpin_in_unit_interval", passed=outside == 0, metadata={"outside": outside})
    PRODUCT.announce(pulsar, KEY, context.run.run_id, **stats)


ASSETS = [vpin_buckets]
