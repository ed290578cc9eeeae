"""Issue 13, items 1-2: the quarantine is a way back (replayed exactly once after a fix), and a stored message id
arriving with other content is quarantined and alerted, never dropped as a redelivery."""

import os
import subprocess
import sys
import time

import dagster as dg
import orjson
import pulsar

from nautilus_assets.definitions import defs
from nautilus_assets.market_data import quarantine, sinks
from nautilus_assets.market_data.assets import BARS_KEY
from nautilus_assets.market_data.decode import RawBatch
from nautilus_assets.market_data.ingest import Stream, run_batch
from nautilus_assets.market_data.schema import TRADES
from resources import schemas
from resources.topics import SYSTEM_ALERTS
from tests.helpers import ROOT

DAY = 86400
WEEK = 7 * DAY


def trade(i: int, ts_event: int, price: float = 100.0) -> dict:
    return {
        "schema_version": 1,
        "instrument_id": "AAPL.XNAS",
        "price": price,
        "size": 10.0 + i,
        "aggressor_side": "BUYER",
        "trade_id": f"Q{i}",
        "ts_event": ts_event,
        "ts_init": ts_event + 1000,
    }


def send(res, payloads: list[bytes]) -> None:
    with res["pulsar"].client() as client:
        p = schemas.create_producer(client, TRADES.topic, batching_enabled=False)
        for b in payloads:
            p.send(b)
        p.close()


def counts(res) -> tuple[int, int]:
    dt = res["lake"].table(sinks.bronze_table(TRADES))
    return (
        int(res["clickhouse"].scalar("SELECT count() FROM market_data.trades")),
        dt.to_pyarrow_table(columns=["message_id"]).num_rows if dt else 0,
    )


def test_quarantined_messages_replay_exactly_once_after_the_fix(clean, settings, instance, tmp_path):
    res = clean
    old_ns = time.time_ns() - 8 * DAY * 10**9  # 8 days before publishing: too late for a week's bound
    late = [orjson.dumps(trade(i, old_ns + i * 10**9)) for i in range(3)]
    bad = [orjson.dumps({**trade(9, time.time_ns()), "price": -1.0})]
    send(res, late + bad)
    first = run_batch(TRADES, res["pulsar"], res["lake"], res["clickhouse"], "q-1", 100, 20, WEEK)
    assert (first.consumed, first.valid, first.quarantined) == (4, 0, 4)
    rows = quarantine.select(res["clickhouse"])
    assert sorted(r["reason"].split(":")[0] for r in rows) == ["bad_value", "too_late", "too_late", "too_late"]
    assert all(r["replay_outcome"] == "" and r["payload"] in late + bad for r in rows)

    lock = tmp_path / "replay.lock"
    args = (res["pulsar"], res["lake"], res["clickhouse"])
    unfixed = quarantine.replay(*args, WEEK, lock, reason="too_late", log=lambda m: None)
    assert (unfixed["taken"], unfixed["stored"], unfixed["quarantined"]) == (3, 0, 3) and counts(res) == (0, 0)

    env = {**os.environ, **settings.env}
    latest = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=BARS_KEY), limit=1).records
    cursor = str(latest[0].storage_id) if latest else "0"
    fixed = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "quarantine", "replay", "--reason", "too_late"],
        cwd=ROOT,
        env={**env, "NAUTILUS_LATENESS_BOUND_SECONDS": str(30 * DAY)},  # the bound raised
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "3 taken, 3 stored, 0 still quarantined" in fixed.stdout, fixed.stdout
    assert counts(res) == (3, 3)
    old_day = time.strftime("%Y-%m-%d", time.gmtime(old_ns / 1e9))
    repo = defs.get_repository_def()  # the replay told Dagster: the late-trades sensor re-runs that day's products
    tick = repo.get_sensor_def("late_trades_sensor").evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=repo)
    )
    assert [rr.partition_key for rr in tick.run_requests] == [old_day]
    bars = res["clickhouse"].scalar("SELECT sum(trade_count) FROM market_data.bars_1m FINAL")
    assert bars == 3  # the replayed trades' minutes were recomputed

    assert quarantine.replay(*args, 30 * DAY, lock, reason="too_late", log=lambda m: None)["taken"] == 0
    # a replay interrupted after storing but before recording its outcome is run again: stored once all the same
    res["clickhouse"].command("TRUNCATE TABLE market_data.quarantine_replays")
    again = quarantine.replay(*args, 30 * DAY, lock, reason="too_late", log=lambda m: None)
    assert (again["taken"], again["stored"]) == (3, 3) and counts(res) == (3, 3)

    still = quarantine.replay(*args, 30 * DAY, lock, reason="bad_value", log=lambda m: None)
    assert (still["taken"], still["stored"], still["reasons"]) == (1, 0, {"bad_value": 1}) and counts(res) == (3, 3)

    out = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "quarantine", "list", "--since", "1h"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "trades" in line]
    assert len(lines) == 4 and sum(" stored " in line for line in lines) == 3, out.stdout
    assert "4 quarantined (1 not stored by a replay)" in out.stdout
    bad_since = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "quarantine", "list", "--since", "yesterday"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad_since.returncode != 0 and "--since 'yesterday'" in bad_since.stderr
    assert "Traceback" not in bad_since.stderr


