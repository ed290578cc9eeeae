"""The `market_analytics` product: TA-Lib indicators per instrument over the 1-minute bars, in ClickHouse
`analytics.indicators_1m`, recomputed, batch by batch, for every bar the market-data product announces it (re)wrote."""

import time
from datetime import timedelta

import dagster as dg
import pandas as pd

from nautilus_assets import current
from nautilus_assets.market_data.assets import BARS_KEY
from nautilus_assets.market_data.bars import changed_since
from nautilus_assets.product import Product
from nautilus_assets.streaming import Changes, FollowConfig, follow, follow_job, log_batch
from resources.clickhouse import ClickHouseResource
from resources.pulsar import PulsarResource
from resources.redis import RedisResource
from resources.topics import BARS_CHANGES

from . import store
from .indicators import indicators
from .store import TABLE

PRODUCT = Product(
    "market_analytics",
    "analytics",
    ("team:analytics",),
    "analytics-signals",
    fail_after=timedelta(minutes=5),
    warn_after=timedelta(minutes=2),
    latency_target_ms=5,
    availability_target=0.999,
)
KEY = dg.AssetKey(["market_analytics", "indicators_1m"])


def recompute(ch: ClickHouseResource, run_id: str, since: dict, log=None) -> tuple[dict, pd.DataFrame | None]:
    """Indicators for each instrument's bars from its `since` minute on, written in one insert; returns counts
    for metadata and the rows written. `log` takes a line per instrument (the streaming run passes none: every
    Dagster log line is a write to the instance's event log, and a batch's counts are in its materialization)."""
    stats, out = {"instruments": 0, "rows": 0}, []
    for instrument, bars in store.windows(ch, since).items():
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
        store.write(ch, rows)
    return stats, rows


def bootstrap(ch: ClickHouseResource) -> dict:
    """Every instrument's first bar minute when the product holds nothing yet (a new install, a wiped store):
    the change feed keeps a day, the bars may hold more. Once per run, a look at one row."""
    return changed_since(ch, 0) if store.is_empty(ch) else {}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            KEY,
            deps=[BARS_KEY],
            group_name=PRODUCT.group,
            owners=list(PRODUCT.owners),
            kinds={"clickhouse", "python"},
            code_version="1",
            freshness_policy=PRODUCT.freshness,
            skippable=True,
            description="SMA 20, EMA 20, RSI 14, MACD 12/26/9, Bollinger 20/2, ATR 14 (TA-Lib) and session VWAP "
            f"per instrument over 1-minute bars, in ClickHouse {TABLE} (read with FINAL). A long-lived run "
            f"follows the bars' change feed ({BARS_CHANGES}); each batch recomputes the minutes that "
            "changed, with enough look-back that values equal TA-Lib over the full history.",
            metadata=PRODUCT.stored_in(store.INDICATORS),
        )
    ],
    name="market_analytics__indicators_1m",
    pool="clickhouse",
    can_subset=True,  # each batch is logged as it commits
    check_specs=[
        dg.AssetCheckSpec(
            "every_bar_has_indicators",
            asset=KEY,
            description="Each bar of the batch's minutes has an indicator row computed from its latest version",
        ),
        dg.AssetCheckSpec(
            "indicators_in_range",
            asset=KEY,
            description="RSI in [0, 100], Bollinger lower <= middle <= upper, ATR >= 0",
        ),
    ],
)
def indicators_1m(
    context: dg.AssetExecutionContext,
    config: FollowConfig,
    clickhouse: ClickHouseResource,
    pulsar: PulsarResource,
    redis: RedisResource,
):
    def apply(batch: Changes) -> None:
        since = dict(batch.since)
        if batch.first:
            for inst, m in bootstrap(clickhouse).items():
                since[inst] = min(since.get(inst, m), m)
        if not since:
            return
        with clickhouse.session():  # the batch's reads, writes and checks in this run's one session
            stats, rows = recompute(clickhouse, batch.batch_id, since)
            missing, bad = store.check_batch(clickhouse, since)
        if rows is not None:  # the latest indicators per instrument, committed with the batch
            current.publish(redis, "indicators", rows, log=context.log.warning)
        log_batch(
            context,
            KEY,
            batch,
            {
                **stats,
                "upstream_batches": len(batch.upstream),
                "first_changed_minute": min(since.values()).isoformat(),
                "dagster/column_lineage": store.INDICATORS.lineage,
            },
            {
                "every_bar_has_indicators": (missing == 0, {"bars_without_current_indicators": missing}),
                "indicators_in_range": (bad == 0, {"rows_out_of_range": bad}),
            },
        )
        batch.record(lambda: PRODUCT.announce(batch.client, KEY, batch.batch_id, **stats))

    follow(context, config, pulsar, SUBSCRIPTION, apply)
    yield from ()


SUBSCRIPTION = "nautilus-analytics"
JOB = follow_job("market_analytics", indicators_1m)
ASSETS = [indicators_1m]
