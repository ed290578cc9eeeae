"""Long-lived ingest runs: micro-batches back to back in one run, each its own materializations and check
evaluations; the sensor launches a successor before a run's lifetime ends, and the two hand the subscription over
without a second consumer or a lost or doubled message."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent
from dagster._core.test_utils import create_run_for_test

from nautilus_assets.definitions import defs
from nautilus_assets.market_data.assets import BARS_KEY, BATCH_TAG, TRADES_KEY
from nautilus_assets.market_data.handover import (
    HANDOVER_TAG,
    PREDECESSOR_TAG,
    RELEASED_TAG,
    SUCCESSOR_WANTED_TAG,
    successor_due,
)
from nautilus_assets.market_data.schema import SUBSCRIPTION, TRADES
from nautilus_assets.market_data.simulator import MarketSimulator
from resources.pulsar import PulsarResource
from resources.settings import code_reload_seconds, streaming
from scripts.publisher import publish_tables
from sensors.pulsar_ingest import INGEST_SENSORS
from tests.helpers import wait_for
from tests.helpers import counts

OP = "ingest_trades_batch"


def test_streaming_settings_are_validated():
    assert streaming({}).run_lifetime_s == 600 and streaming({}).batch_max_wait_s == 0.5
    for bad in ({"NAUTILUS_BATCH_MAX_MESSAGES": "0"}, {"NAUTILUS_BATCH_MAX_WAIT_SECONDS": "-1"},
                {"NAUTILUS_HANDOVER_LEAD_SECONDS": "700"}, {"NAUTILUS_RUN_IDLE_SECONDS": "400"},
                {"NAUTILUS_LATENESS_BOUND_SECONDS": "-5"}, {"NAUTILUS_RUN_RSS_HANDOVER_MB": "0"},
                {"NAUTILUS_PRODUCT_RUN_NICE": "2.5"}, {"NAUTILUS_PRODUCT_RUN_NICE": "20"}):
        with pytest.raises(ValueError):
            streaming(bad)
    assert code_reload_seconds({}) == 600 and code_reload_seconds({"NAUTILUS_CODE_RELOAD_SECONDS": "30"}) == 30
    with pytest.raises(ValueError):
        code_reload_seconds({"NAUTILUS_CODE_RELOAD_SECONDS": "1"})


def test_a_sensor_launched_product_run_lowers_its_cpu_priority_once():
    code = ("import os; from nautilus_assets import streaming; from resources import clickhouse; "
            "before = os.nice(0); streaming.lower_priority(); streaming.lower_priority(); "
            "print(os.nice(0) - before, clickhouse._query_settings['os_thread_priority'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NAUTILUS_PRODUCT_RUN_NICE": "5"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["5", "5"]


def test_a_query_priority_reaches_the_servers_query_threads(clean):
    """lower_query_priority: the server runs the process's later queries at that nice value (os_thread_priority)."""
    from resources import clickhouse
    try:
        clickhouse.lower_query_priority(7)
        ch = clickhouse.ClickHouseResource(**{k: getattr(clean["clickhouse"], k) for k in ("host", "port", "username",
                                                                                            "password")})
        result = []
        t = threading.Thread(target=lambda: result.append(ch.scalar(
            "SELECT value FROM system.settings WHERE name = 'os_thread_priority'")))   # a thread: a new client
        t.start()
        t.join()
        assert result == ["7"]
    finally:
        clickhouse._query_settings.clear()


def _started(inst, tags=None):
    run = create_run_for_test(inst, job_name="ingest_trades", status=dg.DagsterRunStatus.STARTED, tags=tags or {})
    inst.report_dagster_event(DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value,
                                           job_name="ingest_trades", pid=os.getpid()), run.run_id)
    return run


def _record(inst, run_id):
    return inst.get_run_records(dg.RunsFilter(run_ids=[run_id]))[0]


def test_successor_is_due_a_handover_lead_before_the_lifetime_ends():
    with dg.instance_for_test() as inst:
        rec = _record(inst, _started(inst).run_id)
        t0 = rec.start_time or rec.create_timestamp.timestamp()
        assert not successor_due(rec, t0 + 500, lifetime_s=600, lead_s=90)
        assert successor_due(rec, t0 + 511, lifetime_s=600, lead_s=90)
        inst.add_run_tags(rec.dagster_run.run_id, {HANDOVER_TAG: "someone"})   # a successor already asked
        assert not successor_due(_record(inst, rec.dagster_run.run_id), t0 + 511, lifetime_s=600, lead_s=90)
        young = _record(inst, _started(inst, tags={SUCCESSOR_WANTED_TAG: "rss 700 MB"}).run_id)  # over its budget
        assert successor_due(young, t0 + 1, lifetime_s=600, lead_s=90)


