"""Issue 12 item 5: version 2 of the trades message adds an optional `condition`. Against a store written by
version-1 code (no column in ClickHouse, none in the Delta table), version 1 and version 2 producers publish side by
side; the ingest of the new code reads both, adds the ClickHouse column (ALTER TABLE ... ADD COLUMN) and merges the
Delta schema, old rows read null, nothing is quarantined. A producer schema that removes or retypes a field is
refused by the broker, and a message that lacks or retypes one is quarantined: neither reaches the lake."""

import dataclasses
import time

import orjson
import pulsar
import pytest

from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.market_data.simulator import MarketSimulator, messages
from nautilus_assets.market_data.sinks import bronze_table
from resources import schemas
from tests.helpers import batch, counts

V1 = dataclasses.replace(TRADES, fields=[f for f in TRADES.fields if f[0] != "condition"], version=1, optional=())


def _trades(n: int, seed: int):
    now = time.time_ns()
    return MarketSimulator(["AAPL.XNAS", "SPY.ARCX"], seed=seed, start_ns=now - 600 * 10**9).take(n, 0)[0]


def _send(producer, payloads: list[bytes]) -> None:
    for p in payloads:
        producer.send(p)


def test_version_2_trades_beside_version_1_on_a_store_from_before(clean, settings):
    res = clean
    if not settings["PULSAR_ADMIN_URL"]:
        pytest.skip("pulsar-lite: no schema registry")
    ch, lake = res["clickhouse"], res["lake"]
    # the store as version-1 code left it: its trades without the column, in both sinks
    with ch.session() as c:
        c.command("ALTER TABLE market_data.trades DROP COLUMN IF EXISTS condition")
    with res["pulsar"].client() as client:
        old = client.create_producer(TRADES.topic, schema=schemas.JsonBytes(schemas.feed_record(V1)))
        _send(old, messages(_trades(300, seed=61)))
        old.flush()
    before = batch(res, V1, "v1-code")
    assert before.valid == 300 and "condition" not in lake.table(bronze_table(TRADES)).schema().to_arrow().names

    # the new code reads both versions; version 1 producers keep publishing
    v1_rows, v2_rows = _trades(400, seed=62), _trades(400, seed=63)
    v2 = [
        orjson.dumps(orjson.loads(p) | {"schema_version": 2, "condition": "ODD_LOT" if k % 3 else "REGULAR"})
        for k, p in enumerate(messages(v2_rows))
    ]
    with res["pulsar"].client() as client:
        old = client.create_producer(TRADES.topic, schema=schemas.JsonBytes(schemas.feed_record(V1)))
        new = schemas.create_producer(client, TRADES.topic)
        for a, b in zip(messages(v1_rows), v2):
            old.send(a)
            new.send(b)
        # what never reaches the lake: a producer schema without a required field, or with one retyped, is refused
        for bad in (
            [f for f in schemas.feed_record(TRADES)["fields"] if f["name"] != "size"],
            [{**f, "type": "string"} if f["name"] == "price" else f for f in schemas.feed_record(TRADES)["fields"]],
        ):
            with pytest.raises(pulsar.IncompatibleSchema):
                client.create_producer(
                    TRADES.topic, schema=schemas.JsonBytes({**schemas.feed_record(TRADES), "fields": bad})
                )
        # and messages that say version 2 but lack or retype a field are quarantined
        one = orjson.loads(v2[0])
        new.send(orjson.dumps({k: v for k, v in one.items() if k != "price"} | {"trade_id": "no-price"}))
        new.send(orjson.dumps(one | {"trade_id": "text-price", "price": "230.5"}))
        old.flush()
        new.flush()
    r = batch(res, TRADES, "v2-code")
    assert (r.valid, r.quarantined) == (800, 2)
    assert sorted(w.split(":")[0] for w in r.quarantine.values()) == ["bad_value", "missing_field"]
    assert counts(res, TRADES) == (1100, 1100)
    by_version = ch.query_df(
        "SELECT schema_version, count() AS n, countIf(condition IS NULL) AS null_condition, "
        "countIf(condition = 'REGULAR') AS regular FROM market_data.trades GROUP BY schema_version ORDER BY 1"
    )
    assert by_version.values.tolist() == [[1, 700, 700, 0], [2, 400, 0, 134]]
    delta = lake.table(bronze_table(TRADES)).to_pyarrow_table(columns=["schema_version", "condition", "trade_id"])
    rows = delta.to_pylist()
    assert sum(r["condition"] is None for r in rows) == 700 and {r["schema_version"] for r in rows} == {1, 2}
    assert all(r["condition"] in ("ODD_LOT", "REGULAR") for r in rows if r["schema_version"] == 2)
    assert not {"no-price", "text-price"} & {r["trade_id"] for r in rows}
