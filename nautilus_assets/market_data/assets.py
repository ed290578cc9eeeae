"""The `market_data_feed` product as Dagster assets: Pulsar topics -> bronze trades/quotes -> 1-minute bars.

Streaming assets are unpartitioned and fed by micro-batches (one sensor-launched run per batch);
day-level products downstream use daily partitions by UTC trading date.
"""

import os
from datetime import timedelta

import dagster as dg

from nautilus_assets.pools import priority_tags
from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource
from resources.pulsar import PulsarResource

from . import checks
from .ingest import BatchResult, run_batch
from .schema import BARS_COLUMNS, BARS_SCHEMA, QUOTES, TRADES, Feed
from .sinks import DB, bronze_table

GROUP = "market_data"
OWNERS = ["team:market-data"]
BATCH_TAG = "nautilus/batch_id"
FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=2), warn_window=timedelta(minutes=1))
CODE_VERSION = "1"


def topic_spec(feed: Feed) -> dg.AssetSpec:
    return dg.AssetSpec(["pulsar", "market_data", feed.topic_name.replace("-", "_")], group_name="pulsar_topics",
                        kinds={"pulsar"}, owners=OWNERS, description=f"Pulsar topic {feed.topic} (external source)",
                        metadata={"pulsar/topic": feed.topic})


TOPICS = {f.name: topic_spec(f) for f in (TRADES, QUOTES)}
TRADES_KEY = dg.AssetKey(["market_data_feed", "trades"])
QUOTES_KEY = dg.AssetKey(["market_data_feed", "quotes"])
BARS_KEY = dg.AssetKey(["market_data_feed", "bars_1m"])


class BatchConfig(dg.Config):
    """Micro-batch bounds (defaults from NAUTILUS_BATCH_MAX_MESSAGES / NAUTILUS_BATCH_MAX_WAIT_SECONDS)."""
    max_messages: int = int(os.environ.get("NAUTILUS_BATCH_MAX_MESSAGES", "200000"))
    max_wait_seconds: float = float(os.environ.get("NAUTILUS_BATCH_MAX_WAIT_SECONDS", "20"))


def _feed_spec(feed: Feed, key: dg.AssetKey) -> dg.AssetSpec:
    return dg.AssetSpec(
        key, deps=[TOPICS[feed.name]], group_name=GROUP, owners=OWNERS, kinds={"pulsar", "deltalake", "clickhouse"},
        code_version=CODE_VERSION, freshness_policy=FRESHNESS, skippable=True,
        description=f"Bronze {feed.name} from {feed.topic}: validated, de-duplicated on the Pulsar message id, "
                    f"in Delta table s3://<lake>/{bronze_table(feed)} (partitioned by date) and ClickHouse "
                    f"{DB}.{feed.name}. Invalid messages go to {DB}.quarantine with a reason.",
        metadata={"dagster/column_schema": feed.table_schema, "dagster/table_name": f"{DB}.{feed.name}",
                  "lake/delta_table": bronze_table(feed), "pulsar/topic": feed.topic})


BARS_SPEC = dg.AssetSpec(
    BARS_KEY, deps=[TRADES_KEY], group_name=GROUP, owners=OWNERS, kinds={"clickhouse"}, code_version=CODE_VERSION,
    freshness_policy=FRESHNESS, skippable=True,
    description="1-minute OHLCV bars per instrument (VWAP, trade count, aggressor buy/sell volume) in ClickHouse "
                f"{DB}.bars_1m. Each batch recomputes every minute it touched from all of that minute's stored "
                "trades (late trades included); the latest version wins (ReplacingMergeTree, read with FINAL).",
    metadata={"dagster/column_schema": BARS_SCHEMA, "dagster/table_name": f"{DB}.bars_1m"})

BARS_LINEAGE = dg.TableColumnLineage(deps_by_column={
    name: [dg.TableColumnDep(asset_key=TRADES_KEY, column_name=c) for c in cols]
    for name, _, _, cols in BARS_COLUMNS if cols})


def _check(key: dg.AssetKey, name: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=key, description=description)


def feed_lineage(feed: Feed) -> dg.TableColumnLineage:
    """Stored columns from the topic's message fields (and the broker's message id) — column lineage to Pulsar."""
    topic = TOPICS[feed.name].key
    src = {n: [n] for n, *_ in feed.fields}
    src.update({"ts": ["ts_event"], "date": ["ts_event"], "ts_event": ["ts_event"], "ts_init": ["ts_init"],
                "schema_version": ["schema_version"], "message_id": ["message_id"], "ledger_id": ["message_id"],
                "entry_id": ["message_id"]})
    return dg.TableColumnLineage(deps_by_column={
        col: [dg.TableColumnDep(asset_key=topic, column_name=c) for c in cols] for col, cols in src.items()})


def _batch_metadata(res: BatchResult, ch: ClickHouseResource, feed: Feed) -> dict:
    meta = {k: v for k, v in res.as_dict().items() if k not in ("seconds", "delta_version")}
    meta["dagster/column_lineage"] = feed_lineage(feed)
    meta.update({f"seconds_{k}": v for k, v in res.seconds.items()})
    meta["delta_version"] = -1 if res.delta_version is None else res.delta_version
    meta["dagster/row_count"] = int(ch.scalar(f"SELECT count() FROM {DB}.{feed.name}"))
    return meta


