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

from nautilus_assets.definitions import defs
from nautilus_assets.market_data.assets import BARS_KEY, BATCH_TAG, TRADES_KEY
from nautilus_assets.market_data.handover import (
    HANDOVER_TAG,
    PREDECESSOR_TAG,
    RELEASED_TAG,
    SUCCESSOR_WANTED_TAG,
)
from nautilus_assets.market_data.schema import SUBSCRIPTION, TRADES
from nautilus_assets.market_data.simulator import MarketSimulator
from resources.settings import streaming
from scripts.publisher import publish_tables
from tests.helpers import counts, wait_for

OP = "ingest_trades_batch"


def test_a_query_priority_reaches_the_servers_query_threads(clean):
    """lower_query_priority: the server runs the process's later queries at that nice value (os_thread_priority)."""
    from resources import clickhouse

    try:
        clickhouse.lower_query_priority(7)
        ch = clickhouse.ClickHouseResource(
            **{k: getattr(clean["clickhouse"], k) for k in ("host", "port", "username", "password")}
        )
        result = []
        t = threading.Thread(
            target=lambda: result.append(
                ch.scalar("SELECT value FROM system.settings WHERE name = 'os_thread_priority'")
            )
        )  # a thread: a new client
        t.start()
        t.join()
        assert result == ["7"]
    finally:
        clickhouse._query_settings.clear()


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

    monkeypatch.setattr(md_assets, "STREAM", streaming({"NAUTILUS_RUN_RSS_HANDOVER_MB": "1"}))  # any run is over
    trades = _trades(6000, seed=31)
    pub = _publish_paced(res, trades, chunks=6, pause_s=1.5)
    result = defs.resolve_job_def("ingest_trades").execute_in_process(
        instance=instance, tags={BATCH_TAG: "stream-test"}, run_config={"ops": {OP: {"config": {"idle_seconds": 4}}}}
    )
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
    by_check = {
        name: [e for e in evals if e.check_name == name]
        for name in ("reconciles_with_consumed", "no_duplicate_ids", "bars_agree_with_trades")
    }
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
    trades = _trades(3000, seed=37)  # both halves touch the same minutes
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
        assert seen == [[], [True]]  # the second batch wrote after the first one's check reads
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
    pred = subprocess.Popen(
        [sys.executable, "-c", PREDECESSOR, tag],
        env={**os.environ, **settings.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(
        lambda: instance.get_run_records(
            dg.RunsFilter(tags={BATCH_TAG: tag}, statuses=[dg.DagsterRunStatus.STARTED]), limit=1
        ),
        timeout=180,
        every=0.5,
        what="the predecessor's run",
    )
    pub = _publish_paced(res, trades, chunks=16, pause_s=1.0)  # the data keeps coming across the handover

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
        instance=instance,
        tags={BATCH_TAG: f"succ-{os.getpid()}", PREDECESSOR_TAG: pred_run.run_id},
        run_config={"ops": {OP: {"config": {"idle_seconds": 4}}}},
    )
    out, _ = pred.communicate(timeout=120)
    pub.join()
    assert pred.returncode == 0, out[-3000:]
    assert result.success
    pred_after = instance.get_run_by_id(pred_run.run_id)
    assert pred_after.tags[HANDOVER_TAG] == result.run_id and RELEASED_TAG in pred_after.tags
    assert pred_after.is_finished and float(pred_after.tags[RELEASED_TAG]) - t_handover < 60  # not its 120 s idle
    succ = [m for m in result.asset_materializations_for_node(OP) if m.asset_key == TRADES_KEY]
    assert succ, "the successor committed batches after the handover"
    n_ch, n_delta = counts(res, TRADES)
    assert n_ch == n_delta == 12_000
    with res["clickhouse"].session() as c:
        assert c.query("SELECT count() - uniqExact(message_id) FROM market_data.trades").first_row[0] == 0
    assert res["pulsar"].backlog(TRADES.topic, SUBSCRIPTION) == 0
