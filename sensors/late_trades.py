"""Late trades reach the day-level products: a trade for an earlier day recomputes its minute bar in the ingest batch,
and that batch's bars materialization names the closed dates it touched (CLOSED_DATES); this sensor reads those
materializations after its cursor (the event storage id, so none is read twice or missed) and requests one
`late_trades_replay` run per date: that day's bars_1d, NAV and risk from the stored data again. Its first evaluation
starts from the latest materialization, not from the instance's whole history."""

from datetime import UTC, datetime

import dagster as dg

from nautilus_assets.market_data.assets import BARS_KEY, CLOSED_DATES
from nautilus_assets.product import TRADING_DAYS
from nautilus_assets.replay import LATE_TRADES_JOB

PAGE = 5000  # materializations read per evaluation; a longer backlog is read over the next ones


def late_dates(records, today: str) -> list[str]:
    """The closed dates the records name that are partitions of the day-level products."""
    first = TRADING_DAYS.start.strftime("%Y-%m-%d")
    named = {
        d
        for r in records
        for d in str(getattr(r.asset_materialization.metadata.get(CLOSED_DATES), "value", "") or "").split(",")
        if d
    }
    return sorted(d for d in named if first <= d < today)


@dg.sensor(
    name="late_trades_sensor",
    job=LATE_TRADES_JOB,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-runs an earlier day's bars_1d, NAV and risk when late trades reached that day",
)
def late_trades_sensor(context: dg.SensorEvaluationContext):
    if context.cursor is None:  # first evaluation: from now on (the end-of-day replay covers the day before)
        latest = context.instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=BARS_KEY), limit=1).records
        context.update_cursor(str(latest[0].storage_id if latest else 0))
        return dg.SkipReason("first evaluation: looking at bars materialized from now on")
    after = int(context.cursor)
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=BARS_KEY, after_storage_id=after), limit=PAGE, ascending=True
    ).records
    if not records:
        return dg.SkipReason("no bars materialized since the last look")
    last = records[-1].storage_id
    context.update_cursor(str(last))
    dates = late_dates(records, datetime.now(UTC).strftime("%Y-%m-%d"))
    if not dates:
        return dg.SkipReason(f"{len(records)} bars materializations, none adding to an earlier day")
    return [
        dg.RunRequest(
            run_key=f"late-{d}-{last}",
            partition_key=d,
            tags={"nautilus/trigger": f"late trades for {d} (bars materializations up to {last})"},
        )
        for d in dates
    ]
