"""The `market_data_feed` product as Dagster assets: Pulsar topics -> bronze trades/quotes -> 1-minute bars.

Streaming assets are unpartitioned and fed by micro-batches: a sensor-launched run per topic lives for a bounded
lifetime and commits batches back to back, each recorded as its own materializations and check evaluations.
Day-level products downstream use daily partitions by UTC trading date.
"""

import sys
import time
from datetime import timedelta

import dagster as dg

from nautilus_assets.pools import priority_tags
from nautilus_assets.product import Product, job_selection
from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource
from resources.pulsar import PulsarResource
from resources.redis import RedisResource
from resources.settings import load

from . import checks, handover
from .ingest import BatchResult, Stream
from .recorder import Recorder
from .schema import BARS_COLUMNS, BARS_SCHEMA, NEWS, ORDERBOOK_DELTAS, ORDERBOOK_DEPTH10, QUOTES, TRADES, Feed
from .sinks import DB, bronze_table

GROUP = "market_data"
OWNERS = ["team:market-data"]
BATCH_TAG = "nautilus/batch_id"
# The feed's SLA as a data product (no engine topic: its batches are announced on the bars' change feed)
PRODUCT = Product(
    "market_data_feed",
    GROUP,
    tuple(OWNERS),
    "",
    fail_after=timedelta(minutes=2),
    warn_after=timedelta(minutes=1),
    latency_target_ms=1,
    availability_target=0.9999,
)
FRESHNESS = PRODUCT.freshness
CODE_VERSION = "1"


def topic_spec(feed: Feed) -> dg.AssetSpec:
    return dg.AssetSpec(
        ["pulsar", "market_data", feed.topic_name.replace("-", "_")],
        group_name="pulsar_topics",
        kinds={"pulsar"},
        owners=OWNERS,
        description=f"Pulsar topic {feed.topic} (external source)",
        metadata={"pulsar/topic": feed.topic},
    )


TOPICS = {f.name: topic_spec(f) for f in (TRADES, QUOTES, ORDERBOOK_DELTAS, NEWS)}
TRADES_KEY = dg.AssetKey(["market_data_feed", "trades"])
QUOTES_KEY = dg.AssetKey(["market_data_feed", "quotes"])
BARS_KEY = dg.AssetKey(["market_data_feed", "bars_1m"])
DELTAS_KEY = dg.AssetKey(["market_data_feed", "orderbook_deltas"])
DEPTH10_KEY = dg.AssetKey(["market_data_feed", "orderbook_depth10"])
NEWS_KEY = dg.AssetKey(["market_data_feed", "news"])
# News arrive a few a minute, not thousands a second: an hour without any is unusual, minutes are not.
NEWS_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=15), warn_window=timedelta(minutes=5))


STREAM = load().streaming


class BatchConfig(dg.Config):
    """Micro-batch bounds and run lifetime (defaults: resources/settings.py STREAMING_VARS)."""

    max_messages: int = STREAM.batch_max_messages
    max_wait_seconds: float = STREAM.batch_max_wait_s
    lifetime_seconds: float = STREAM.run_lifetime_s
    idle_seconds: float = STREAM.run_idle_s
    max_batches: int = 0  # 0: no bound (a bound serves tests and one-shot runs)


def _feed_spec(feed: Feed, key: dg.AssetKey, freshness: dg.FreshnessPolicy = FRESHNESS) -> dg.AssetSpec:
    return dg.AssetSpec(
        key,
        deps=[TOPICS[feed.name]],
        group_name=GROUP,
        owners=OWNERS,
        kinds={"pulsar", "deltalake", "clickhouse"},
        code_version=CODE_VERSION,
        freshness_policy=freshness,
        skippable=True,
        description=f"Bronze {feed.name} from {feed.topic}: validated, de-duplicated on the Pulsar message id, "
        f"in Delta table s3://<lake>/{bronze_table(feed)} (partitioned by date) and ClickHouse "
        f"{DB}.{feed.name}. Invalid messages go to {DB}.quarantine with a reason.",
        metadata={
            "dagster/column_schema": feed.table_schema,
            "dagster/table_name": f"{DB}.{feed.name}",
            "lake/delta_table": bronze_table(feed),
            "pulsar/topic": feed.topic,
            **PRODUCT.metadata,
        },
    )


