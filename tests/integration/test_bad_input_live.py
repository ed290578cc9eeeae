"""Bad input against the real services: Pulsar -> run_batch -> Delta + ClickHouse (quarantine with reasons),
a trade id reused across batches, and a burst ten times the batch bound in a run of bounded memory."""

import json
import os
import subprocess
import sys
import textwrap
import time

import orjson

from nautilus_assets.market_data import sinks
from nautilus_assets.market_data.ingest import run_batch
from nautilus_assets.market_data.schema import MAX_MESSAGE_BYTES, REPLAY_PROPERTY, SUBSCRIPTION, TRADES
from nautilus_assets.market_data.simulator import MarketSimulator
from resources import schemas
from scripts.publisher import publish_tables
from tests.helpers import wait_for

WEEK = 7 * 86400


def batch(res, batch_id, ack=True, max_messages=100_000):
    return run_batch(
        TRADES,
        res["pulsar"],
        res["lake"],
        res["clickhouse"],
        batch_id,
        max_messages,
        20,
        WEEK,
        log=lambda m: None,
        ack=ack,
    )


def stored(res):
    delta = res["lake"].table(sinks.bronze_table(TRADES))
    ids = delta.to_pyarrow_table(columns=["message_id"])["message_id"].to_pylist() if delta else []
    ch = res["clickhouse"].query_df("SELECT message_id FROM market_data.trades")["message_id"].tolist()
    return ids, ch


def trade(trade_id, **over):
    now = time.time_ns()
    rec = {
        "schema_version": 1,
        "instrument_id": "AAPL.XNAS",
        "price": 230.5,
        "size": 10.0,
        "aggressor_side": "BUYER",
        "trade_id": trade_id,
        "ts_event": now - 10**9,
        "ts_init": now - 10**9 + 5000,
    }
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not ...}


def bad_messages() -> dict:
    """name -> (payload, the reason its quarantine row must start with). Built when sent: the future and late
    timestamps are relative to now (a module-level dict went stale when collection ran minutes before the test)."""
    return {
        "not-json": (b"\xff\xfe not json", "invalid_json"),
        "two-objects": (orjson.dumps(trade("two-a")) + b" " + orjson.dumps(trade("two-b")), "invalid_json"),
        "empty": (b"", "invalid_json"),
        "nan": (orjson.dumps(trade("nan", price=1.5)).replace(b"1.5", b"NaN"), "invalid_json"),
        "inf": (orjson.dumps(trade("inf", size=1.5)).replace(b"1.5", b"1e999"), "invalid_json"),
        "wrong-type": (orjson.dumps(trade("wt", price="230.5")), "bad_value: price"),
        "missing": (orjson.dumps(trade("miss", size=...)), "missing_field: size"),
        "version": (orjson.dumps(trade("v-next", schema_version=TRADES.version + 1)), "unknown_schema_version"),
        "zero-size": (orjson.dumps(trade("zs", size=0)), "bad_value: size"),
        "neg-price": (orjson.dumps(trade("np", price=-1.0)), "bad_value: price"),
        "future": (orjson.dumps(trade("fut", ts_event=time.time_ns() + 300 * 10**9)), "future_ts_event"),
        "late": (orjson.dumps(trade("late", ts_event=time.time_ns() - 8 * 86400 * 10**9)), "too_late"),
        "large": (orjson.dumps(trade("big", pad="x" * MAX_MESSAGE_BYTES)), "too_large"),
    }


def send(res, payloads, properties=None):
    with res["pulsar"].client() as client:
        p = schemas.create_producer(client, TRADES.topic)
        for b in payloads:
            p.send(b, properties=properties or {})
        p.close()


