"""The sensor-side watchdog: an in-flight ingest run whose process is gone (or that went silent) is dead."""

import threading
import time

import dagster as dg

from sensors.pulsar_ingest import dead_run_reason


def _judged_while_waiting(res, heartbeat_s: float) -> list:
    """What the watchdog (silence bound 2 s) says, every 0.25 s, of a run that spends 4 s in one ClickHouse query."""
    from resources.clickhouse import ClickHouseResource

    @dg.asset
    def slow(clickhouse: ClickHouseResource):
        clickhouse.scalar("SELECT max(number + sleepEachRow(1)) FROM numbers(4) SETTINGS max_block_size = 1")

    ch = ClickHouseResource(**{**res["clickhouse"].model_dump(), "heartbeat_s": heartbeat_s})
    verdicts = []
    with dg.instance_for_test() as inst:
        worker = threading.Thread(
            target=dg.materialize, args=([slow],), kwargs={"instance": inst, "resources": {"clickhouse": ch}}
        )
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

    WAITS.watch(None, 60)  # as after an earlier run in this process: the watcher waits on a 60-s interval
    verdicts = _judged_while_waiting(res, heartbeat_s=1)
    assert len(verdicts) >= 8 and set(verdicts) == {None}
    silent = _judged_while_waiting(res, heartbeat_s=0)  # without the heartbeat it would be
    assert any(v and "logged nothing" in v for v in silent)
