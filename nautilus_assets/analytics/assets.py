"""The `market_analytics` product: TA-Lib indicators per instrument over the 1-minute bars, in ClickHouse
`analytics.indicators_1m`, recomputed, batch by batch, for every bar the market-data product announces it (re)wrote."""
import time
from datetime import timedelta

import dagster as dg
import pandas as pd

from nautilus_assets import current
from nautilus_assets.market_data.assets import BARS_KEY
from nautilus_assets.market_data.bars import BARS, changed_since, since_condition
from nautilus_assets.product import Product
from nautilus_assets.streaming import Changes, FollowConfig, follow, follow_job, log_batch
from resources.clickhouse import ClickHouseResource
from resources.pulsar import PulsarResource
from resources.redis import RedisResource
from resources.topics import BARS_CHANGES

from .indicators import COLUMNS, LOOKBACK_BARS, indicators

PRODUCT = Product("market_analytics", "analytics", ("team:analytics",), "analytics-signals",
                  fail_after=timedelta(minutes=5), warn_after=timedelta(minutes=2),
                  latency_target_ms=5, availability_target=0.999)
KEY = dg.AssetKey(["market_analytics", "indicators_1m"])
TABLE = "analytics.indicators_1m"

DDL = ["CREATE DATABASE IF NOT EXISTS analytics",
       f"CREATE TABLE IF NOT EXISTS {TABLE} (instrument_id LowCardinality(String), minute DateTime('UTC'), "
       "close Float64, " + ", ".join(f"{n} {t}" for n, t, _, _ in COLUMNS) +
       ", source_version UInt64, version UInt64, run_id String"
       ") ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(minute) ORDER BY (instrument_id, minute)",
       f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS batch_id String ALIAS run_id"]  # row provenance: the batch

SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("instrument_id", "LowCardinality(String)", description="Instrument"),
    dg.TableColumn("minute", "DateTime('UTC')", description="Bar minute"),
    dg.TableColumn("close", "Float64", description="Bar close"),
    *[dg.TableColumn(n, t, description=d) for n, t, d, _ in COLUMNS],
    dg.TableColumn("source_version", "UInt64", description="Version of the bar the row was computed from"),
    dg.TableColumn("version", "UInt64", description="Row version; the latest wins"),
    dg.TableColumn("run_id", "String", description="Run (micro-batch) that computed the row")])
LINEAGE = dg.TableColumnLineage(deps_by_column={
    **{n: [dg.TableColumnDep(asset_key=BARS_KEY, column_name=c) for c in cols] for n, _, _, cols in COLUMNS},
    "close": [dg.TableColumnDep(asset_key=BARS_KEY, column_name="close")],
    "instrument_id": [dg.TableColumnDep(asset_key=BARS_KEY, column_name="instrument_id")],
    "minute": [dg.TableColumnDep(asset_key=BARS_KEY, column_name="minute")]})

def windows(ch: ClickHouseResource, since: dict) -> dict[str, pd.DataFrame]:
    """Per instrument, its bars from LOOKBACK_BARS before its `since` minute (and at least from that minute's UTC
    midnight) on, in time order: two queries for all the instruments, whatever their number."""
    cond, params = since_condition(since, op="<")
    with ch.session() as c:
        back = dict(c.query(f"SELECT instrument_id, min(minute) FROM (SELECT instrument_id, minute FROM {BARS} "
                            f"WHERE {cond} ORDER BY instrument_id, minute DESC LIMIT {LOOKBACK_BARS} BY instrument_id) "
                            "GROUP BY instrument_id", parameters=params).result_rows)
        start = {i: min(pd.Timestamp(m).floor("D"), pd.Timestamp(back[i]) if i in back else pd.Timestamp(m))
                 for i, m in since.items()}
        cond, params = since_condition(start)
        bars = c.query_df(f"SELECT * FROM {BARS} WHERE {cond} ORDER BY instrument_id, minute", parameters=params)
    if bars.empty:   # chDB answers an empty result with a frame without columns
        return {}
    bars["instrument_id"] = bars["instrument_id"].astype(str)
    return {i: g.reset_index(drop=True) for i, g in bars.groupby("instrument_id", sort=True)}


def recompute(ch: ClickHouseResource, run_id: str, since: dict, log=None) -> tuple[dict, pd.DataFrame | None]:
    """Indicators for each instrument's bars from its `since` minute on, written in one insert; returns counts
    for metadata and the rows written. `log` takes a line per instrument (the streaming run passes none: every Dagster log line is a
    write to the instance's event log, and a batch's counts are in its materialization)."""
    stats, out = {"instruments": 0, "rows": 0}, []
    for instrument, bars in windows(ch, since).items():
        first = since[instrument]
        ind = indicators(bars)
        keep = bars["minute"] >= first
        rows = pd.concat([bars.loc[keep, ["instrument_id", "minute", "close"]], ind[keep]], axis=1)
        rows["source_version"] = bars.loc[keep, "version"].astype("uint64")
        out.append(rows)
        stats["instruments"] += 1
        stats["rows"] += int(keep.sum())
        if log:
            log(f"{instrument}: {int(keep.sum())} bars from {first} (window {len(bars)} bars)")
    rows = None
    if out:
        rows = pd.concat(out, ignore_index=True)
        rows["version"] = time.time_ns()
        rows["run_id"] = run_id
        with ch.session() as c:
            c.insert_df(TABLE, rows)
    return stats, rows


