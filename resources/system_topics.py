"""Platform messages on the `nautilus/system` namespace: one event per materialization (system/events, for
cross-engine routing) and an alert per micro-batch that quarantined messages (system/alerts). JSON, UTF-8, under
each topic's registered schema (resources/schemas.py)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

import orjson
import pulsar

from . import schemas
from .pulsar import PulsarResource
from .topics import SYSTEM_ALERTS, SYSTEM_EVENTS

EVENT_SCHEMA = "nautilus.system.event/1"
ALERT_SCHEMA = "nautilus.system.alert/1"


def publish(pulsar: PulsarResource | pulsar.Client, topic: str, messages: Iterable[tuple[dict, str | None]]) -> int:
    """Send (message, partition key) pairs synchronously, on an open client or a new one, under the topic's
    schema; raises if the broker does not take one."""
    if isinstance(pulsar, PulsarResource):
        with pulsar.client() as client:
            return publish(client, topic, messages)
    n = 0
    producer = schemas.create_producer(pulsar, topic, block_if_queue_full=True, batching_enabled=False)
    try:
        for msg, key in messages:
            producer.send(orjson.dumps(msg, default=str), partition_key=key)
            n += 1
    finally:
        producer.close()
    return n


def quarantine_alert(
    topic: str, batch_id: str, consumed: int, valid: int, quarantine: list[dict], sample: int = 5
) -> dict:
    """The alert for one batch's quarantined messages: counts, reasons, a few message ids."""
    reasons = Counter(str(q.get("reason", "")).split(":", 1)[0] for q in quarantine)
    # another message under a stored message id means the broker's ids restarted under a kept store: act now
    severity = "critical" if "changed_content" in reasons else "warning"
    return {
        "schema": ALERT_SCHEMA,
        "type": "quarantine",
        "severity": severity,
        "topic": topic,
        "batch_id": batch_id,
        "consumed": consumed,
        "valid": valid,
        "quarantined": len(quarantine),
        "reasons": dict(reasons.most_common()),
        "examples": [{"message_id": q.get("message_id"), "reason": q.get("reason")} for q in quarantine[:sample]],
        "ts": time.time_ns(),
    }


def publish_quarantine_alert(
    pulsar: PulsarResource | pulsar.Client, topic: str, batch_id: str, consumed: int, valid: int, quarantine: list[dict]
) -> dict | None:
    if not quarantine:
        return None
    alert = quarantine_alert(topic, batch_id, consumed, valid, quarantine)
    publish(pulsar, SYSTEM_ALERTS, [(alert, topic)])
    return alert


def _scalar(v):
    """A metadata value as JSON, when it is small and scalar; None to leave it out of the summary."""
    value = getattr(v, "value", v)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, str):
        return value if len(value) <= 200 else None
    return None


def materialization_event(record) -> dict:
    """An EventLogRecord of an ASSET_MATERIALIZATION as the system/events message."""
    entry = record.event_log_entry
    mat = entry.dagster_event.step_materialization_data.materialization
    summary = {k: s for k, v in (mat.metadata or {}).items() if (s := _scalar(v)) is not None}
    return {
        "schema": EVENT_SCHEMA,
        "type": "asset_materialization",
        "event_id": record.storage_id,
        "asset_key": mat.asset_key.to_user_string(),
        "partition": mat.partition,
        "run_id": entry.run_id,
        "job_name": entry.job_name,
        "step_key": entry.step_key,
        "data_version": (mat.tags or {}).get("dagster/data_version"),
        "code_version": (mat.tags or {}).get("dagster/code_version"),
        "timestamp": entry.timestamp,
        "metadata": summary,
    }


def publish_events(pulsar: PulsarResource, events: list[dict]) -> int:
    return publish(pulsar, SYSTEM_EVENTS, [(e, e["asset_key"]) for e in events])
