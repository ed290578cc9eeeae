"""Every materialization, announced on persistent://nautilus/system/events (cross-engine routing).

The sensor reads the instance's ASSET_MATERIALIZATION records after its cursor (the last storage id it
published), publishes one JSON event per materialization (asset key, partition, run id, data version, a
summary of the scalar metadata, timestamp; keyed by asset key), then moves the cursor. At least once: a tick
that fails after publishing re-publishes; `event_id` (the storage id) lets consumers drop repeats.
It launches no runs.
"""

from __future__ import annotations

import warnings

import dagster as dg

from resources.pulsar import PulsarResource
from resources.settings import load
from resources.system_topics import materialization_event, publish_events
from resources.topics import SYSTEM_EVENTS

BATCH = 500


def new_materializations(instance: dg.DagsterInstance, after: int, limit: int = BATCH) -> list:
    with warnings.catch_warnings():  # get_event_records: deprecated for 2.0, the one query across all assets
        warnings.simplefilter("ignore")
        return list(
            instance.get_event_records(
                dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION, after_cursor=after),
                limit=limit,
                ascending=True,
            )
        )


@dg.sensor(
    name="system_events_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(load().sensors.events_interval_s),
    description=f"Publishes one event per asset materialization on {SYSTEM_EVENTS}",
)
def system_events_sensor(context: dg.SensorEvaluationContext, pulsar: PulsarResource):
    cursor = int(context.cursor or 0)
    published = 0
    for _ in range(10):  # at most 10 x BATCH a tick; the rest next tick
        records = new_materializations(context.instance, cursor)
        if not records:
            break
        published += publish_events(pulsar, [materialization_event(r) for r in records])
        cursor = records[-1].storage_id
        context.update_cursor(str(cursor))
        if len(records) < BATCH:
            break
    return dg.SkipReason(
        f"published {published} materialization events (cursor {cursor})"
        if published
        else f"no new materializations after {cursor}"
    )


SYSTEM_SENSORS = [system_events_sensor]
