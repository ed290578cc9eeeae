"""End-of-day replay: at 00:30 UTC a schedule re-materializes the previous trading day's day-level chain
(daily bars -> NAV -> risk -> ML) from stored data, in one run, so trades that arrived late are in.

Nothing on this path reads Pulsar: daily bars replay the lake's bronze Delta trades for the date; NAV reads the
portfolio store's fills (PostgreSQL) and the daily closes the same run just wrote; risk reads NAV and closes;
ML reads the stored analytics and microstructure products. A date range (a backfill) runs as one run per asset
where the backend allows it (`BackfillPolicy.single_run()` on bars_1d, daily_nav, risk_metrics/*: each
reads and writes a range in one query/transaction) and one day per run for ML (a model version per day)."""

import warnings

import dagster as dg

from nautilus_assets.market_data.daily import bars_1d
from nautilus_assets.ml.assets import next_bar_direction
from nautilus_assets.pools import priority_tags
from nautilus_assets.portfolio.daily import daily_nav
from nautilus_assets.product import TRADING_DAYS, job_selection
from nautilus_assets.risk.assets import risk_metrics

DAY_CHAIN = [bars_1d, daily_nav, risk_metrics, next_bar_direction]
# The job mixes single-run assets with ML's one-day-per-run policy; Dagster warns and takes the stricter one,
# which is moot here: the schedule requests one day per run.
warnings.filterwarnings("ignore", message="Asset job eod_replay materializes assets with varying BackfillPolicies")
EOD_REPLAY_JOB = dg.define_asset_job(
    "eod_replay",
    selection=job_selection(*DAY_CHAIN),
    partitions_def=TRADING_DAYS,
    tags=priority_tags("end_of_day"),
    description="Re-materialize one trading day's day-level products from the lake and the stores (no Pulsar)",
)
# A late trade for an earlier day (sensors/late_trades.py): that day's bars, NAV and risk again, in one run. ML's
# prediction for a past day stays the one made then (its features are the streaming products', already recomputed).
LATE_CHAIN = [bars_1d, daily_nav, risk_metrics]
LATE_TRADES_JOB = dg.define_asset_job(
    "late_trades_replay",
    selection=job_selection(*LATE_CHAIN),
    partitions_def=TRADING_DAYS,
    tags=priority_tags("end_of_day"),
    description="Re-materialize an earlier day's bars_1d, NAV and risk after late trades reached it",
)
EOD_REPLAY = dg.build_schedule_from_partitioned_job(
    EOD_REPLAY_JOB,
    name="eod_replay_schedule",
    hour_of_day=0,
    minute_of_hour=30,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="00:30 UTC: replay the previous trading day (the last complete partition) from the lake",
)
