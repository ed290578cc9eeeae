"""One sensor per source topic requests a micro-batch run when messages are pending.

Pending comes from the broker (admin API, else Prometheus metrics). Where the broker cannot tell, a
timer requests a batch; a safety interval requests one regardless (a restarted broker may not report
its persisted backlog). Never while an ingest run for the topic is in flight: one consumer per topic.
"""

import json
import os
import time
from datetime import datetime, timezone

import dagster as dg
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from nautilus_assets.market_data.assets import BATCH_TAG, INGEST_JOBS
from nautilus_assets.market_data.schema import FEEDS, SUBSCRIPTION, Feed
from resources.pulsar import PulsarResource


def _seconds(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def decide(backlog, since_request: float, since_last_run_end, *, timer_s: float,
           safety_s: float, staleness_s: float) -> str | None:
    """Why a batch is due now, or None. Pure, so the policy is unit-testable."""
    if backlog is None:
        return "timer: broker cannot report a backlog" if since_request >= timer_s else None
    if backlog > 0:
        if since_last_run_end is not None and since_last_run_end < staleness_s:
            return None  # the broker's figure predates the batch that just finished
        return f"backlog: {backlog} pending"
    return "safety: periodic batch regardless of reported backlog" if since_request >= safety_s else None


def build_ingest_sensor(feed: Feed, job) -> dg.SensorDefinition:
    @dg.sensor(name=f"{feed.name}_ingest_sensor", job=job, default_status=dg.DefaultSensorStatus.RUNNING,
               minimum_interval_seconds=int(_seconds("NAUTILUS_SENSOR_INTERVAL_SECONDS", 4)),
               description=f"Requests a micro-batch of {feed.topic} when messages are pending")
    def _sensor(context: dg.SensorEvaluationContext, pulsar: PulsarResource):
        busy = context.instance.get_run_records(dg.RunsFilter(job_name=job.name, statuses=list(NOT_FINISHED_STATUSES)),
                                                limit=1)
        if busy:
            return dg.SkipReason(f"ingest run {busy[0].dagster_run.run_id} for {feed.topic} is still in flight")
        cursor = json.loads(context.cursor) if context.cursor else {"seq": 0, "last_request": 0.0}
        now = time.time()
        last = context.instance.get_run_records(dg.RunsFilter(job_name=job.name), limit=1)
        last_end = last[0].end_time if last and last[0].end_time else None
        backlog = pulsar.backlog(feed.topic, SUBSCRIPTION)
        reason = decide(backlog, now - cursor["last_request"], None if last_end is None else now - last_end,
                        timer_s=_seconds("NAUTILUS_TIMER_SECONDS", 30),
                        safety_s=_seconds("NAUTILUS_SAFETY_INTERVAL_SECONDS", 120),
                        staleness_s=0 if pulsar.admin_url else _seconds("NAUTILUS_BACKLOG_STALENESS_SECONDS", 0))
        if reason is None:
            return dg.SkipReason(f"nothing pending on {feed.topic} (backlog {backlog})")
        seq = cursor["seq"] + 1
        batch_id = f"{feed.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{seq}"
        context.update_cursor(json.dumps({"seq": seq, "last_request": now}))
        return dg.RunRequest(run_key=batch_id, tags={BATCH_TAG: batch_id, "nautilus/topic": feed.name,
                                                     "nautilus/trigger": reason})

    return _sensor


INGEST_SENSORS = [build_ingest_sensor(FEEDS[name], job) for name, job in INGEST_JOBS.items()]