def test_sensor_launches_the_successor_near_the_end_of_the_lifetime_and_nothing_more(monkeypatch):
    from sensors import pulsar_ingest
    short = streaming({"NAUTILUS_RUN_LIFETIME_SECONDS": "4", "NAUTILUS_HANDOVER_LEAD_SECONDS": "2",
                       "NAUTILUS_RUN_IDLE_SECONDS": "1"})
    monkeypatch.setattr(pulsar_ingest, "STREAM", short)   # a 4 s lifetime, so the test need not wait 10 minutes
    sensor = next(s for s in INGEST_SENSORS if s.name == "trades_ingest_sensor")
    unused = {"pulsar": PulsarResource(service_url="pulsar://127.0.0.1:1")}   # never asked: a run is in flight
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


def _publish_paced(res, trades, chunks: int, pause_s: float) -> threading.Thread:
    n = trades.num_rows // chunks

    def go():
        for i in range(chunks):
            publish_tables(res["pulsar"], trades.slice(i * n, n if i < chunks - 1 else None), trades.slice(0, 0))
            time.sleep(pause_s)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _trades(n, seed):
    return MarketSimulator(["AAPL.XNAS", "SPY.ARCX"], seed=seed, start_ns=time.time_ns() - 5 * 60 * 10**9).take(n, 0)[0]


def test_one_run_commits_batches_back_to_back_each_recorded(clean, instance, monkeypatch):
    res = clean
    from nautilus_assets.market_data import assets as md_assets
    monkeypatch.setattr(md_assets, "STREAM", streaming({"NAUTILUS_RUN_RSS_HANDOVER_MB": "1"}))   # any run is over
    trades = _trades(6000, seed=31)
    pub = _publish_paced(res, trades, chunks=6, pause_s=1.5)
    result = defs.resolve_job_def("ingest_trades").execute_in_process(
        instance=instance, tags={BATCH_TAG: "stream-test"}, run_config={"ops": {OP: {"config": {"idle_seconds": 4}}}})
    pub.join()
    assert result.success
    mats = [m for m in result.asset_materializations_for_node(OP) if m.asset_key == TRADES_KEY]
    bars = [m for m in result.asset_materializations_for_node(OP) if m.asset_key == BARS_KEY]
    ids = [m.metadata["batch_id"].value for m in mats]
    assert len(mats) >= 3 and ids == [f"stream-test.{i + 1}" for i in range(len(mats))]
    assert len(bars) == len(mats)
    assert sum(m.metadata["written_clickhouse"].value for m in mats) == 6000 == counts(res, TRADES)[0]
    assert sum(m.metadata["written_delta"].value for m in mats) == 6000 == counts(res, TRADES)[1]
    versions = [m.tags["dagster/data_version"] for m in mats]
    assert len(set(versions)) == len(versions) and all(".." in v for v in versions)
    assert all(m.metadata[f"seconds_{s}"].value >= 0 for m in mats for s in ("decode", "clickhouse", "delta_wait"))
    # each batch's checks are evaluations of their own, and all passed
    evals = result.get_asset_check_evaluations()
    by_check = {name: [e for e in evals if e.check_name == name]
                for name in ("reconciles_with_consumed", "no_duplicate_ids", "bars_agree_with_trades")}
    assert all(len(v) == len(mats) and all(e.passed for e in v) for v in by_check.values()), by_check
    # the instance recorded one materialization per batch
    stored = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=TRADES_KEY), limit=100).records
    assert len([r for r in stored if r.run_id == result.run_id]) == len(mats)
    assert res["pulsar"].backlog(TRADES.topic, SUBSCRIPTION) == 0
    # over its memory budget, the run asked for a successor (and kept committing until then: idle here)
    assert instance.get_run_by_id(result.run_id).tags[SUCCESSOR_WANTED_TAG].startswith("rss ")