BARS_SPEC = dg.AssetSpec(
    BARS_KEY,
    deps=[TRADES_KEY],
    group_name=GROUP,
    owners=OWNERS,
    kinds={"clickhouse"},
    code_version=CODE_VERSION,
    freshness_policy=FRESHNESS,
    skippable=True,
    description="1-minute OHLCV bars per instrument (VWAP, trade count, aggressor buy/sell volume) in ClickHouse "
    f"{DB}.bars_1m. Each batch recomputes every minute it touched from all of that minute's stored "
    "trades (late trades included); the latest version wins (ReplacingMergeTree, read with FINAL).",
    metadata={"dagster/column_schema": BARS_SCHEMA, "dagster/table_name": f"{DB}.bars_1m", **PRODUCT.metadata},
)

DEPTH10_SPEC = dg.AssetSpec(
    DEPTH10_KEY,
    deps=[DELTAS_KEY],
    group_name=GROUP,
    owners=OWNERS,
    kinds={"deltalake", "clickhouse"},
    code_version=CODE_VERSION,
    freshness_policy=FRESHNESS,
    skippable=True,
    description="Depth-10 order books rebuilt from the deltas: one row per event group (the delta flagged F_LAST) "
    f"of an instrument's book in sync with the feed, with that delta's provenance, in Delta table "
    f"s3://<lake>/{bronze_table(ORDERBOOK_DEPTH10)} and ClickHouse {DB}.{ORDERBOOK_DEPTH10.name}. A sequence gap "
    "quarantines the deltas up to the next snapshot, which brings the book back in sync.",
    metadata={
        "dagster/column_schema": ORDERBOOK_DEPTH10.table_schema,
        "dagster/table_name": f"{DB}.{ORDERBOOK_DEPTH10.name}",
        "lake/delta_table": bronze_table(ORDERBOOK_DEPTH10),
        **PRODUCT.metadata,
    },
)
_LEVELS = ("bid_prices", "bid_sizes", "ask_prices", "ask_sizes")
DEPTH10_LINEAGE = dg.TableColumnLineage(
    deps_by_column={
        **{
            c: [dg.TableColumnDep(asset_key=DELTAS_KEY, column_name=n) for n in ("action", "side", "price", "size")]
            for c in _LEVELS
        },
        **{
            c: [dg.TableColumnDep(asset_key=DELTAS_KEY, column_name=c)]
            for c in ("instrument_id", "sequence", "flags", "ts_event", "ts_init", "message_id")
        },
    }
)

BARS_LINEAGE = dg.TableColumnLineage(
    deps_by_column={
        name: [dg.TableColumnDep(asset_key=TRADES_KEY, column_name=c) for c in cols]
        for name, _, _, cols in BARS_COLUMNS
        if cols
    }
)


def _check(key: dg.AssetKey, name: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=key, description=description)


def feed_lineage(feed: Feed) -> dg.TableColumnLineage:
    """Stored columns from the topic's message fields (and the broker's message id) — column lineage to Pulsar."""
    topic = TOPICS[feed.name].key
    src = {n: [n] for n, *_ in feed.fields}
    src.update(
        {
            "ts": ["ts_event"],
            "date": ["ts_event"],
            "ts_event": ["ts_event"],
            "ts_init": ["ts_init"],
            "schema_version": ["schema_version"],
            "message_id": ["message_id"],
            "ledger_id": ["message_id"],
            "entry_id": ["message_id"],
        }
    )
    return dg.TableColumnLineage(
        deps_by_column={
            col: [dg.TableColumnDep(asset_key=topic, column_name=c) for c in cols] for col, cols in src.items()
        }
    )


def _batch_metadata(res: BatchResult, feed: Feed, row_count: int) -> dict:
    meta = {k: v for k, v in res.as_dict().items() if k not in ("seconds", "delta_version")}
    meta["dagster/column_lineage"] = feed_lineage(feed)
    meta.update({f"seconds_{k}": v for k, v in res.seconds.items()})
    meta["delta_version"] = -1 if res.delta_version is None else res.delta_version
    meta["dagster/row_count"] = row_count
    return meta


def _versions(res: BatchResult) -> dict:
    """Tags that record the batch's data version (its message-id range) and the code version."""
    return {
        "dagster/data_version": f"{res.first_message_id}..{res.last_message_id}",
        "dagster/code_version": CODE_VERSION,
    }


