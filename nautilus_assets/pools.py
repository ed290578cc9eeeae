"""Resource pools and run priorities: the source architecture's per-engine resource shares become one Dagster
concurrency pool per backend, and latency-critical runs are dequeued (and claim pool slots) first.

One table says it all. Each engine of the source architecture maps to the Nautilus backend that took over its
role; a pool's share is the sum of its engines' shares, and its limit is ceil(share x STEP_BUDGET) concurrent
steps (ceil, so no pool with a share gets zero slots):

    engine (share)                      pool        share   slots (budget 20)
    ClickHouse 35%, Druid 20% (OLAP)     clickhouse  55%     11
    PostgreSQL 20%, Redis 3% (state)     postgres    23%      5
    Flink 15% (stream compute)           mlx         15%      3
    Pulsar 5%, MinIO 2% (land the feed)  lake         7%      2 -> 9 (floor)

`nautilus setup` applies the limits to the instance (what `dagster instance concurrency set <pool> <n>` does);
dagster.yaml holds only the default for pools nobody declared. Pools are enforced per step (op granularity):
a step waits for a slot of its pool, in priority order (run priority + step priority).

Floors: an ingest step holds its `lake` slot for the whole life of its long-lived run, and during a handover a
topic's run and its successor both hold one, so `lake` needs two slots per market-data feed (trades, quotes, order
book, news), and one more for the scheduled lake maintenance."""

from __future__ import annotations

import math

ENGINE_SHARES = {"ClickHouse": 35, "Druid": 20, "PostgreSQL": 20, "Flink": 15, "Pulsar": 5, "Redis": 3, "MinIO": 2}
POOL_OF_ENGINE = {
    "ClickHouse": "clickhouse",
    "Druid": "clickhouse",
    "PostgreSQL": "postgres",
    "Redis": "postgres",
    "Flink": "mlx",
    "Pulsar": "lake",
    "MinIO": "lake",
}
STEP_BUDGET = 20  # concurrent steps the platform's backends are sized for, all pools together


def pool_shares() -> dict[str, int]:
    shares: dict[str, int] = {}
    for engine, pct in ENGINE_SHARES.items():
        shares[POOL_OF_ENGINE[engine]] = shares.get(POOL_OF_ENGINE[engine], 0) + pct
    return shares


POOL_FLOORS = {"lake": 2 * 4 + 1}  # (run + successor) x (trades, quotes, order book, news), + lake maintenance


def pool_limits(budget: int = STEP_BUDGET) -> dict[str, int]:
    """Pool -> concurrent steps: ceil(share x budget), at least the pool's floor."""
    return {pool: max(math.ceil(pct * budget / 100), POOL_FLOORS.get(pool, 0)) for pool, pct in pool_shares().items()}


POOL_LIMITS = pool_limits()

# Run priorities (`dagster/priority`; higher is dequeued first and claims pool slots first).
PRIORITY_TAG = "dagster/priority"
PRIORITY = {
    "market_data_ingest": 10,  # Pulsar micro-batches: every downstream product waits on them
    "streaming_products": 5,  # analytics, microstructure, positions (minute SLAs)
    "end_of_day": 0,  # daily bars, NAV, risk, ML (previous day by 01:00 UTC)
    "backfill": -5,  # history backfills and replays of old days
}


def priority_tags(kind: str) -> dict[str, str]:
    return {PRIORITY_TAG: str(PRIORITY[kind])}


def apply_pool_limits(instance, limits: dict[str, int] | None = None) -> dict[str, int]:
    """Set each pool's slot count on the instance (idempotent): `dagster instance concurrency set` per pool."""
    limits = POOL_LIMITS if limits is None else limits
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        raise RuntimeError("the instance storage does not support concurrency pools (run `dagster instance migrate`)")
    for pool, n in limits.items():
        storage.set_concurrency_slots(pool, n)
    return dict(limits)