def test_mixed_bad_and_good_batches_quarantine_with_reasons_and_keep_every_valid_trade(clean):
    res, bad = clean, bad_messages()
    trades, _ = MarketSimulator(["AAPL.XNAS", "SPY.ARCX"], seed=11, start_ns=time.time_ns() - 120 * 10**9).take(600, 0)
    good = trades.slice(0, 300), trades.slice(300, 300)
    publish_tables(res["pulsar"], good[0], good[0].slice(0, 0))
    send(res, [p for p, _ in bad.values()])
    send(
        res,
        [orjson.dumps(trade("replayed", ts_event=time.time_ns() - 30 * 86400 * 10**9))],
        {REPLAY_PROPERTY: "historical"},
    )  # a marked historical replay: exempt
    publish_tables(res["pulsar"], good[1], good[1].slice(0, 0))
    out = batch(res, "bad-1")
    assert out.consumed == 600 + len(bad) + 1
    assert (out.valid, out.quarantined, out.duplicates_in_batch) == (601, len(bad), 0)
    assert out.written_delta == out.written_clickhouse == 601

    q = res["clickhouse"].query_df("SELECT message_id, batch_id, reason, payload FROM market_data.quarantine FINAL")
    assert len(q) == len(bad) and set(q["batch_id"]) == {"bad-1"}
    as_bytes = lambda p: p if isinstance(p, bytes) else p.encode("utf-8", "surrogateescape")  # noqa: E731
    by_payload = {as_bytes(p): r for p, r in zip(q["payload"], q["reason"])}
    for name, (payload, why) in bad.items():
        if payload in by_payload:  # payloads came back byte for byte (the invalid UTF-8 one may not)
            assert by_payload[payload].startswith(why), (name, by_payload[payload])
    assert sorted(r.split(":")[0] for r in q["reason"]) == sorted(w.split(":")[0] for _, w in bad.values())
    delta_ids, ch_ids = stored(res)
    assert len(delta_ids) == len(set(delta_ids)) == 601 and sorted(delta_ids) == sorted(ch_ids)
    want = set(trades["trade_id"].to_pylist()) | {"replayed"}
    assert set(res["clickhouse"].query_df("SELECT trade_id FROM market_data.trades")["trade_id"]) == want

    # Batch 2: a new message reusing a stored trade id is quarantined; the same message redelivered is not.
    reused = trades.slice(10, 1).to_pylist()[0]
    again = orjson.dumps({**trade(reused["trade_id"]), "instrument_id": reused["instrument_id"]})
    send(res, [again, orjson.dumps(trade("fresh-1"))])
    lost = batch(res, "bad-2", ack=False)  # both sinks written, the ack lost
    assert (lost.valid, lost.quarantined, lost.written_clickhouse) == (1, 1, 1)
    retry = batch(res, "bad-2-retry")  # redelivered: same message ids
    assert (retry.consumed, retry.valid, retry.quarantined, retry.already_stored) == (2, 1, 1, 1)
    assert (retry.written_delta, retry.written_clickhouse) == (0, 0)
    q = res["clickhouse"].query_df(
        "SELECT reason FROM market_data.quarantine FINAL WHERE reason LIKE 'duplicate_trade_id%'"
    )
    assert len(q) == 1 and reused["trade_id"] in q["reason"][0]
    delta_ids, ch_ids = stored(res)
    assert len(delta_ids) == len(set(delta_ids)) == len(ch_ids) == 602
    n_dup = res["clickhouse"].scalar("SELECT count() - uniqExact(instrument_id, trade_id) FROM market_data.trades")
    assert n_dup == 0
    assert batch(res, "bad-3").consumed == 0
    wait_for(lambda: res["pulsar"].backlog(TRADES.topic, SUBSCRIPTION) == 0, 30, what="zero backlog")


BURST_RUNNER = textwrap.dedent("""
    # One long-lived run of the real ingest job in this process, as the daemon's run worker executes it.
    import json, resource, sys
    import dagster as dg
    from nautilus_assets.definitions import defs
    from nautilus_assets.market_data.assets import BATCH_TAG
    job = defs.resolve_job_def("ingest_trades")
    with dg.DagsterInstance.get() as inst:
        r = job.execute_in_process(instance=inst, tags={BATCH_TAG: sys.argv[1]})
    assert r.success
    mats = [m for m in r.asset_materializations_for_node("ingest_trades_batch") if m.asset_key.path[-1] == "trades"]
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    print("RESULT " + json.dumps({"consumed": [m.metadata["consumed"].value for m in mats],
                                  "written": [m.metadata["written_clickhouse"].value for m in mats],
                                  "batch_ids": [m.metadata["batch_id"].value for m in mats],
                                  "vm_hwm_kib": int(status["VmHWM"].split()[0]),
                                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def test_burst_is_committed_in_bounded_batches_by_one_run_under_1gib(clean):
    """50,000 trades against a batch bound of 5,000 (NAUTILUS_BATCH_MAX_MESSAGES): one long-lived run of the real
    ingest job, in its own process as the daemon launches it, commits them in batches of at most the bound, each
    recorded as its own materialization, and peaks under 1 GiB."""
    res = clean
    bound, burst = 5_000, 50_000
    # a flat rate: with the intraday profile the clock span of the burst depends on the time of day (at 12:00 UTC it
    # would end 405 s in the future and be quarantined as future_ts_event)
    trades, _ = MarketSimulator(
        ["AAPL.XNAS", "MSFT.XNAS", "SPY.ARCX"],
        seed=12,
        start_ns=time.time_ns() - 600 * 10**9,
        events_per_second=200,
        intraday_profile=False,
    ).take(burst, 0)
    publish_tables(res["pulsar"], trades, trades.slice(0, 0))
    p = subprocess.run(
        [sys.executable, "-c", BURST_RUNNER, "burst"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NAUTILUS_BATCH_MAX_MESSAGES": str(bound)},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    run = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT "))[7:])
    consumed, peak = run["consumed"], run["vm_hwm_kib"]
    print(
        f"burst {burst} with bound {bound}: one run, batches consumed {consumed} (new rows {run['written']}); "
        f"peak RSS {peak / 1024:.0f} MiB"
    )
    assert all(0 < c <= bound for c in consumed) and len(consumed) >= burst // bound
    assert run["batch_ids"] == [f"burst.{i + 1}" for i in range(len(consumed))]
    why = (
        res["clickhouse"]
        .query_df("SELECT splitByChar(':', reason)[1] AS r, count() AS n FROM market_data.quarantine FINAL GROUP BY r")
        .values.tolist()
    )
    assert sum(run["written"]) == burst, (run, why)  # redeliveries add batches, not rows
    assert peak < 1024 * 1024
    delta_ids, ch_ids = stored(res)
    assert len(delta_ids) == len(set(delta_ids)) == len(ch_ids) == burst