def stop_reason(
    context, started: float, last_data: float, batches: int, config: BatchConfig, checked: dict
) -> str | None:
    """Why the run should stop committing now: a successor asked for the subscription, the lifetime (or the
    memory budget) ran out with no successor in sight for two handover leads, idle, or the batch bound. `checked`
    holds the last look at the run's tags ("look") and when the memory budget asked for a successor ("wanted")."""
    now = time.monotonic()
    if config.max_batches and batches >= config.max_batches:
        return f"batch bound ({batches})"
    if now - checked["look"] >= 1.0:  # one look at the run's tags (and its memory) a second
        checked["look"] = now
        succ = handover.handover_requested(context.instance, context.run.run_id)
        if succ:
            return f"handover to run {succ}"
        if checked.get("wanted") is None and (mb := handover.rss_mb()) > STREAM.run_rss_handover_mb:
            checked["wanted"] = now
            context.log.info(
                f"resident memory {mb:.0f} MB > {STREAM.run_rss_handover_mb:.0f} MB: asking for a successor"
            )
            context.instance.add_run_tags(context.run.run_id, {handover.SUCCESSOR_WANTED_TAG: f"rss {mb:.0f} MB"})
    if now - started >= config.lifetime_seconds + 2 * STREAM.handover_lead_s:
        return "lifetime (no successor took over)"
    if checked.get("wanted") is not None and now - checked["wanted"] >= 2 * STREAM.handover_lead_s:
        return "memory budget (no successor took over)"
    if now - last_data >= config.idle_seconds:
        return f"idle for {config.idle_seconds:.0f}s"
    return None


def _stream(
    context: dg.AssetExecutionContext,
    config: BatchConfig,
    feed: Feed,
    pulsar: PulsarResource,
    lake: LakeResource,
    clickhouse: ClickHouseResource,
    record,
    cache: RedisResource | None = None,
) -> int:
    """Commit batches back to back until the run should stop; `record(results)` logs them on the recorder's
    thread (recorder.py) while the next batches commit. Returns batches."""
    run_batch = context.run.tags.get(BATCH_TAG) or context.run.run_id
    handover.take_over(context.instance, context.run, STREAM.handover_wait_s, log=context.log.info)
    started = last_data = time.monotonic()
    batches, checked, reason = 0, {"look": started}, None
    recorder = Recorder(record)
    try:
        with Stream(
            feed, pulsar, lake, clickhouse, STREAM.lateness_bound_s, log=context.log.info, inspect=True, cache=cache
        ) as stream:
            while (reason := stop_reason(context, started, last_data, batches, config, checked)) is None:
                t = time.perf_counter()
                msgs = stream.receive(config.max_messages, config.max_wait_seconds)
                if not msgs:
                    continue
                received_s = round(time.perf_counter() - t, 3)
                res = stream.commit(f"{run_batch}.{batches + 1}", msgs)
                res.seconds = {"receive": received_s, **res.seconds}
                batches += 1
                last_data = time.monotonic()
                recorder.submit(res)
    finally:
        handover.release(context.instance, context.run.run_id)  # the successor consumes while we record
        recorder.close(raise_error=sys.exc_info()[0] is None)  # never masks the error that ends the run
    context.log.info(f"ingest run ends ({reason}) after {batches} batches")
    return batches


