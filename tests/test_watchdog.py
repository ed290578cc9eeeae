"""The sensor-side watchdog: an in-flight ingest run whose process is gone (or that went silent) is dead."""
import os
import subprocess
import threading
import time

import dagster as dg
from dagster._core.events import DagsterEvent
from dagster._core.test_utils import create_run_for_test

from sensors.pulsar_ingest import dead_run_reason, free_leaked_slots, process_alive


def _started_run(inst, pid: int):
    run = create_run_for_test(inst, job_name="ingest_trades", status=dg.DagsterRunStatus.STARTED)
    inst.report_dagster_event(DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value,
                                           job_name="ingest_trades", pid=pid), run.run_id)
    return inst.get_run_records(dg.RunsFilter(run_ids=[run.run_id]))[0]


def test_process_alive():
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert process_alive(os.getpid()) and not process_alive(gone.pid)
    assert not process_alive(os.getpid(), not_after=time.time() - 86400 * 365)   # a newer process reusing the pid


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


def _judged_while_waiting(res, heartbeat_s: float) -> list:
    """What the watchdog (silence bound 2 s) says, every 0.25 s, of a run that spends 4 s in one ClickHouse query."""
    from resources.clickhouse import ClickHouseResource

    @dg.asset
    def slow(clickhouse: ClickHouseResource):
        clickhouse.scalar("SELECT max(number + sleepEachRow(1)) FROM numbers(4) SETTINGS max_block_size = 1")

    ch = ClickHouseResource(**{**res["clickhouse"].model_dump(), "heartbeat_s": heartbeat_s})
    verdicts = []
    with dg.instance_for_test() as inst:
        worker = threading.Thread(target=dg.materialize, args=([slow],),
                                  kwargs={"instance": inst, "resources": {"clickhouse": ch}})
        worker.start()
        while worker.is_alive():
            time.sleep(0.25)
            for rec in inst.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
                verdicts.append(dead_run_reason(inst, rec, time.time(), silent_s=2))
        worker.join()
    return verdicts


def test_a_run_waiting_on_clickhouse_is_not_taken_for_dead(res):
    """issue 13 item 10: the run logs while it waits on the server, so the silence bound never fails it alive."""
    from resources.clickhouse import WAITS
    WAITS.watch(None, 60)       # as after an earlier run in this process: the watcher waits on a 60-s interval
    verdicts = _judged_while_waiting(res, heartbeat_s=1)
    assert len(verdicts) >= 8 and set(verdicts) == {None}
    silent = _judged_while_waiting(res, heartbeat_s=0)          # without the heartbeat it would be
    assert any(v and "logged nothing" in v for v in silent)
