"""Long-lived ingest runs: micro-batches back to back in one run, each its own materializations and check
evaluations; the sensor launches a successor before a run's lifetime ends, and the two hand the subscription over
without a second consumer or a lost or doubled message."""

import os
import subprocess
import sys
import time

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent
from dagster._core.test_utils import create_run_for_test

from nautilus_assets.market_data.handover import (
    HANDOVER_TAG,
    PREDECESSOR_TAG,
    SUCCESSOR_WANTED_TAG,
    successor_due,
)
from resources.pulsar import PulsarResource
from resources.settings import code_reload_seconds, streaming
from sensors.pulsar_ingest import INGEST_SENSORS


def test_streaming_settings_are_validated():
    assert streaming({}).run_lifetime_s == 600 and streaming({}).batch_max_wait_s == 0.5
    for bad in (
        {"NAUTILUS_BATCH_MAX_MESSAGES": "0"},
        {"NAUTILUS_BATCH_MAX_WAIT_SECONDS": "-1"},
        {"NAUTILUS_HANDOVER_LEAD_SECONDS": "700"},
        {"NAUTILUS_RUN_IDLE_SECONDS": "400"},
        {"NAUTILUS_LATENESS_BOUND_SECONDS": "-5"},
        {"NAUTILUS_RUN_RSS_HANDOVER_MB": "0"},
        {"NAUTILUS_PRODUCT_RUN_NICE": "2.5"},
        {"NAUTILUS_PRODUCT_RUN_NICE": "20"},
    ):
        with pytest.raises(ValueError):
            streaming(bad)
    assert code_reload_seconds({}) == 600 and code_reload_seconds({"NAUTILUS_CODE_RELOAD_SECONDS": "30"}) == 30
    with pytest.raises(ValueError):
        code_reload_seconds({"NAUTILUS_CODE_RELOAD_SECONDS": "1"})


def test_a_sensor_launched_product_run_lowers_its_cpu_priority_once():
    code = (
        "import os; from nautilus_assets import streaming; from resources import clickhouse; "
        "before = os.nice(0); streaming.lower_priority(); streaming.lower_priority(); "
        "print(os.nice(0) - before, clickhouse._query_settings['os_thread_priority'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NAUTILUS_PRODUCT_RUN_NICE": "5"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["5", "5"]


def _started(inst, tags=None):
    run = create_run_for_test(inst, job_name="ingest_trades", status=dg.DagsterRunStatus.STARTED, tags=tags or {})
    inst.report_dagster_event(
        DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value, job_name="ingest_trades", pid=os.getpid()),
        run.run_id,
    )
    return run


def _record(inst, run_id):
    return inst.get_run_records(dg.RunsFilter(run_ids=[run_id]))[0]


def test_successor_is_due_a_handover_lead_before_the_lifetime_ends():
    with dg.instance_for_test() as inst:
        rec = _record(inst, _started(inst).run_id)
        t0 = rec.start_time or rec.create_timestamp.timestamp()
        assert not successor_due(rec, t0 + 500, lifetime_s=600, lead_s=90)
        assert successor_due(rec, t0 + 511, lifetime_s=600, lead_s=90)
        inst.add_run_tags(rec.dagster_run.run_id, {HANDOVER_TAG: "someone"})  # a successor already asked
        assert not successor_due(_record(inst, rec.dagster_run.run_id), t0 + 511, lifetime_s=600, lead_s=90)
        young = _record(inst, _started(inst, tags={SUCCESSOR_WANTED_TAG: "rss 700 MB"}).run_id)  # over its budget
        assert successor_due(young, t0 + 1, lifetime_s=600, lead_s=90)


def test_sensor_launches_the_successor_near_the_end_of_the_lifetime_and_nothing_more(monkeypatch):
    from sensors import pulsar_ingest

    short = streaming(
        {"NAUTILUS_RUN_LIFETIME_SECONDS": "4", "NAUTILUS_HANDOVER_LEAD_SECONDS": "2", "NAUTILUS_RUN_IDLE_SECONDS": "1"}
    )
    monkeypatch.setattr(pulsar_ingest, "STREAM", short)  # a 4 s lifetime, so the test need not wait 10 minutes
    sensor = next(s for s in INGEST_SENSORS if s.name == "trades_ingest_sensor")
    unused = {"pulsar": PulsarResource(service_url="pulsar://127.0.0.1:1")}  # never asked: a run is in flight
    with dg.instance_for_test() as inst:
        run = _started(inst)
        res = sensor.evaluate_tick(dg.build_sensor_context(instance=inst, resources=unused))
        assert not res.run_requests and "in flight" in res.skip_message
        time.sleep(short.run_lifetime_s - short.handover_lead_s + 0.2)
        res = sensor.evaluate_tick(dg.build_sensor_context(instance=inst, resources=unused))
        assert len(res.run_requests) == 1, res.skip_message
        (req,) = res.run_requests
        assert req.tags[PREDECESSOR_TAG] == run.run_id and req.tags["nautilus/trigger"].startswith("handover")
        create_run_for_test(inst, job_name="ingest_trades", status=dg.DagsterRunStatus.STARTING, tags=req.tags)
        res = sensor.evaluate_tick(dg.build_sensor_context(instance=inst, resources=unused, cursor=res.cursor))
        assert not res.run_requests, "a run and its successor are in flight: no third"
