"""One sensor per source topic launches the topic's long-lived ingest run when messages are pending.

A run commits micro-batches back to back for its lifetime (NAUTILUS_RUN_LIFETIME_SECONDS) and ends earlier when
idle. With no run in flight, pending messages launch one at once: pending comes from the broker (admin API, else
Prometheus metrics); where the broker cannot tell, a timer launches one; a safety interval launches one
regardless (a restarted broker may not report its persisted backlog). With one run in flight, its successor is
launched NAUTILUS_HANDOVER_LEAD_SECONDS before its lifetime ends and takes the subscription over from it
(nautilus_assets/market_data/handover.py): one consumer per topic, and no gap of a run launch between runs.

Watchdog: an in-flight run whose process is gone is reported failed, so its batch is requested again at once.
The default run launcher has no worker health check; the code server that launched a run reports it failed
when its process dies, but nothing does when that code server died too (the run would stay STARTED until
`dagster/max_runtime`). So each tick checks the topic's STARTED run: with the default run launcher the run's
process (pid of its RUN_START event, on this host: runs are children of the code server evaluating this
sensor) must be alive and not a newer process reusing the pid; with any launcher, the run must have logged an
event within NAUTILUS_WATCHDOG_SILENT_SECONDS (default 300; a long-lived run logs every batch). A killed run also
never releases the pool slot its step claimed: the sensor frees the slots of the topic's finished runs before
requesting the next batch.
"""

import json
import os
import time
from datetime import UTC, datetime

import dagster as dg

from nautilus_assets.market_data.assets import BATCH_TAG, INGEST_JOBS, STREAM
from nautilus_assets.market_data.handover import (
    PREDECESSOR_TAG,
    SUCCESSOR_WANTED_TAG,
    successor_due,
)
from nautilus_assets.market_data.schema import FEEDS, SUBSCRIPTION, Feed
from resources.pulsar import PulsarResource
from resources.settings import load

SENSORS = load().sensors
# dagster._core.storage.dagster_run's status groups, from the public enum
FINISHED_STATUSES = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
NOT_FINISHED_STATUSES = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.SUSPENDED,
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
]


def decide(
    backlog, since_request: float, since_last_run_end, *, timer_s: float, safety_s: float, staleness_s: float
) -> str | None:
    """Why a batch is due now, or None. Pure, so the policy is unit-testable."""
    if backlog is None:
        return "timer: broker cannot report a backlog" if since_request >= timer_s else None
    if backlog > 0:
        if since_last_run_end is not None and since_last_run_end < staleness_s:
            return None  # the broker's figure predates the batch that just finished
        return f"backlog: {backlog} pending"
    return "safety: periodic batch regardless of reported backlog" if since_request >= safety_s else None


def process_alive(pid: int, not_after: float | None = None) -> bool:
    """Whether pid is a live process (not a zombie) that started no later than `not_after` (epoch s)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: existence only
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    fields_ = stat.rsplit(")", 1)[1].split()
    if fields_[0] in ("Z", "X"):
        return False
    if not_after is not None:
        btime = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
        started = btime + int(fields_[19]) / os.sysconf("SC_CLK_TCK")
        if started > not_after + 2:  # btime has 1 s resolution
            return False  # the pid was reused by a newer process
    return True


def dead_run_reason(instance: dg.DagsterInstance, record, now: float, silent_s: float) -> str | None:
    """Why an in-flight run is dead (its worker is gone), or None if it is (or may be) alive."""
    run = record.dagster_run
    if run.status != dg.DagsterRunStatus.STARTED:
        return None  # queued runs wait; run monitoring's start timeout covers STARTING
    if isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        start = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
        event = start[0].event_log_entry if start else None
        pid = event.dagster_event.pid if event and event.dagster_event else None
        if pid and not process_alive(pid, not_after=event.timestamp):
            return f"its process (pid {pid}) is gone"
    last = instance.get_records_for_run(run.run_id, limit=1, ascending=False).records
    last_ts = last[0].timestamp if last else (record.start_time or record.create_timestamp.timestamp())
    if now - last_ts > silent_s:
        return f"it logged nothing for {now - last_ts:.0f}s"
    return None


def free_leaked_slots(instance: dg.DagsterInstance, job_name: str) -> list[str]:
    """Free the pool slots still claimed by finished runs of the job: a killed run never releases its step's
    slot, and with the ingest pool full no further batch would start (run monitoring frees them too, later)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    held = storage.get_concurrency_run_ids()
    if not held:
        return []
    done = instance.get_run_records(
        dg.RunsFilter(run_ids=list(held), job_name=job_name, statuses=list(FINISHED_STATUSES))
    )
    for r in done:
        storage.free_concurrency_slots_for_run(r.dagster_run.run_id)
    return [r.dagster_run.run_id for r in done]


