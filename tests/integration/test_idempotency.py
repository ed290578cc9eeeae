"""Re-run batches and lost acknowledgements never duplicate a row; malformed messages go to quarantine."""

from nautilus_assets.market_data import sinks
from nautilus_assets.market_data.schema import QUOTES, SUBSCRIPTION, TRADES
from resources import schemas
from tests.helpers import assert_bars_equal, batch, counts, publish, reference_bars, stored_bars, wait_for


def test_same_batch_written_twice_adds_nothing(clean):
    res = clean
    publish(res, 2000, seed=1)
    first = batch(res, TRADES, "b-1", ack=False)
    assert first.written_delta == first.written_clickhouse == 2000
    again_delta, _, _ = sinks.write_delta(res["lake"], TRADES, first.rows, "b-1")
    again_ch = sinks.write_clickhouse(res["clickhouse"], TRADES, first.rows)
    assert (again_delta, again_ch) == (0, 0)
    assert counts(res, TRADES) == (2000, 2000)


def test_lost_acknowledgement_redelivers_without_duplicates(clean):
    res = clean
    trades, _ = publish(res, 3000, seed=2)
    lost = batch(res, TRADES, "b-lost", ack=False)  # both sinks committed, the ack never reached the broker
    assert lost.consumed == 3000 and lost.written_clickhouse == 3000
    redelivered = batch(res, TRADES, "b-retry")
    assert redelivered.consumed == 3000 and redelivered.already_stored == 3000
    assert (redelivered.written_delta, redelivered.written_clickhouse) == (0, 0)
    assert counts(res, TRADES) == (3000, 3000)
    assert_bars_equal(stored_bars(res["clickhouse"]), reference_bars(trades))
    assert batch(res, TRADES, "b-empty").consumed == 0
    wait_for(lambda: res["pulsar"].backlog(TRADES.topic, SUBSCRIPTION) == 0, 30, what="zero backlog")


def test_sink_written_but_other_sink_not_is_completed_on_redelivery(clean):
    """A run killed between the Delta commit and the ClickHouse insert: the retry fills in ClickHouse only."""
    res = clean
    publish(res, 1500, seed=3)
    first = batch(res, QUOTES, "b-half", ack=False)
    res["clickhouse"].command("TRUNCATE TABLE market_data.quotes")  # as if the ClickHouse insert never happened
    retry = batch(res, QUOTES, "b-retry")
    assert (retry.written_delta, retry.written_clickhouse) == (0, 1500) and first.written_delta == 1500
    assert counts(res, QUOTES) == (1500, 1500)


def test_malformed_messages_land_in_quarantine_and_the_batch_goes_on(clean):
    res = clean
    publish(res, 500, seed=4)
    bad = [
        b"not json",
        b'{"schema_version": 9}',
        b'{"schema_version": 1, "instrument_id": "X"}',
        b'{"schema_version":1,"instrument_id":"AAPL.XNAS","price":-5,"size":1,"aggressor_side":"BUYER",'
        b'"trade_id":"neg","ts_event":1,"ts_init":1}',
    ]
    with res["pulsar"].client() as client:
        p = schemas.create_producer(client, TRADES.topic)
        for b in bad:
            p.send(b)
        p.close()
    out = batch(res, TRADES, "b-bad")
    assert out.consumed == 504 and out.valid == 500 and out.quarantined == 4
    rows = res["clickhouse"].query_df("SELECT message_id, batch_id, reason, payload FROM market_data.quarantine FINAL")
    assert len(rows) == 4 and set(rows["batch_id"]) == {"b-bad"}
    reasons = sorted(r.split(":")[0] for r in rows["reason"])
    assert reasons == ["bad_value", "invalid_json", "missing_field", "unknown_schema_version"]
    assert b"not json" in {p if isinstance(p, bytes) else p.encode() for p in rows["payload"]}
    assert counts(res, TRADES) == (500, 500)
