"""Named fault points for fault-injection tests. Inert unless NAUTILUS_FAULT_PLAN names a plan file.

The ingest code calls `point(name, feed)` at `before_delta_commit`, `after_delta_commit`, `clickhouse_write`,
`between_sinks` (ClickHouse committed, Delta maybe still writing), `before_ack` and `mid_ack` (half the batch
acknowledged). With no plan set (the settings' NAUTILUS_FAULT_PLAN), a point is one lookup.

A plan is a JSON file (the tests keep it under NAUTILUS_HOME):
    {"faults": [{"id": "f01", "feed": "trades", "point": "before_ack", "action": "kill"}, ...],
     "completed": {"trades": <epoch s of the feed's last completed batch>, ...}}
Faults of one feed fire in plan order: the feed's first unfired fault fires at its point, and only once the
feed has completed a batch since its previous fault fired (so every fault is followed by a recovery). A fault
with `"min_batch": N` fires only in the N-th or a later batch of a long-lived run (batch ids end in `.<n>`). Taking a
fault is atomic (flock on <plan>.lock), so each fires exactly once, and the firing is on disk before it acts.

Actions: `kill` (SIGKILL this process), `kill_with_parent` (SIGKILL the process that launched this run, when it
is a Dagster code server, then this one: no one is left to report the run), `raise` (FaultInjected),
`hold` (create <plan>.hold-<id>, wait until something removes it, then go on: lets a test stop a server at a
precise point of a run).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resources.settings import load

ENV = "NAUTILUS_FAULT_PLAN"
POINTS = ("before_delta_commit", "after_delta_commit", "clickhouse_write", "between_sinks", "before_ack", "mid_ack")
ACTIONS = ("kill", "kill_with_parent", "raise", "hold")
HOLD_TIMEOUT_S = 300


class FaultInjected(RuntimeError):
    """A planned fault (a simulated write error)."""


@functools.cache
def _plan() -> Path | None:
    return load().fault_plan  # once per process: a point is on the hot path


def point(name: str, feed: str, batch_id: str = "") -> None:
    """A named fault point: does nothing unless a fault plan is set and its next fault for `feed` is here."""
    if path := _plan():
        _at(path, name, feed, batch_id)


def completed(feed: str) -> None:
    """A batch of `feed` completed (acknowledged): the feed's fired faults are recovered; arms its next one."""
    if path := _plan():
        now = time.time()
        with locked(path) as plan:
            plan.setdefault("completed", {})[feed] = now
            for f in plan["faults"]:
                if f["feed"] == feed and f.get("fired_at") and not f.get("recovered_at"):
                    f["recovered_at"] = now


@contextmanager
def locked(path: Path) -> Iterator[dict]:
    """The plan, read and written back under an exclusive lock (durably, before the caller acts on it)."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        plan = json.loads(path.read_text()) if path.exists() else {"faults": []}
        yield plan
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(plan, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def write_plan(path: Path, faults: list[dict]) -> None:
    for f in faults:
        assert f["point"] in POINTS and f["action"] in ACTIONS, f
    with locked(path) as plan:
        plan.clear()
        plan.update({"faults": faults, "completed": {}})


def read_plan(path: Path) -> dict:
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        return json.loads(path.read_text()) if path.exists() else {"faults": []}


def hold_file(path: Path, fault_id: str) -> Path:
    return path.with_name(f"{path.name}.hold-{fault_id}")


def batch_seq(batch_id: str) -> int:
    """n of a long-lived run's batch `<run batch id>.<n>` (0 for a batch id without one)."""
    tail = batch_id.rsplit(".", 1)[-1] if "." in batch_id else ""
    return int(tail) if tail.isdigit() else 0


def _take(path: Path, name: str, feed: str, batch_id: str) -> dict | None:
    with locked(path) as plan:
        mine = [f for f in plan["faults"] if f["feed"] == feed]
        pending = [f for f in mine if not f.get("fired_at")]
        if not pending or pending[0]["point"] != name:
            return None
        fired = [f["fired_at"] for f in mine if f.get("fired_at")]
        if fired and plan.get("completed", {}).get(feed, 0) <= max(fired):
            return None  # the previous fault of this feed has not been recovered from yet
        fault = pending[0]
        if fault.get("min_batch") and batch_seq(batch_id) < fault["min_batch"]:
            return None  # not yet several batches into the run
        fault.update(fired_at=time.time(), pid=os.getpid(), batch_id=batch_id)
        return dict(fault)


def _at(path: Path, name: str, feed: str, batch_id: str) -> None:
    fault = _take(path, name, feed, batch_id)
    if fault is None:
        return
    action = fault["action"]
    if action == "raise":
        raise FaultInjected(f"injected fault {fault['id']}: {name} error in batch {batch_id}")
    if action == "hold":
        hold = hold_file(path, fault["id"])
        hold.touch()
        deadline = time.time() + HOLD_TIMEOUT_S
        while hold.exists() and time.time() < deadline:
            time.sleep(0.1)
        return
    if action == "kill_with_parent":
        parent = os.getppid()
        try:
            cmdline = Path(f"/proc/{parent}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if b"dagster" in cmdline:
            os.kill(parent, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # SIGKILL is delivered asynchronously; never run on past the point