def test_a_batch_is_checked_before_the_next_batch_writes(clean, monkeypatch):
    """The check reads run after the acknowledgement, beside the next batch's receive and decode; the next
    batch's ClickHouse writes wait for them (its trades without its bars would fail the bars check)."""
    from nautilus_assets.market_data import checks, ingest
    res = clean
    trades = _trades(3000, seed=37)   # both halves touch the same minutes
    slow_bars = checks.bars_mismatches
    monkeypatch.setattr(checks, "bars_mismatches", lambda *a, **k: (time.sleep(1.5), slow_bars(*a, **k))[1])
    write, seen = ingest.sinks.write_clickhouse, []
    batches: list = []

    def watched(*a, **k):
        seen.append([b.inspected.done() for b in batches])
        return write(*a, **k)

    monkeypatch.setattr(ingest.sinks, "write_clickhouse", watched)
    with ingest.Stream(TRADES, res["pulsar"], res["lake"], res["clickhouse"], 3600, inspect=True) as stream:
        for i, half in enumerate((trades.slice(0, 1500), trades.slice(1500))):
            publish_tables(res["pulsar"], half, trades.slice(0, 0))
            msgs = stream.receive(10_000, 1.0, first=True)
            batches.append(stream.commit(f"checked.{i}", msgs))
        assert seen == [[], [True]]   # the second batch wrote after the first one's check reads
        assert batches[1].inspected.result() >= 1.5
    for b in batches:
        assert b.bars_check["bars_checked"] > 0 and b.bars_check["mismatched"] == b.bars_check["missing"] == 0
        assert b.stored_span.num_rows >= 1500 and b.table_rows >= 1500
    assert set(pa_ids(batches[0].stored_span)) >= set(pa_ids(batches[0].rows))


def pa_ids(t):
    return t["message_id"].to_pylist()


PREDECESSOR = textwrap.dedent("""
    import sys
    import dagster as dg
    from nautilus_assets.definitions import defs
    from nautilus_assets.market_data.assets import BATCH_TAG
    with dg.DagsterInstance.get() as inst:
        r = defs.resolve_job_def("ingest_trades").execute_in_process(instance=inst, tags={BATCH_TAG: sys.argv[1]},
            run_config={"ops": {"ingest_trades_batch": {"config": {"idle_seconds": 120}}}})
    assert r.success
""")


def test_handover_to_a_successor_loses_and_doubles_nothing(clean, settings, instance):
    """A predecessor (its own process, as the daemon runs it) streams; a successor starts with its tag, takes the
    subscription over while data keeps arriving; the predecessor stops at once (not at idle), and every message is
    stored exactly once."""
    res = clean
    trades = _trades(12_000, seed=32)
    tag = f"pred-{os.getpid()}"
    pred = subprocess.Popen([sys.executable, "-c", PREDECESSOR, tag], env={**os.environ, **settings.env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: instance.get_run_records(dg.RunsFilter(tags={BATCH_TAG: tag}, statuses=[
        dg.DagsterRunStatus.STARTED]), limit=1), timeout=180, every=0.5, what="the predecessor's run")
    pub = _publish_paced(res, trades, chunks=16, pause_s=1.0)   # the data keeps coming across the handover

    def pred_batches():
        if pred.poll() is not None:
            raise AssertionError(f"the predecessor exited early: {pred.stdout.read()[-3000:]}")
        runs = instance.get_run_records(dg.RunsFilter(tags={BATCH_TAG: tag}), limit=1)
        if not runs:
            return None
        mats = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=TRADES_KEY), limit=50).records
        return runs[0] if len([m for m in mats if m.run_id == runs[0].dagster_run.run_id]) >= 2 else None

    pred_run = wait_for(pred_batches, timeout=180, every=0.5, what="two batches of the predecessor").dagster_run
    t_handover = time.time()
    result = defs.resolve_job_def("ingest_trades").execute_in_process(
        instance=instance, tags={BATCH_TAG: f"succ-{os.getpid()}", PREDECESSOR_TAG: pred_run.run_id},
        run_config={"ops": {OP: {"config": {"idle_seconds": 4}}}})
    out, _ = pred.communicate(timeout=120)
    pub.join()
    assert pred.returncode == 0, out[-3000:]
    assert result.success
    pred_after = instance.get_run_by_id(pred_run.run_id)
    assert pred_after.tags[HANDOVER_TAG] == result.run_id and RELEASED_TAG in pred_after.tags
    assert pred_after.is_finished and float(pred_after.tags[RELEASED_TAG]) - t_handover < 60   # not its 120 s idle
    succ = [m for m in result.asset_materializations_for_node(OP) if m.asset_key == TRADES_KEY]
    assert succ, "the successor committed batches after the handover"
    n_ch, n_delta = counts(res, TRADES)
    assert n_ch == n_delta == 12_000
    with res["clickhouse"].session() as c:
        assert c.query("SELECT count() - uniqExact(message_id) FROM market_data.trades").first_row[0] == 0
    assert res["pulsar"].backlog(TRADES.topic, SUBSCRIPTION) == 0
