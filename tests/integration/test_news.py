"""Issue 12 item 3: the simulator's news items go through Pulsar into `market_data_feed/news` (Delta + ClickHouse)
with the feeds' machinery: exactly once, a reused story id or an item about no instrument quarantined, each batch
recorded by the ingest job with its checks."""

import time

import orjson
import pyarrow.compute as pc

from nautilus_assets.definitions import defs
from nautilus_assets.market_data.assets import BATCH_TAG, NEWS_KEY
from nautilus_assets.market_data.schema import NEWS
from nautilus_assets.market_data.simulator import NewsSimulator, messages
from scripts.publisher import Publisher
from tests.helpers import batch, counts


def _publish(res, payloads: list[bytes]) -> None:
    with res["pulsar"].client() as client:
        pub = Publisher(client)
        pub.send(NEWS.name, payloads)
        pub.flush()


def test_news_land_exactly_once_and_bad_items_are_quarantined(clean, instance):
    res = clean
    now = time.time_ns()
    news = NewsSimulator(["AAPL.XNAS", "SPY.ARCX", "BTCUSDT.BINANCE"], seed=3, start_ns=now - 3600 * 10**9).until(now)
    assert news.num_rows > 50 and max(len(i) for i in news["instruments"].to_pylist()) == 2
    payloads = messages(news)
    reused = orjson.loads(payloads[0]) | {"headline": "the same id, another story"}
    about_nothing = orjson.loads(payloads[1]) | {"news_id": "N-empty", "instruments": []}
    _publish(res, payloads + [orjson.dumps(reused), orjson.dumps(about_nothing)])
    r = batch(res, NEWS, "news-1")
    assert (r.valid, r.quarantined) == (news.num_rows, 2)
    assert sorted(w.split(":")[0] for w in r.quarantine.values()) == ["bad_value", "duplicate_news_id"]
    assert counts(res, NEWS) == (news.num_rows, news.num_rows)
    stored = res["clickhouse"].query_df("SELECT news_id, instruments, source FROM market_data.news ORDER BY ts_event")
    assert stored["news_id"].tolist() == news["news_id"].to_pylist()
    assert [list(i) for i in stored["instruments"]] == news["instruments"].to_pylist()
    # a second publication of the same items: new message ids, reused story ids: all quarantined, nothing stored
    _publish(res, payloads)
    again = batch(res, NEWS, "news-2")
    assert (again.valid, again.quarantined) == (0, news.num_rows)
    assert counts(res, NEWS) == (news.num_rows, news.num_rows)

    later = NewsSimulator(["AAPL.XNAS"], seed=4, start_ns=now - 600 * 10**9).until(now)
    _publish(res, messages(later))
    op = "ingest_news_batch"
    result = defs.resolve_job_def("ingest_news").execute_in_process(
        instance=instance, tags={BATCH_TAG: "news-job"}, run_config={"ops": {op: {"config": {"idle_seconds": 3}}}}
    )
    assert result.success
    mats = [m for m in result.asset_materializations_for_node(op) if m.asset_key == NEWS_KEY]
    assert mats and sum(m.metadata["written_clickhouse"].value for m in mats) == later.num_rows
    evals = result.get_asset_check_evaluations()
    assert {e.check_name for e in evals} == {"reconciles_with_consumed", "no_duplicate_ids"}
    assert all(e.passed for e in evals)
    assert pc.sum(pc.equal(pc.list_value_length(later["instruments"]), 1)).as_py() == later.num_rows