def _as_sent(row: dict, **change) -> bytes:
    fields = [n for n, *_ in TRADES.fields] + ["ts_event", "ts_init"]
    return orjson.dumps({"schema_version": 1, **{k: row[k] for k in fields if k in row}, **change})


def _commit(res, batch_id: str, rows: list[dict], payloads: list[bytes]):
    raw = RawBatch(
        payloads=payloads,
        message_ids=[r["message_id"] for r in rows],
        ledger_ids=[r["ledger_id"] for r in rows],
        entry_ids=[r["entry_id"] for r in rows],
        publish_ms=[time.time_ns() // 10**6] * len(rows),
    )
    with Stream(
        TRADES, res["pulsar"], res["lake"], res["clickhouse"], WEEK, log=lambda m: None, consume=False
    ) as stream:
        return stream.commit(batch_id, raw)


def test_a_stored_message_id_with_other_content_is_quarantined_and_alerted(clean):
    res = clean
    now = time.time_ns()
    send(res, [orjson.dumps(trade(i, now - (60 - i) * 10**9, price=100.0 + i)) for i in range(6)])
    assert run_batch(TRADES, res["pulsar"], res["lake"], res["clickhouse"], "c-1", 100, 20, WEEK).valid == 6
    stored = sorted(
        res["lake"].table(sinks.bronze_table(TRADES)).to_pyarrow_table().to_pylist(), key=lambda r: r["entry_id"]
    )
    with res["pulsar"].client() as client:
        alerts = client.subscribe(SYSTEM_ALERTS, "test-changed-content", initial_position=pulsar.InitialPosition.Latest)
        # the same ids: two identical (a redelivery), two with another price, one with another trade id
        payloads = [
            _as_sent(stored[0]),
            _as_sent(stored[1]),
            _as_sent(stored[2], price=999.0),
            _as_sent(stored[3], price=1.5),
            _as_sent(stored[4], trade_id="OTHER"),
        ]
        out = _commit(res, "c-2", stored[:5], payloads)
        assert (out.valid, out.written_clickhouse, out.written_delta, out.quarantined) == (2, 0, 0, 3)
        assert all(why.startswith("changed_content") for why in out.quarantine.values())
        assert "price" in out.quarantine[stored[2]["message_id"]]
        assert "trade_id" in out.quarantine[stored[4]["message_id"]]
        alert = orjson.loads(alerts.receive(timeout_millis=20_000).data())
        alerts.close()
    assert alert["severity"] == "critical" and alert["reasons"] == {"changed_content": 3}
    assert counts(res) == (6, 6)
    prices = res["clickhouse"].query_df("SELECT price FROM market_data.trades ORDER BY entry_id")["price"].tolist()
    assert prices == [100.0 + i for i in range(6)]  # nothing overwritten
    rows = {r["message_id"]: r for r in quarantine.select(res["clickhouse"], reason="changed_content")}
    assert set(rows) == {stored[k]["message_id"] for k in (2, 3, 4)}

    # held by Delta only (a run that stopped between the sinks): still caught, and ClickHouse does not get it
    res["clickhouse"].command("TRUNCATE TABLE market_data.trades")
    out = _commit(res, "c-3", [stored[5]], [_as_sent(stored[5], size=1.0)])
    assert out.quarantined == 1 and out.written_clickhouse == 0 and counts(res) == (0, 6)
