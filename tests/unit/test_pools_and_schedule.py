"""Pools sized from the engine shares, run priorities, and the end-of-day replay schedule (no services needed)."""

from datetime import UTC, datetime

import dagster as dg

from nautilus_assets.definitions import defs
from nautilus_assets.market_data.daily import KEY as BARS_1D
from nautilus_assets.ml.assets import KEY as ML
from nautilus_assets.pools import (
    ENGINE_SHARES,
    POOL_LIMITS,
    POOL_OF_ENGINE,
    PRIORITY,
    PRIORITY_TAG,
    pool_shares,
)
from nautilus_assets.portfolio.daily import KEY as NAV
from nautilus_assets.risk.assets import KEY as RISK
from nautilus_assets.risk.assets import KEYS as RISK_KEYS


def test_pool_limits_derive_from_the_engine_shares():
    assert sum(ENGINE_SHARES.values()) == 100 and set(POOL_OF_ENGINE) == set(ENGINE_SHARES)
    assert pool_shares() == {"clickhouse": 55, "postgres": 23, "mlx": 15, "lake": 7}
    # lake: ceil(7% x 20) = 2, raised to its floor of 9 (four feeds' long-lived runs, each with a successor at
    # handover, and the lake maintenance)
    assert POOL_LIMITS == {"clickhouse": 11, "postgres": 5, "mlx": 3, "lake": 9}


def test_every_materializable_asset_is_in_a_backend_pool():
    ag = defs.resolve_asset_graph()
    pools = {k: ag.get(k).pools for k in ag.get_all_asset_keys() if ag.get(k).is_materializable}
    assert pools and all(p and p <= set(POOL_LIMITS) for p in pools.values()), pools
    assert set().union(*pools.values()) == set(POOL_LIMITS)


def test_market_data_ingest_runs_have_the_highest_priority():
    repo = defs.get_repository_def()
    top = max(PRIORITY.values())
    for job in ("ingest_trades", "ingest_quotes"):
        assert int(repo.get_job(job).tags[PRIORITY_TAG]) == top == PRIORITY["market_data_ingest"]
    daily = repo.get_sensor_def("products_automation")
    for job in ("stream_market_analytics", "stream_market_microstructure", "stream_portfolio_states"):
        assert int(repo.get_job(job).tags[PRIORITY_TAG]) == PRIORITY["streaming_products"] < top
    assert int(daily.run_tags[PRIORITY_TAG]) == PRIORITY["end_of_day"] < PRIORITY["streaming_products"]


def test_day_level_backfill_policies():
    ag = defs.resolve_asset_graph()
    for key in (BARS_1D, NAV, RISK):  # one run per range: each reads and writes a date range in one go
        assert ag.get(key).backfill_policy == dg.BackfillPolicy.single_run(), key
    assert ag.get(ML).backfill_policy.max_partitions_per_run == 1  # one model version per day


def test_eod_schedule_replays_the_previous_trading_day():
    sched = defs.get_repository_def().get_schedule_def("eod_replay_schedule")
    assert sched.cron_schedule == "30 0 * * *" and sched.execution_timezone in (None, "UTC")
    assert sched.default_status == dg.DefaultScheduleStatus.RUNNING
    job = defs.resolve_job_def(sched.job_name)
    assert set(job.asset_layer.selected_asset_keys) == {BARS_1D, NAV, *RISK_KEYS, ML}
    with dg.instance_for_test() as inst:
        for tick, day in (
            (datetime(2026, 11, 25, 0, 30, tzinfo=UTC), "2026-11-24"),
            (datetime(2026, 3, 1, 0, 30, tzinfo=UTC), "2026-02-28"),
        ):
            ctx = dg.build_schedule_context(instance=inst, scheduled_execution_time=tick)
            [req] = sched.evaluate_tick(ctx).run_requests
            assert req.partition_key == day, (tick, req.partition_key)
