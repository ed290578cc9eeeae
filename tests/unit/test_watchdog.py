"""The sensor-side watchdog: an in-flight ingest run whose process is gone (or that went silent) is dead."""

import os
import subprocess
import time

import dagster as dg
from dagster._core.events import DagsterEvent
from dagster._core.test_utils import create_run_for_test

from sensors.pulsar_ingest import dead_run_reason, free_leaked_slots, process_alive


def _started_run(inst, pid: int):
    run = create_run_for_test(inst, job_name="ingest_trades", status=dg.DagsterRunStatus.STARTED)
    inst.report_dagster_event(
        DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value, job_name="ingest_trades", pid=pid),
        run.run_id,
    )
    return inst.get_run_records(dg.RunsFilter(run_ids=[run.run_id]))[0]


def test_process_alive():
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert process_alive(os.getpid()) and not process_alive(gone.pid)
    assert not process_alive(os.getpid(), not_after=time.time() - 86400 * 365)  # a newer process reusing the pid


def test_dead_run_reason():
    gone = subprocess.Popen(["true"])
    gone.wait()
    with dg.instance_for_test() as inst:
        dead, alive = _started_run(inst, gone.pid), _started_run(inst, os.getpid())
        now = time.time()
        assert "is gone" in dead_run_reason(inst, dead, now, silent_s=300)
        assert dead_run_reason(inst, alive, now, silent_s=300) is None
        assert "logged nothing" in dead_run_reason(inst, alive, now + 301, silent_s=300)
        starting = create_run_for_test(inst, job_name="ingest_trades", status=dg.DagsterRunStatus.STARTING)
        rec = inst.get_run_records(dg.RunsFilter(run_ids=[starting.run_id]))[0]
        assert dead_run_reason(inst, rec, now + 10_000, silent_s=300) is None


def test_slots_of_finished_runs_are_freed():
    with dg.instance_for_test() as inst:
        storage = inst.event_log_storage
        if not storage.supports_global_concurrency_limits:
            return
        storage.set_concurrency_slots("lake", 2)
        killed = create_run_for_test(inst, job_name="ingest_trades", status=dg.DagsterRunStatus.FAILURE)
        live = create_run_for_test(inst, job_name="ingest_trades", status=dg.DagsterRunStatus.STARTED)
        for run in (killed, live):
            storage.claim_concurrency_slot("lake", run.run_id, "ingest_trades_batch")
        assert free_leaked_slots(inst, "ingest_trades") == [killed.run_id]
        assert storage.get_concurrency_run_ids() == {live.run_id}
