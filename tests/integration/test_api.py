"""The product read APIs over real HTTP (the API process `nautilus api` runs, on the test instance's ports), against
the real stores and the real Redis: access control for every role and product, paging, formats, time travel,
/latest from the cache and from the store, bad input, metrics."""

import io
import os
import signal
import subprocess
import sys
import time

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from nautilus_assets import current
from nautilus_assets.analytics import assets as analytics
from nautilus_assets.api import client
from nautilus_assets.market_data.ingest import Stream
from nautilus_assets.market_data.schema import QUOTES, TRADES
from nautilus_assets.market_data.simulator import MarketSimulator
from nautilus_assets.ml import store as ml_store
from resources import access
from resources.settings import API_PORTS
from scripts import services
from scripts.publisher import publish_tables
from tests.helpers import wait_for

INSTR = ["AAPL.XNAS", "MSFT.XNAS"]
# Who may read which product, written out (resources/access.py's declaration, as the source architecture states it)
ENGINES = {"analytics", "microstructure", "portfolio", "risk", "ml", "strategy"}
READERS = {
    "market_data_feed": ENGINES | {"market_data", "governance"},
    "market_microstructure": ENGINES | {"governance"},
    "market_analytics": {"analytics", "ml", "strategy", "governance"},
    "portfolio_states": {"portfolio", "risk", "analytics", "governance"},
    "risk_metrics": {"risk", "portfolio", "analytics", "governance"},
    "ml_predictions": {"ml", "analytics", "microstructure", "portfolio", "risk", "governance"},
}


def ingest(res, feed, batch_id, cache=True):
    with Stream(
        feed,
        res["pulsar"],
        res["lake"],
        res["clickhouse"],
        7 * 86400,
        log=lambda m: None,
        cache=res["redis"] if cache else None,
    ) as st:
        return st.commit(batch_id, st.receive(100_000, 10, first=True))


@pytest.fixture(scope="module")
def market(api, res, instance):
    """Two batches of trades and quotes (Delta versions 0 and 1), and the indicators of their bars."""
    from tests.helpers import reset_state

    reset_state(res)
    now = time.time_ns()
    # a flat rate: with the intraday profile, two takes (a 10,000-event chunk each) starting 4 h before a midday run
    # reached past now, and their last trades were quarantined as future_ts_event
    sim = MarketSimulator(INSTR, seed=5, start_ns=now - 4 * 3600 * 10**9, events_per_second=2, intraday_profile=False)
    stamps = []
    for k in range(2):
        trades, quotes = sim.take(3000, 3000)
        publish_tables(res["pulsar"], trades, quotes)
        assert ingest(res, TRADES, f"api-t{k}").valid == 3000
        assert ingest(res, QUOTES, f"api-q{k}").valid == 3000
        stamps.append(pd.Timestamp.now(tz="UTC"))
        time.sleep(1.1)
    assert dg.materialize(
        [analytics.indicators_1m], instance=instance, resources={k: res[k] for k in ("clickhouse", "pulsar", "redis")}
    ).success
    return stamps


def token(settings, role: str) -> str:
    return settings.env[access.token_var(role)]


def get(settings, product: str, path: str = "", role: str | None = "governance", **params) -> requests.Response:
    headers = {"Authorization": f"Bearer {token(settings, role)}"} if role else {}
    return requests.get(settings.api_url(product) + path, params=params, headers=headers, timeout=60)


def test_every_role_reads_exactly_the_products_declared_for_it(api):
    assert {p: {r for r in access.ROLES if access.access(r, PRODUCT_DOMAIN[p]) != "none"} for p in READERS} == READERS
    seen = {}
    for product in API_PORTS:
        for role in access.ROLES:
            seen[(role, product)] = get(api, product, role=role).status_code
        assert get(api, product, "/latest", role=None).status_code == 401  # no token
        r = requests.get(api.api_url(product), headers={"Authorization": "Bearer not-a-token"}, timeout=30)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert seen == {(r, p): 200 if r in READERS[p] else 403 for r in access.ROLES for p in API_PORTS}
    # the data routes enforce the same rule
    assert get(api, "portfolio_states", "/positions", role="strategy").status_code == 403
    assert get(api, "portfolio_states", "/positions", role="risk").status_code in (200, 404)  # 404: no table yet