def _ingest(context: dg.AssetExecutionContext, config: BatchConfig, feed: Feed, pulsar: PulsarResource,
            lake: LakeResource, clickhouse: ClickHouseResource) -> BatchResult:
    batch_id = context.run.tags.get(BATCH_TAG) or context.run.run_id
    res = run_batch(feed, pulsar, lake, clickhouse, batch_id, config.max_messages, config.max_wait_seconds,
                    float(os.environ.get("NAUTILUS_LATENESS_BOUND_SECONDS", 7 * 86400)), log=context.log.info)
    if not res.consumed:
        context.log.info("no messages pending; nothing materialized")
    return res


def _data_version(res: BatchResult) -> dg.DataVersion:
    return dg.DataVersion(f"{res.first_message_id}..{res.last_message_id}")


def _feed_outputs(feed: Feed, key: dg.AssetKey, res: BatchResult, lake, clickhouse):
    """The feed's materialization and its reconciliation and uniqueness checks."""
    yield dg.MaterializeResult(asset_key=key, metadata=_batch_metadata(res, clickhouse, feed),
                               data_version=_data_version(res))
    ok, meta = checks.reconcile(res, checks.stored_copies(lake, clickhouse, feed, res.rows))
    yield dg.AssetCheckResult(asset_key=key, check_name="reconciles_with_consumed", passed=ok, metadata=meta)
    dates = [d.isoformat() for d in set(res.rows["date"].to_pylist())] if res.rows.num_rows else []
    dup = checks.duplicate_ids(clickhouse, feed, dates)
    yield dg.AssetCheckResult(asset_key=key, check_name="no_duplicate_ids", passed=not any(dup.values()), metadata=dup)


RECONCILE_DOC = "Every consumed message is stored exactly once in Delta and in ClickHouse, or quarantined."
UNIQUE_DOC = "No message id (and, for trades, no instrument trade id) is stored twice on the batch's dates."


@dg.multi_asset(specs=[_feed_spec(TRADES, TRADES_KEY), BARS_SPEC], name="ingest_trades_batch", pool="lake",
                can_subset=True,  # an empty batch yields nothing: its outputs and checks are optional
                check_specs=[_check(TRADES_KEY, "reconciles_with_consumed", RECONCILE_DOC),
                             _check(TRADES_KEY, "no_duplicate_ids", UNIQUE_DOC),
                             _check(BARS_KEY, "bars_agree_with_trades",
                                    "Bars of the minutes this batch touched equal a recomputation from stored trades.")])
def ingest_trades(context: dg.AssetExecutionContext, config: BatchConfig, pulsar: PulsarResource,
                  lake: LakeResource, clickhouse: ClickHouseResource):
    """One micro-batch of trades: consume, validate, Delta + ClickHouse, recompute touched bars, acknowledge."""
    res = _ingest(context, config, TRADES, pulsar, lake, clickhouse)
    if not res.consumed:
        return
    yield from _feed_outputs(TRADES, TRADES_KEY, res, lake, clickhouse)
    yield dg.MaterializeResult(asset_key=BARS_KEY, data_version=_data_version(res), metadata={
        "bars_recomputed": res.bars_recomputed, "dagster/column_lineage": BARS_LINEAGE,
        "dagster/row_count": int(clickhouse.scalar(f"SELECT count() FROM {DB}.bars_1m FINAL"))})
    bars = checks.bars_mismatches(clickhouse, res.bar_keys)
    yield dg.AssetCheckResult(asset_key=BARS_KEY, check_name="bars_agree_with_trades",
                              passed=bars["missing"] == 0 and bars["mismatched"] == 0, metadata=bars)


@dg.multi_asset(specs=[_feed_spec(QUOTES, QUOTES_KEY)], name="ingest_quotes_batch", pool="lake",
                can_subset=True,  # an empty batch yields nothing: its outputs and checks are optional
                check_specs=[_check(QUOTES_KEY, "reconciles_with_consumed", RECONCILE_DOC),
                             _check(QUOTES_KEY, "no_duplicate_ids", UNIQUE_DOC)])
def ingest_quotes(context: dg.AssetExecutionContext, config: BatchConfig, pulsar: PulsarResource,
                  lake: LakeResource, clickhouse: ClickHouseResource):
    """One micro-batch of level-1 quotes: consume, validate, Delta + ClickHouse, acknowledge."""
    res = _ingest(context, config, QUOTES, pulsar, lake, clickhouse)
    if res.consumed:
        yield from _feed_outputs(QUOTES, QUOTES_KEY, res, lake, clickhouse)


# One job per source topic (one sensor target = one partitions definition). In-process executor: a
# micro-batch is one step, and a subprocess per step would add seconds to every batch.
INGEST_JOBS = {
    feed.name: dg.define_asset_job(
        f"ingest_{feed.name}", selection=dg.AssetSelection.assets(*keys) | dg.AssetSelection.checks_for_assets(*keys),
        executor_def=dg.in_process_executor,
        tags={"nautilus/topic": feed.name, "dagster/max_runtime": 600, **priority_tags("market_data_ingest")},
        description=f"One micro-batch from {feed.topic}")
    for feed, keys in ((TRADES, [TRADES_KEY, BARS_KEY]), (QUOTES, [QUOTES_KEY]))}

ASSETS = [*TOPICS.values(), ingest_trades, ingest_quotes]
