"""Long-lived runs of the downstream streaming products (analytics, microstructure, portfolio), fed by the bars'
change feed the way market data's ingest runs are fed by their topics.

A product's sensor (sensors/pulsar_ingest.py) launches its run when its subscription has a backlog; the run
takes the subscription over from a predecessor (market_data/handover.py), then, batch after batch, merges
the pending announcements into "per instrument, the first minute that changed", lets the product recompute
from its carried state, logs the batch as the product's materialization and check evaluations, and only
then acknowledges the announcements. Recomputing from stored bars is deterministic, so a redelivered or
re-run announcement rewrites the same values: exactly once in effect.

A run that was not launched by the sensor (a materialization from the UI, a backfill, a test) is a one-shot
catch-up: it takes what is pending and ends when the subscription is drained."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd
import pulsar

from nautilus_assets.market_data import changes, handover
from nautilus_assets.market_data.assets import BATCH_TAG, STREAM, stop_reason
from nautilus_assets.market_data.ingest import FIRST_MESSAGE_WAIT_MS, receive, receive_window
from nautilus_assets.market_data.recorder import Recorder
from nautilus_assets.pools import priority_tags
from nautilus_assets.product import job_selection
from resources.clickhouse import lower_query_priority, session_counters
from resources.pulsar import PulsarResource
from resources.topics import BARS_CHANGES


class FollowConfig(dg.Config):
    """Batch bounds and run lifetime of a streaming product's run (defaults: resources/settings.py)."""

    max_messages: int = 1000
    max_wait_seconds: float = STREAM.batch_max_wait_s
    lifetime_seconds: float = STREAM.run_lifetime_s
    idle_seconds: float = STREAM.run_idle_s
    max_batches: int = 0  # 0: no bound


@dataclass
class Changes:
    """One batch of a streaming product: what changed upstream since the previous batch."""

    batch_id: str
    since: dict[str, pd.Timestamp]  # per instrument, the first bar minute that changed
    upstream: list[str]  # the market-data batches that announced it
    others: list = field(default_factory=list)  # messages of the product's further topics (e.g. fills)
    client: pulsar.Client | None = None
    bad_announcements: int = 0
    first: bool = False  # the run's first batch (a product may bootstrap its state here)
    oldest_ms: int = 0  # publish time of its oldest announcement (how far behind the product is)
    started: float = field(default_factory=time.perf_counter)
    ch0: dict = field(default_factory=session_counters)
    # runs a batch's bookkeeping (Dagster events, the product's announcement) on the run's recorder thread, after
    # the acknowledgement and while the next batch computes (market_data/recorder.py); at once outside `follow`
    record: Callable[[Callable[[], None]], None] = field(default=lambda f: f(), repr=False)


_niced = False


def lower_priority() -> None:
    """A sensor-launched product run yields the CPU to the ingest runs when the cores are saturated
    (NAUTILUS_PRODUCT_RUN_NICE): publish -> queryable is the tighter SLA, and a product catches up from its
    subscription. Its ClickHouse queries run at the same nice value on the server's threads (one server serves
    every run). Once per process (a run is a process of its own; a test may run several in one)."""
    global _niced
    if not _niced and STREAM.product_run_nice:
        os.nice(int(STREAM.product_run_nice))
        lower_query_priority(int(STREAM.product_run_nice))
        _niced = True