def test_a_dataset_before_its_first_materialization_is_a_404(api, res):
    res["clickhouse"].command("DROP TABLE IF EXISTS ml.model_registry")
    try:
        r = get(api, "ml_predictions", "/models", role="risk")
        assert r.status_code == 404 and "holds no data yet" in r.text
        r = get(api, "ml_predictions", "/latest", role="risk")
        assert r.status_code == 200 and r.headers["x-nautilus-source"] in ("store; no data yet", "store; cache=missing")
    finally:  # as the set-up would at the next start (the ML asset no longer makes its tables)
        res["clickhouse"].ensure(ml_store.DDL)


PRODUCT_DOMAIN = {
    "market_data_feed": "market_data",
    "market_microstructure": "microstructure",
    "market_analytics": "analytics",
    "portfolio_states": "portfolio",
    "risk_metrics": "risk",
    "ml_predictions": "ml",
}


def test_pages_follow_the_cursor_and_every_format_holds_the_same_rows(api, res, market):
    direct = res["clickhouse"].query_df(
        "SELECT instrument_id, ts_event, message_id, price, size FROM market_data.trades "
        "WHERE instrument_id = 'AAPL.XNAS' ORDER BY instrument_id, ts_event, message_id"
    )
    assert len(direct) > 1000
    rows, cursor, pages = [], None, 0
    while True:
        r = get(
            api,
            "market_data_feed",
            "/trades",
            instrument="AAPL.XNAS",
            limit=700,
            **({"cursor": cursor} if cursor else {}),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        rows += body["rows"]
        pages += 1
        cursor = body["next_cursor"]
        assert cursor == r.headers.get("x-next-cursor")
        if not cursor:
            break
    assert pages == len(direct) // 700 + 1
    got = pd.DataFrame(rows)[["instrument_id", "ts_event", "message_id", "price", "size"]]
    pd.testing.assert_frame_equal(got, direct.astype({"instrument_id": str}), check_dtype=False)
    # Arrow IPC and Parquet carry the same rows; the client reads every page as Arrow
    first = pd.DataFrame(get(api, "market_data_feed", "/trades", instrument="AAPL.XNAS", limit=500).json()["rows"])
    arrow = pa.ipc.open_stream(
        get(api, "market_data_feed", "/trades", instrument="AAPL.XNAS", limit=500, format="arrow").content
    ).read_all()
    parquet = pq.read_table(
        io.BytesIO(get(api, "market_data_feed", "/trades", instrument="AAPL.XNAS", limit=500, format="parquet").content)
    )
    for t in (arrow, parquet):
        assert t.num_rows == 500
        assert t.column("message_id").to_pylist() == first["message_id"].tolist()
        assert t.column("price").to_pylist() == first["price"].tolist()
    df = client.read(
        "market_data_feed",
        "trades",
        instrument="AAPL.XNAS",
        limit=999,
        url=api.api_url("market_data_feed"),
        token=token(api, "strategy"),
    )
    assert df["message_id"].tolist() == direct["message_id"].tolist()


def test_time_range_and_time_travel(api, res, market):
    all_now = client.read("market_data_feed", "trades", url=api.api_url("market_data_feed"), token=token(api, "ml"))
    assert len(all_now) == 6000
    # as_of a Delta version, and as_of a time between the two batches' commits: the first batch only
    v0 = client.read(
        "market_data_feed", "trades", as_of="0", url=api.api_url("market_data_feed"), token=token(api, "ml")
    )
    at = client.read(
        "market_data_feed",
        "trades",
        as_of=market[0].isoformat(),
        url=api.api_url("market_data_feed"),
        token=token(api, "ml"),
    )
    first = set(all_now.loc[all_now["batch_id"] == "api-t0", "message_id"])
    assert set(v0["message_id"]) == set(at["message_id"]) == first
    assert get(api, "market_data_feed", "/trades", as_of="0").headers["x-delta-version"] == "0"
    # [start, end) in ISO and in int64 ns select the same rows, exactly those in the span
    ts = all_now["ts_event"].sort_values().to_numpy()
    lo, hi = int(ts[1000]), int(ts[2000])
    iso = client.read(
        "market_data_feed",
        "trades",
        start=pd.Timestamp(lo, tz="UTC").isoformat(),
        end=pd.Timestamp(hi, tz="UTC").isoformat(),
        url=api.api_url("market_data_feed"),
        token=token(api, "ml"),
    )
    ns = client.read(
        "market_data_feed",
        "trades",
        start=str(lo),
        end=str(hi),
        url=api.api_url("market_data_feed"),
        token=token(api, "ml"),
    )
    assert sorted(iso["message_id"]) == sorted(ns["message_id"])
    assert len(ns) == ((ts >= lo) & (ts < hi)).sum() and ns["ts_event"].between(lo, hi - 1).all()
    bars = client.read(
        "market_data_feed",
        "bars_1m",
        instrument="MSFT.XNAS",
        start=pd.Timestamp(lo, tz="UTC"),
        url=api.api_url("market_data_feed"),
        token=token(api, "ml"),
    )
    assert (
        len(bars) > 10 and (pd.to_datetime(bars["minute"], utc=True) >= pd.Timestamp(lo, tz="UTC").floor("min")).all()
    )


def test_latest_reads_the_cache_and_falls_back_to_the_store(api, res, market):
    reference = current.from_store(current.KINDS["quotes"], res["clickhouse"])  # the store's latest per instrument
    assert {r["instrument_id"] for r in reference} == set(INSTR)
    r = get(api, "market_data_feed", "/latest")
    assert r.headers["x-nautilus-source"] == "store; cache=incomplete"  # written by the runs, never rebuilt yet
    assert sorted(r.json()["rows"], key=str) == sorted(reference, key=str)
    r = get(api, "market_data_feed", "/latest")
    assert r.headers["x-nautilus-source"] == "redis"  # rebuilt from the store's answer
    assert sorted(r.json()["rows"], key=str) == sorted(reference, key=str)
    # indicators: the analytics run wrote the latest row per instrument, equal to the store's
    ind = get(api, "market_analytics", "/latest", role="ml", instrument="AAPL.XNAS").json()
    want = res["clickhouse"].query_df(
        f"SELECT minute, rsi_14, close FROM {analytics.TABLE} FINAL "
        "WHERE instrument_id = 'AAPL.XNAS' ORDER BY minute DESC LIMIT 1"
    )
    assert ind["count"] == 1 and ind["rows"][0]["close"] == want["close"][0]
    assert pd.Timestamp(ind["rows"][0]["minute"]) == pd.Timestamp(want["minute"][0], tz="UTC")
    # an emptied cache answers from the store and says so; a stale one too
    res["redis"].client().flushdb()
    assert get(api, "market_data_feed", "/latest").headers["x-nautilus-source"] == "store; cache=missing"
    res["redis"].set_meta("quotes", updated_at=str(time.time() - 3600))
    assert get(api, "market_data_feed", "/latest").headers["x-nautilus-source"] == "store; cache=stale"


def test_an_api_rebuilds_an_idle_or_emptied_cache_ahead_of_requests(api, res, settings, market):
    port = settings.port_base + 90
    log = open(settings.home / "api-refresh.log", "ab")
    p = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "nautilus_assets.api.serve", "--product", "market_analytics"],
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NAUTILUS_CACHE_REFRESH_SECONDS": "0.5", "NAUTILUS_API_PORT_MARKET_ANALYTICS": str(port)},
    )
    try:
        services.wait_port(port, "market_analytics API", timeout=120)
        res["redis"].client().flushdb()
        assert wait_for(lambda: res["redis"].meta("indicators").get("complete") == "1", timeout=20)
        url = f"http://127.0.0.1:{port}/api/v1/market_analytics"
        r = requests.get(f"{url}/latest", headers={"Authorization": f"Bearer {token(api, 'ml')}"}, timeout=30)
        assert r.headers["x-nautilus-source"] == "redis" and r.json()["count"] == len(INSTR)
        res["redis"].set_meta("indicators", updated_at=str(time.time() - 3600))  # nobody wrote it for an hour
        assert wait_for(lambda: time.time() - float(res["redis"].meta("indicators")["updated_at"]) < 60, timeout=20)
        assert (
            "nautilus_api_cache_fallbacks_total{"
            not in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        )  # no request waited
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)


