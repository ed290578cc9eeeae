"""The `market_analytics` product: TA-Lib indicators per instrument over the 1-minute bars, in ClickHouse
`analytics.indicators_1m`, recomputed for every bar the market-data product (re)wrote since the last run."""
import time
from datetime import timedelta

import dagster as dg
import pandas as pd

from nautilus_assets.market_data.assets import BARS_KEY
from nautilus_assets.market_data.bars import BARS, changed_since
from nautilus_assets.product import Product, follows_stream
from resources.clickhouse import ClickHouseResource
from resources.pulsar import PulsarResource

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

def window(ch: ClickHouseResource, instrument: str, since) -> pd.DataFrame:
    """Bars from LOOKBACK_BARS before `since` (and at least from its UTC midnight) onwards."""
    return ch.query_df(
        f"WITH toDateTime(%(s)s, 'UTC') AS since SELECT * FROM {BARS} WHERE instrument_id = %(i)s "
        f"AND minute >= least(toStartOfDay(since), (SELECT min(minute) FROM (SELECT minute FROM {BARS} "
        f"WHERE instrument_id = %(i)s AND minute < since ORDER BY minute DESC LIMIT {LOOKBACK_BARS}))) ORDER BY minute",
        parameters={"i": instrument, "s": int(pd.Timestamp(since).timestamp())})


def recompute(ch: ClickHouseResource, run_id: str, log=print) -> dict:
    """Indicators for every bar written since the last run; returns counts for metadata."""
    ch.ensure(DDL)
    cursor = int(ch.scalar(f"SELECT max(source_version) FROM {TABLE}") or 0)
    stats = {"instruments": 0, "rows": 0}
    for instrument, since in changed_since(ch, cursor).items():
        bars = window(ch, instrument, since)
        ind = indicators(bars)
        keep = bars["minute"] >= since
        rows = pd.concat([bars.loc[keep, ["instrument_id", "minute", "close"]], ind[keep]], axis=1)
        rows["source_version"] = bars.loc[keep, "version"].astype("uint64")
        rows["version"] = time.time_ns()
        rows["run_id"] = run_id
        with ch.session() as c:
            c.insert_df(TABLE, rows.reset_index(drop=True))
        stats["instruments"] += 1
        stats["rows"] += int(keep.sum())
        log(f"{instrument}: {int(keep.sum())} bars from {since} (window {len(bars)} bars)")
    return stats


@dg.asset(key=KEY, deps=[BARS_KEY], group_name=PRODUCT.group, owners=list(PRODUCT.owners),
          kinds={"clickhouse", "python"}, code_version="1", freshness_policy=PRODUCT.freshness,
          automation_condition=follows_stream(), pool="clickhouse",
          description="SMA 20, EMA 20, RSI 14, MACD 12/26/9, Bollinger 20/2, ATR 14 (TA-Lib) and session VWAP "
                      f"per instrument over 1-minute bars, in ClickHouse {TABLE} (read with FINAL). Each run "
                      "recomputes the bars written since the previous one, with enough look-back that values "
                      "equal TA-Lib over the full history.",
          metadata={"dagster/column_schema": SCHEMA, "dagster/table_name": TABLE, **PRODUCT.metadata},
          check_specs=[dg.AssetCheckSpec("every_bar_has_indicators", asset=KEY,
                                         description="Each bar has an indicator row computed from its latest version"),
                       dg.AssetCheckSpec("indicators_in_range", asset=KEY,
                                         description="RSI in [0, 100], Bollinger lower <= middle <= upper, ATR >= 0")])
def indicators_1m(context: dg.AssetExecutionContext, clickhouse: ClickHouseResource, pulsar: PulsarResource):
    stats = recompute(clickhouse, context.run.run_id, log=context.log.info)
    total = int(clickhouse.scalar(f"SELECT count() FROM {TABLE} FINAL"))
    yield dg.MaterializeResult(metadata={**stats, "dagster/row_count": total, "dagster/column_lineage": LINEAGE})
    missing = int(clickhouse.scalar(
        f"SELECT count() FROM {BARS} AS b LEFT ANTI JOIN (SELECT instrument_id, minute, source_version "
        f"FROM {TABLE} FINAL) AS i ON b.instrument_id = i.instrument_id AND b.minute = i.minute "
        "AND b.version = i.source_version"))
    yield dg.AssetCheckResult(check_name="every_bar_has_indicators", passed=missing == 0,
                              metadata={"bars_without_current_indicators": missing})
    bad = int(clickhouse.scalar(
        f"SELECT countIf(rsi_14 < 0 OR rsi_14 > 100 OR bb_lower > bb_middle OR bb_middle > bb_upper OR atr_14 < 0) "
        f"FROM {TABLE} FINAL"))
    yield dg.AssetCheckResult(check_name="indicators_in_range", passed=bad == 0, metadata={"rows_out_of_range": bad})
    PRODUCT.announce(pulsar, KEY, context.run.run_id, **stats)


ASSETS = [indicators_1m]
