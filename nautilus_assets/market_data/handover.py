"""Handing a topic's subscription from one long-lived ingest run to the next without a gap or a second consumer.

The sensor launches the successor `handover_lead_s` before the running one's lifetime ends, tagged with its
predecessor. Launching costs seconds to minutes on a loaded machine; meanwhile the predecessor keeps committing.
Once started, the successor asks for the subscription (tags the predecessor); the predecessor finishes the batch
in hand, acknowledges it, closes its consumer and tags itself released; then the successor subscribes. The
gap is one poll of the run's tags, not a run launch. Through the Dagster instance only: no other channel."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import dagster as dg

PREDECESSOR_TAG = "nautilus/predecessor"  # on a successor: the run it takes over from
HANDOVER_TAG = "nautilus/handover_to"  # on a predecessor: the successor waiting for the subscription
RELEASED_TAG = "nautilus/released"  # on a predecessor: its consumer is closed, every batch acknowledged
SUCCESSOR_WANTED_TAG = "nautilus/successor_wanted"  # on a run: wants its successor before its lifetime ends (why)
POLL_S = 0.2


def handover_requested(instance: dg.DagsterInstance, run_id: str) -> str | None:
    run = instance.get_run_by_id(run_id)
    return run.tags.get(HANDOVER_TAG) if run else None


def release(instance: dg.DagsterInstance, run_id: str) -> None:
    instance.add_run_tags(run_id, {RELEASED_TAG: f"{time.time():.3f}"})


def take_over(
    instance: dg.DagsterInstance, run: dg.DagsterRun, wait_s: float, log: Callable[[str], None] = print
) -> float:
    """Called by a successor before it subscribes: ask the predecessor for the subscription, wait until it has
    released it (or ended). Returns the seconds waited. After `wait_s` it goes on anyway (the subscription is
    Shared and both sinks de-duplicate, so two consumers for a moment cost nothing but a warning)."""
    pred_id = run.tags.get(PREDECESSOR_TAG)
    if not pred_id:
        return 0.0
    t0 = time.monotonic()
    pred = instance.get_run_by_id(pred_id)
    if pred is None or pred.is_finished:
        return 0.0
    instance.add_run_tags(pred_id, {HANDOVER_TAG: run.run_id})
    while time.monotonic() - t0 < wait_s:
        pred = instance.get_run_by_id(pred_id)
        if pred is None or pred.is_finished or RELEASED_TAG in pred.tags:
            waited = time.monotonic() - t0
            log(f"took over the subscription from run {pred_id} after {waited:.2f}s")
            return waited
        time.sleep(POLL_S)
    log(f"run {pred_id} did not release the subscription within {wait_s:.0f}s; consuming beside it")
    return time.monotonic() - t0


def successor_due(record, now: float, lifetime_s: float, lead_s: float) -> bool:
    """Whether the sensor should launch the successor of this in-flight run now. Pure, for unit tests."""
    run = record.dagster_run
    if run.status != dg.DagsterRunStatus.STARTED or RELEASED_TAG in run.tags or HANDOVER_TAG in run.tags:
        return False
    if SUCCESSOR_WANTED_TAG in run.tags:
        return True
    started = record.start_time or record.create_timestamp.timestamp()
    return now >= started + lifetime_s - lead_s


def rss_mb() -> float:
    """This process's resident memory (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0