def _record(context, feed: Feed, key: dg.AssetKey, results: list[BatchResult], lake: LakeResource, state: dict) -> None:
    """Committed batches in Dagster: each one's materialization of the feed (and, for trades, of the bars) with
    its reconciliation, uniqueness (and bars) check evaluations. Their ClickHouse side is read on the stream's
    inspector thread after each batch's acknowledgement (Stream(inspect=True)); the Delta side here, through the
    recorder's own Delta handle."""
    checks_ch = [{"seconds_checks_clickhouse": res.inspected.result()} if res.inspected else {} for res in results]
    t = time.perf_counter()
    if state.get("delta") is None:
        state["delta"] = lake.table(bronze_table(feed))
    else:
        state["delta"].update_incremental()
    evaluated = [
        (
            checks.reconcile(
                res,
                checks.stored_copies(
                    res.rows, res.stored_span, checks.delta_span(lake, feed, res.rows, state["delta"])
                ),
            ),
            checks.duplicate_ids(feed, res.stored_span),
            res.bars_check,
        )
        for res in results
    ]
    per_batch = {
        "seconds_checks_delta": round((time.perf_counter() - t) / len(results), 3),
        "recorded_together": len(results),
    }
    for res, ((ok, rec), dup, bars), seconds in zip(results, evaluated, checks_ch):
        context.log_event(
            dg.AssetMaterialization(
                asset_key=key,
                tags=_versions(res),
                metadata={**_batch_metadata(res, feed, res.table_rows), **seconds, **per_batch},
            )
        )
        context.log_event(
            dg.AssetCheckEvaluation(
                asset_key=key,
                check_name="reconciles_with_consumed",
                passed=ok,
                metadata={**rec, "batch_id": res.batch_id},
            )
        )
        context.log_event(
            dg.AssetCheckEvaluation(
                asset_key=key,
                check_name="no_duplicate_ids",
                passed=not any(dup.values()),
                metadata={**dup, "batch_id": res.batch_id},
            )
        )
        if bars is not None:
            late = {CLOSED_DATES: ",".join(res.closed_dates)} if res.closed_dates else {}
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=BARS_KEY,
                    tags=_versions(res),
                    metadata={
                        "batch_id": res.batch_id,
                        "bars_recomputed": res.bars_recomputed,
                        "dagster/column_lineage": BARS_LINEAGE,
                        **late,
                    },
                )
            )
            context.log_event(
                dg.AssetCheckEvaluation(
                    asset_key=BARS_KEY,
                    check_name="bars_agree_with_trades",
                    passed=bars["missing"] == 0 and bars["mismatched"] == 0,
                    metadata={**bars, "batch_id": res.batch_id},
                )
            )
        if res.book is not None:
            _record_book(context, res)


def _record_book(context, res: BatchResult) -> None:
    """An order-book batch's depth-10 materialization and its checks: no stored depth row of the batch's span is
    crossed (read back from ClickHouse), every snapshot equals the book rebuilt from the deltas before it, and the
    deltas were contiguous (a gap is quarantined up to the next snapshot: a warning, the feed lost messages)."""
    b = res.book
    context.log_event(
        dg.AssetMaterialization(
            asset_key=DEPTH10_KEY,
            tags=_versions(res),
            metadata={
                "batch_id": res.batch_id,
                "depth_rows": b.depth.num_rows,
                "written_clickhouse": b.written_clickhouse,
                "written_delta": b.written_delta,
                "carried_deltas": b.carried,
                **{f"book_{k}": v for k, v in b.counters.items()},
                "dagster/column_lineage": DEPTH10_LINEAGE,
            },
        )
    )
    for key, name, passed, meta, severity in (
        (
            DEPTH10_KEY,
            "book_never_crossed",
            b.crossed_stored == 0,
            {"crossed_rows": b.crossed_stored, "rejected_crossing_groups": b.crossed},
            dg.AssetCheckSeverity.ERROR,
        ),
        (
            DEPTH10_KEY,
            "snapshots_match_rebuilt_book",
            b.snapshot_mismatches == 0,
            {
                "snapshot_mismatches": b.snapshot_mismatches,
                "snapshots_compared": b.counters.get("snapshots_compared", 0),
            },
            dg.AssetCheckSeverity.ERROR,
        ),
        (
            DELTAS_KEY,
            "sequences_contiguous",
            b.gaps == 0,
            {"gaps": b.gaps, "quarantined_by_book": b.quarantined},
            dg.AssetCheckSeverity.WARN,
        ),
    ):
        context.log_event(
            dg.AssetCheckEvaluation(
                asset_key=key,
                check_name=name,
                passed=bool(passed),
                severity=severity,
                metadata={**meta, "batch_id": res.batch_id},
            )
        )


# Metadata of a bars materialization whose batch added trades to earlier days: sensors/late_trades.py re-runs them.
CLOSED_DATES = "closed_dates"

RECONCILE_DOC = "Every consumed message is stored exactly once in Delta and in ClickHouse, or quarantined."
UNIQUE_DOC = (
    "No message id (and, for trades, no instrument trade id) is stored twice among the rows of the batch's "
    "message-id span (trade ids reused from earlier batches are quarantined at decode)."
)