def test_a_cache_that_is_down_never_fails_a_batch_or_a_read(api, res, settings):
    services.stop_one(settings, "redis")
    try:
        trades, quotes = MarketSimulator(INSTR, seed=9, start_ns=time.time_ns() - 60 * 10**9).take(0, 400)
        publish_tables(res["pulsar"], trades, quotes)
        assert ingest(res, QUOTES, "api-q-down").valid == 400  # committed without the cache
        r = get(api, "market_data_feed", "/latest")
        assert r.status_code == 200 and r.headers["x-nautilus-source"] == "store; cache=unavailable"
        newest = max(r.json()["rows"], key=lambda q: q["ts_event"])["ts_event"]
        assert newest == max(quotes.column("ts_event").to_pylist())  # the store has the batch
    finally:
        services.start_redis(settings)
    assert get(api, "market_data_feed", "/latest").headers["x-nautilus-source"] == "store; cache=missing"
    assert get(api, "market_data_feed", "/latest").headers["x-nautilus-source"] == "redis"


def test_bad_input_gets_a_clear_4xx(api, market):
    cases = [
        ("/trades", {"start": "yesterday"}, 400, "not an ISO 8601 time"),
        ("/trades", {"start": "2026-12-05", "end": "2026-12-04"}, 400, "start must be before end"),
        ("/trades", {"cursor": "not-a-cursor"}, 400, "cursor"),
        ("/bars_1m", {"as_of": "3"}, 400, "not lake-backed"),
        ("/trades", {"as_of": "999"}, 400, "not a version"),
        ("/bars_1d", {"portfolio": "x"}, 400, "not per portfolio"),
        ("/nope", {}, 404, "has no dataset 'nope'"),
        ("/trades", {"limit": "0"}, 422, "greater than or equal to 1"),
        ("/trades", {"format": "csv"}, 422, "json"),
    ]
    for path, params, code, text in cases:
        r = get(api, "market_data_feed", path, **params)
        assert r.status_code == code and text in r.text, (path, params, r.status_code, r.text)


def test_openapi_docs_and_metrics(api, market):
    spec = requests.get(api.api_url("market_analytics").split("/api/")[0] + "/openapi.json", timeout=30).json()
    assert {"/api/v1/market_analytics", "/api/v1/market_analytics/latest", "/api/v1/market_analytics/{dataset}"} <= set(
        spec["paths"]
    )
    params = {p["name"] for p in spec["paths"]["/api/v1/market_analytics/{dataset}"]["get"]["parameters"]}
    assert {"instrument", "start", "end", "as_of", "limit", "cursor", "format"} <= params
    base = api.api_url("market_data_feed").split("/api/")[0]
    assert requests.get(base + "/docs", timeout=30).status_code == 200
    get(api, "market_data_feed", "/latest", role="strategy")
    get(api, "market_data_feed", "/latest", role=None)
    text = requests.get(base + "/metrics", timeout=30).text
    assert (
        'nautilus_api_requests_total{code="200",product="market_data_feed",route="/api/v1/market_data_feed/latest"}'
        in text
    )
    assert 'code="401",product="market_data_feed",route="/api/v1/market_data_feed/latest"' in text
    assert 'nautilus_api_request_duration_seconds_bucket{le="0.001",product="market_data_feed",' in text
