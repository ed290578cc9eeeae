"""Scheduled upkeep of the market-data stores, off the hot path.

Lake maintenance: every micro-batch appends a file per date partition, so the bronze tables are compacted
(`optimize.compact` on each partition holding more than NAUTILUS_LAKE_MAX_FILES_PER_PARTITION files), given a
checkpoint (a batch then reads one checkpoint plus the newest commits, not the whole log) and vacuumed with a
retention of NAUTILUS_LAKE_RETENTION_DAYS, so time travel reaches that far back. Compaction rewrites files with the
same rows and statistics, so the ingest runs' de-duplication (file statistics on the id columns) is unaffected, and
appends committed meanwhile do not conflict with it.

Integrity: the whole-table uniqueness of message ids and trade ids, which the per-batch checks (the batch's id span
only) leave out, as asset checks on their own schedule."""

from collections import Counter

import dagster as dg
import pyarrow as pa

from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource
from resources.settings import load

from . import checks
from .assets import DELTAS_KEY, NEWS_KEY, QUOTES_KEY, SCHEDULED_CHECK, TRADES_KEY
from .schema import FEEDS, NEWS, ORDERBOOK_DELTAS, ORDERBOOK_DEPTH10, QUOTES, TRADES
from .sinks import bronze_table


def files_per_partition(dt) -> Counter:
    actions = pa.table(dt.get_add_actions(flatten=True))  # an arro3 table: through the Arrow C stream interface
    return Counter(str(d) for d in actions["partition.date"].to_pylist()) if actions.num_rows else Counter()


def maintain(lake: LakeResource, table: str, max_files: int, retention_days: float, log=print) -> dict:
    """Compact the partitions over `max_files` files, checkpoint, vacuum; returns what was done."""
    dt = lake.table(table)
    if dt is None:
        return {"table": table, "exists": False}
    before = files_per_partition(dt)
    compacted = {}
    for date, n in sorted(before.items()):
        if n > max_files:
            m = dt.optimize.compact(partition_filters=[("date", "=", date)])
            compacted[date] = {"files_before": n, "removed": m.get("numFilesRemoved"), "added": m.get("numFilesAdded")}
            log(f"{table} date={date}: compacted {n} files into {m.get('numFilesAdded')}")
    dt.create_checkpoint()
    vacuumed = dt.vacuum(retention_hours=int(retention_days * 24), dry_run=False, enforce_retention_duration=False)
    dt.cleanup_metadata()
    after = files_per_partition(dt)
    return {
        "table": table,
        "version": dt.version(),
        "partitions": len(after),
        "compacted": compacted,
        "max_files_per_partition": max(after.values(), default=0),
        "files_vacuumed": len(vacuumed),
    }


@dg.op(pool="lake", description="Compact, checkpoint and vacuum every bronze Delta table")
def compact_checkpoint_vacuum(context: dg.OpExecutionContext, lake: LakeResource) -> dict:
    s = load().lake
    out = {
        f.name: maintain(lake, bronze_table(f), s.max_files_per_partition, s.retention_days, context.log.info)
        for f in (*FEEDS.values(), ORDERBOOK_DEPTH10)
    }
    for name, r in out.items():
        context.add_output_metadata(
            {
                f"{name}_max_files_per_partition": r.get("max_files_per_partition", 0),
                f"{name}_files_vacuumed": r.get("files_vacuumed", 0),
                f"{name}_partitions_compacted": len(r.get("compacted", {})),
            }
        )
    return out


@dg.job(description="Lake maintenance: compaction, checkpoints and vacuum of the bronze tables")
def lake_maintenance_job():
    compact_checkpoint_vacuum()


def _uniqueness_check(feed, key):
    @dg.asset_check(
        asset=key,
        name=SCHEDULED_CHECK,
        blocking=False,
        description="No message id (trades: no instrument trade id) twice in the whole ClickHouse table; "
        "scheduled, since a whole-table query has no place in a micro-batch",
    )
    def _check(clickhouse: ClickHouseResource) -> dg.AssetCheckResult:
        d = checks.duplicate_ids_in_table(clickhouse, feed)
        return dg.AssetCheckResult(passed=d["duplicate_message_ids"] == 0 and d["duplicate_trade_ids"] == 0, metadata=d)

    return _check


INTEGRITY_CHECKS = [
    _uniqueness_check(TRADES, TRADES_KEY),
    _uniqueness_check(QUOTES, QUOTES_KEY),
    _uniqueness_check(ORDERBOOK_DELTAS, DELTAS_KEY),
    _uniqueness_check(NEWS, NEWS_KEY),
]
INTEGRITY_JOB = dg.define_asset_job(
    "market_data_integrity",
    selection=dg.AssetSelection.checks(*INTEGRITY_CHECKS),
    description="Whole-table uniqueness checks of the market-data feed",
)
SCHEDULES = [
    dg.ScheduleDefinition(
        name="lake_maintenance_schedule",
        job=lake_maintenance_job,
        cron_schedule="7 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        execution_timezone="UTC",
        description="Hourly: compact, checkpoint and vacuum the bronze tables",
    ),
    dg.ScheduleDefinition(
        name="market_data_integrity_schedule",
        job=INTEGRITY_JOB,
        cron_schedule="37 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        execution_timezone="UTC",
        description="Hourly: whole-table uniqueness of the feed's ids",
    ),
]