def ingest_asset(feed: Feed, specs: list[dg.AssetSpec], more_checks: list[dg.AssetCheckSpec], doc: str):
    """A feed's long-lived ingest step: its stored assets (the first one the feed's table), their per-batch checks
    (reconciliation and uniqueness, and the feed's own), the `lake` pool; a cached feed also takes Redis."""
    key = specs[0].key

    def stream(context, config, pulsar, lake, clickhouse, cache=None):
        state: dict = {}

        def record(results: list[BatchResult]) -> None:
            _record(context, feed, key, results, lake, state)

        _stream(context, config, feed, pulsar, lake, clickhouse, record, cache=cache)
        yield from ()

    if feed.cached:

        def ingest(
            context: dg.AssetExecutionContext,
            config: BatchConfig,
            pulsar: PulsarResource,
            lake: LakeResource,
            clickhouse: ClickHouseResource,
            redis: RedisResource,
        ):
            yield from stream(context, config, pulsar, lake, clickhouse, cache=redis)

    else:

        def ingest(
            context: dg.AssetExecutionContext,
            config: BatchConfig,
            pulsar: PulsarResource,
            lake: LakeResource,
            clickhouse: ClickHouseResource,
        ):
            yield from stream(context, config, pulsar, lake, clickhouse)

    return dg.multi_asset(
        specs=specs,
        name=f"ingest_{feed.name.removesuffix('_deltas')}_batch",
        pool="lake",
        can_subset=True,  # each batch is logged as it commits: the step itself yields no output
        description=doc,
        check_specs=[
            _check(key, "reconciles_with_consumed", RECONCILE_DOC),
            _check(key, "no_duplicate_ids", UNIQUE_DOC),
            *more_checks,
        ],
    )(ingest)


ingest_trades = ingest_asset(
    TRADES,
    [_feed_spec(TRADES, TRADES_KEY), BARS_SPEC],
    [
        _check(
            BARS_KEY,
            "bars_agree_with_trades",
            "Bars of the minutes this batch touched equal a recomputation from stored trades.",
        )
    ],
    "Micro-batches of trades, back to back: consume, validate, Delta + ClickHouse, recompute touched bars, "
    "acknowledge; each batch recorded as materializations of trades and bars plus their check evaluations.",
)
ingest_quotes = ingest_asset(
    QUOTES,
    [_feed_spec(QUOTES, QUOTES_KEY)],
    [],
    "Micro-batches of level-1 quotes, back to back: consume, validate, Delta + ClickHouse (+ the latest top of "
    "book per instrument in Redis), acknowledge.",
)
ingest_orderbook = ingest_asset(
    ORDERBOOK_DELTAS,
    [_feed_spec(ORDERBOOK_DELTAS, DELTAS_KEY), DEPTH10_SPEC],
    [
        _check(DELTAS_KEY, "sequences_contiguous", "Each instrument's deltas follow its last applied sequence."),
        _check(DEPTH10_KEY, "book_never_crossed", "No stored depth-10 row of the batch has best bid >= best ask."),
        _check(
            DEPTH10_KEY,
            "snapshots_match_rebuilt_book",
            "Each snapshot's depth equals the book rebuilt from the deltas before it.",
        ),
    ],
    "Micro-batches of level-2 order-book deltas, back to back: consume, validate, continue each touched book from "
    "its stored state, Delta + ClickHouse (deltas, then the depth-10 rows, then the books' states), acknowledge.",
)
ingest_news = ingest_asset(
    NEWS,
    [_feed_spec(NEWS, NEWS_KEY, NEWS_FRESHNESS)],
    [],
    "Micro-batches of news items (id, headline, instruments, source): consume, validate (a reused story id is "
    "quarantined), Delta + ClickHouse, acknowledge.",
)


SCHEDULED_CHECK = "no_duplicate_ids_in_table"  # whole-table: its own job and schedule (maintenance.py), not a batch's

# One job per source topic (one sensor target = one partitions definition). In-process executor: the run is
# one long-lived step, and a subprocess per step would add seconds to its start.
INGEST_JOBS = {
    feed.name: dg.define_asset_job(
        f"ingest_{feed.name}",
        selection=job_selection(ingest),
        executor_def=dg.in_process_executor,
        tags={
            "nautilus/topic": feed.name,
            "dagster/max_runtime": STREAM.run_max_runtime_s,
            **priority_tags("market_data_ingest"),
        },
        description=f"Micro-batches from {feed.topic}, back to back for the run's lifetime",
    )
    for feed, ingest in (
        (TRADES, ingest_trades),
        (QUOTES, ingest_quotes),
        (ORDERBOOK_DELTAS, ingest_orderbook),
        (NEWS, ingest_news),
    )
}

ASSETS = [*TOPICS.values(), ingest_trades, ingest_quotes, ingest_orderbook, ingest_news]