def follow(
    context,
    config: FollowConfig,
    pulsar_res: PulsarResource,
    subscription: str,
    apply: Callable[[Changes], None],
    topics: tuple[str, ...] = (),
    warm: Callable[[], None] | None = None,
) -> int:
    """Batches of change announcements (and `topics`' messages) until the run should stop. Returns batches.
    `warm` runs before the run takes the subscription over: a successor's start-up work (reads, imports) then
    happens while its predecessor still commits, not in the first batch after the hand-over."""
    tag = context.run.tags.get(BATCH_TAG)
    one_shot = tag is None
    if not one_shot:
        lower_priority()
    prefix = tag or context.run.run_id
    if warm is not None:
        warm()
    handover.take_over(context.instance, context.run, STREAM.handover_wait_s, log=context.log.info)
    started = last_data = time.monotonic()
    batches, checked, reason = 0, {"look": started}, None
    try:
        with pulsar_res.client() as client:
            consumer = changes.subscribe(client, subscription, list(topics))
            recorder = Recorder(lambda items: [f() for f in items])
            try:
                while True:
                    if one_shot:
                        msgs = receive(
                            consumer,
                            config.max_messages,
                            max(config.max_wait_seconds, 5.0),
                            first_ms=FIRST_MESSAGE_WAIT_MS if batches == 0 else 0,
                        )
                        if not msgs and batches:
                            reason = "drained"
                            break
                    else:
                        if (reason := stop_reason(context, started, last_data, batches, config, checked)) is not None:
                            break
                        msgs = receive_window(consumer, config.max_messages, config.max_wait_seconds)
                        if not msgs and batches:
                            continue
                    mine = [m for m in msgs if m.topic_name().endswith(BARS_CHANGES.split("://", 1)[1])]
                    since, upstream, bad = changes.since_by_instrument([m.data() for m in mine])
                    if bad:
                        context.log.warning(f"skipped {bad} messages on {BARS_CHANGES} that are not announcements")
                    ids = set(map(id, mine))
                    batch = Changes(
                        f"{prefix}.{batches + 1}",
                        since,
                        upstream,
                        [m for m in msgs if id(m) not in ids],
                        client,
                        bad,
                        first=batches == 0,
                        oldest_ms=min((m.publish_timestamp() for m in mine), default=0),
                        record=recorder.submit,
                    )
                    apply(batch)
                    for m in msgs:
                        consumer.acknowledge(m)
                    batches += 1
                    if msgs:
                        last_data = time.monotonic()
                    if config.max_batches and batches >= config.max_batches:
                        reason = f"batch bound ({batches})"
                        break
            finally:
                try:
                    recorder.close(raise_error=sys.exc_info()[0] is None)  # never masks the error that ends the run
                finally:
                    consumer.close()
    finally:
        handover.release(context.instance, context.run.run_id)
    context.log.info(f"streaming run ends ({reason}) after {batches} batches")
    return batches


def log_batch(
    context,
    key: dg.AssetKey,
    batch: Changes,
    metadata: dict,
    checks: dict[str, tuple[bool, dict]],
    later: Callable[[], dict] | None = None,
) -> None:
    """One batch of a streaming product in Dagster: its materialization (the batch id as data version, its cost
    and how far behind its upstream it ran) and each check's evaluation {name: (passed, metadata)}, measured now
    and logged through `batch.record`; `later` gives more metadata there (a plot: seconds of CPU that the next
    batch need not wait for)."""
    batch_id, ch1 = batch.batch_id, session_counters()
    metadata = {
        **metadata,
        "batch_id": batch_id,
        "seconds_batch": round(time.perf_counter() - batch.started, 3),
        "seconds_clickhouse": round(ch1["seconds"] - batch.ch0["seconds"], 3),
        "seconds_clickhouse_connect": round(ch1["connect"] - batch.ch0["connect"], 3),
    }
    if batch.oldest_ms:
        metadata["seconds_behind_upstream"] = round(time.time() - batch.oldest_ms / 1000, 3)
    checks_ = [
        dg.AssetCheckEvaluation(asset_key=key, check_name=name, passed=passed, metadata={**meta, "batch_id": batch_id})
        for name, (passed, meta) in checks.items()
    ]

    def record() -> None:
        more = later() if later is not None else {}
        context.log_event(
            dg.AssetMaterialization(
                key, metadata={**metadata, **more}, tags={"dagster/data_version": batch_id, "dagster/code_version": "1"}
            )
        )
        for e in checks_:
            context.log_event(e)

    batch.record(record)


def follow_job(name: str, assets_def: dg.AssetsDefinition) -> dg.UnresolvedAssetJobDefinition:
    """The job of one streaming product: its assets and their checks, one in-process step, the run lifetime's
    max runtime, and the `nautilus/topic` tag that lets a run and its successor (only) run at once."""
    return dg.define_asset_job(
        f"stream_{name}",
        selection=job_selection(assets_def),
        executor_def=dg.in_process_executor,
        tags={
            "nautilus/topic": name,
            "dagster/max_runtime": STREAM.run_max_runtime_s,
            **priority_tags("streaming_products"),
        },
        description=f"{name}: batches of the bars' change feed, back to back for the run's lifetime",
    )