def _backlog(pulsar: PulsarResource, topics: tuple[str, ...], subscription: str) -> int | None:
    """Pending messages of the subscription over its topics; None when the broker cannot tell for any."""
    counts = [pulsar.backlog(t, subscription) for t in topics]
    known = [c for c in counts if c is not None]
    return sum(known) if known else None


def build_ingest_sensor(feed: Feed, job) -> dg.SensorDefinition:
    return build_stream_sensor(
        f"{feed.name}_ingest_sensor",
        feed.name,
        (feed.topic,),
        SUBSCRIPTION,
        job,
        f"Launches the long-lived ingest run of {feed.topic} when messages are pending, "
        "and its successor before its lifetime ends",
    )


def build_stream_sensor(
    sensor_name: str, name: str, topics: tuple[str, ...], subscription: str, job, description: str
) -> dg.SensorDefinition:
    """The sensor of one long-lived consumer job (an ingest feed or a streaming product): watchdog, successor
    before the lifetime ends, and a new run when the subscription has a backlog."""
    label = ", ".join(topics)

    @dg.sensor(
        name=sensor_name,
        job=job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=int(SENSORS.interval_s),
        description=description,
    )
    def _sensor(context: dg.SensorEvaluationContext, pulsar: PulsarResource):
        now = time.time()
        alive = []
        for rec in context.instance.get_run_records(
            dg.RunsFilter(job_name=job.name, statuses=list(NOT_FINISHED_STATUSES)), limit=3
        ):
            dead = dead_run_reason(context.instance, rec, now, STREAM.watchdog_silent_s)
            if dead is None:
                alive.append(rec)
                continue
            context.log.warning(f"watchdog: run {rec.dagster_run.run_id} is dead ({dead}); failing it")
            context.instance.report_run_failed(rec.dagster_run, f"Nautilus watchdog: {dead}; its batch will be re-run")
        for run_id in free_leaked_slots(context.instance, job.name):
            context.log.info(f"freed the pool slots still held by finished run {run_id}")
        cursor = json.loads(context.cursor) if context.cursor else {"seq": 0, "last_request": 0.0}
        extra_tags = {}
        if len(alive) > 1:
            return dg.SkipReason(f"{label}: a run and its successor are in flight")
        if alive:
            current = alive[0]
            if not successor_due(current, now, STREAM.run_lifetime_s, STREAM.handover_lead_s):
                return dg.SkipReason(f"run {current.dagster_run.run_id} for {label} is in flight")
            wanted = current.dagster_run.tags.get(SUCCESSOR_WANTED_TAG)
            reason = (
                f"handover: run {current.dagster_run.run_id} "
                f"{f'wants a successor ({wanted})' if wanted else 'nears the end of its lifetime'}"
            )
            extra_tags[PREDECESSOR_TAG] = current.dagster_run.run_id
        else:
            last = context.instance.get_run_records(dg.RunsFilter(job_name=job.name), limit=1)
            last_end = last[0].end_time if last and last[0].end_time else None
            backlog = _backlog(pulsar, topics, subscription)
            # timer and safety count from the later of the last request and the last run's end: a long-lived run
            # that just idled out has looked at the subscription for its whole life
            since = now - max(cursor["last_request"], last_end or 0.0)
            reason = decide(
                backlog,
                since,
                None if last_end is None else now - last_end,
                timer_s=SENSORS.timer_s,
                safety_s=SENSORS.safety_s,
                staleness_s=0 if pulsar.admin_url else SENSORS.backlog_staleness_s,
            )
            if reason is None:
                return dg.SkipReason(f"nothing pending on {label} (backlog {backlog})")
        seq = cursor["seq"] + 1
        batch_id = f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{seq}"
        context.update_cursor(json.dumps({"seq": seq, "last_request": now}))
        return dg.RunRequest(
            run_key=batch_id,
            tags={BATCH_TAG: batch_id, "nautilus/topic": name, "nautilus/trigger": reason, **extra_tags},
        )

    return _sensor


INGEST_SENSORS = [build_ingest_sensor(FEEDS[name], job) for name, job in INGEST_JOBS.items()]