def bootstrap(ch: ClickHouseResource) -> dict:
    """Every instrument's first bar minute when the product holds nothing yet (a new install, a wiped store):
    the change feed keeps a day, the bars may hold more. Once per run, a look at one row."""
    ch.ensure(DDL)
    if ch.query_df(f"SELECT 1 FROM {TABLE} LIMIT 1").empty:
        return changed_since(ch, 0)
    return {}


def check_batch(ch: ClickHouseResource, since: dict) -> tuple[int, int]:
    """(bars without an indicator row of their latest version, rows out of range) among the batch's minutes."""
    cond, params = since_condition(since)
    missing = int(ch.scalar(
        f"SELECT count() FROM {BARS} AS b LEFT ANTI JOIN (SELECT instrument_id, minute, source_version "
        f"FROM {TABLE} FINAL WHERE {cond}) AS i ON b.instrument_id = i.instrument_id AND b.minute = i.minute "
        f"AND b.version = i.source_version WHERE {since_condition(since, 'b.')[0]}", params))
    bad = int(ch.scalar(
        f"SELECT countIf(rsi_14 < 0 OR rsi_14 > 100 OR bb_lower > bb_middle OR bb_middle > bb_upper OR atr_14 < 0) "
        f"FROM {TABLE} FINAL WHERE {cond}", params))
    return missing, bad


@dg.multi_asset(
    specs=[dg.AssetSpec(
        KEY, deps=[BARS_KEY], group_name=PRODUCT.group, owners=list(PRODUCT.owners), kinds={"clickhouse", "python"},
        code_version="1", freshness_policy=PRODUCT.freshness, skippable=True,
        description="SMA 20, EMA 20, RSI 14, MACD 12/26/9, Bollinger 20/2, ATR 14 (TA-Lib) and session VWAP "
                    f"per instrument over 1-minute bars, in ClickHouse {TABLE} (read with FINAL). A long-lived run "
                    f"follows the bars' change feed ({BARS_CHANGES}); each batch recomputes the minutes that "
                    "changed, with enough look-back that values equal TA-Lib over the full history.",
        metadata={"dagster/column_schema": SCHEMA, "dagster/table_name": TABLE, **PRODUCT.metadata})],
    name="market_analytics__indicators_1m", pool="clickhouse", can_subset=True,   # each batch is logged as it commits
    check_specs=[dg.AssetCheckSpec("every_bar_has_indicators", asset=KEY,
                                   description="Each bar of the batch's minutes has an indicator row computed from its "
                                               "latest version"),
                 dg.AssetCheckSpec("indicators_in_range", asset=KEY,
                                   description="RSI in [0, 100], Bollinger lower <= middle <= upper, ATR >= 0")])
def indicators_1m(context: dg.AssetExecutionContext, config: FollowConfig, clickhouse: ClickHouseResource,
                  pulsar: PulsarResource, redis: RedisResource):
    def apply(batch: Changes) -> None:
        since = dict(batch.since)
        if batch.first:
            for inst, m in bootstrap(clickhouse).items():
                since[inst] = min(since.get(inst, m), m)
        if not since:
            return
        with clickhouse.session():   # the batch's reads, writes and checks in this run's one session
            stats, rows = recompute(clickhouse, batch.batch_id, since)
            missing, bad = check_batch(clickhouse, since)
        if rows is not None:   # the latest indicators per instrument, committed with the batch
            current.publish(redis, "indicators", rows, log=context.log.warning)
        log_batch(context, KEY, batch, {
            **stats, "upstream_batches": len(batch.upstream), "first_changed_minute": min(since.values()).isoformat(),
            "dagster/column_lineage": LINEAGE}, {
            "every_bar_has_indicators": (missing == 0, {"bars_without_current_indicators": missing}),
            "indicators_in_range": (bad == 0, {"rows_out_of_range": bad})})
        batch.record(lambda: PRODUCT.announce(batch.client, KEY, batch.batch_id, **stats))

    follow(context, config, pulsar, SUBSCRIPTION, apply)
    yield from ()


SUBSCRIPTION = "nautilus-analytics"
JOB = follow_job("market_analytics", [KEY])
ASSETS = [indicators_1m]
