"""The project's ClickHouse HTTP server over embedded chDB (scripts/clickhouse_server.py), driven by real clients:
clickhouse-connect as every process uses it, and raw HTTP as curl would."""

import base64
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import clickhouse_connect
import pandas as pd
import pyarrow as pa
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from scripts import services

DB = "scratch_server"


def _client(settings, password: str | None = None, **kw):
    return clickhouse_connect.get_client(
        host="127.0.0.1",
        port=settings.port("clickhouse"),
        username="default",
        password=password or settings["CLICKHOUSE_PASSWORD"],
        **kw,
    )


def _http(settings, sql: str | None, body: bytes = b"", password: str | None = None, headers: dict | None = None):
    url = f"http://127.0.0.1:{settings.port('clickhouse')}/"
    if sql is not None:
        url += "?" + urllib.parse.urlencode({"query": sql})
    auth = base64.b64encode(f"default:{password or settings['CLICKHOUSE_PASSWORD']}".encode()).decode()
    req = urllib.request.Request(
        url,
        data=body or None,
        headers={"Authorization": f"Basic {auth}", **(headers or {})},
        method="POST" if body or sql else "GET",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@pytest.fixture
def table(settings):
    c = _client(settings)
    c.command(f"CREATE DATABASE IF NOT EXISTS {DB}")
    c.command(f"DROP TABLE IF EXISTS {DB}.t")
    c.command(
        f"CREATE TABLE {DB}.t (id UInt64, price Float64, instrument LowCardinality(String), "
        "ts DateTime64(9, 'UTC')) ENGINE = MergeTree ORDER BY id"
    )
    yield c
    c.close()
    with _client(settings) as fresh:  # a test may have restarted the server under the first client
        fresh.command(f"DROP DATABASE {DB}")


def test_clickhouse_connect_reads_and_writes_every_way(settings, table):
    c = table
    n = 50_000
    ts = pd.Timestamp("2026-12-01 14:30:00.123456789", tz="UTC").value
    arrow = pa.table(
        {
            "id": pa.array(range(n), pa.uint64()),
            "price": pa.array([i / 4 for i in range(n)]),
            "instrument": pa.array(["AAPL.XNAS", "SPY.ARCX"] * (n // 2)),
            "ts": pa.array([ts + i for i in range(n)], pa.timestamp("ns", "UTC")),
        }
    )
    assert c.insert_arrow(f"{DB}.t", arrow).written_rows == n
    df = pd.DataFrame({"id": [10**9], "price": [1.5], "instrument": ["ESZ6.GLBX"], "ts": [pd.Timestamp(ts, tz="UTC")]})
    assert c.insert_df(f"{DB}.t", df).written_rows == 1
    c.insert(
        f"{DB}.t",
        [[10**9 + 1, 2.5, "MSFT.XNAS", pd.Timestamp(ts, tz="UTC").floor("us").to_pydatetime()]],
        column_names=["id", "price", "instrument", "ts"],
    )
    assert c.query(f"SELECT count(), sum(price) FROM {DB}.t").first_row == (n + 2, sum(i / 4 for i in range(n)) + 4)
    back = c.query_arrow(f"SELECT * FROM {DB}.t WHERE id < {n} ORDER BY id")
    assert back.column("id").to_pylist() == arrow.column("id").to_pylist()
    assert back.column("ts").cast(pa.int64()).to_pylist() == arrow.column("ts").cast(pa.int64()).to_pylist()
    rows = c.query(
        f"SELECT instrument, count() FROM {DB}.t WHERE id >= %(lo)s GROUP BY instrument ORDER BY 1",
        parameters={"lo": 10**9},
    ).result_rows
    assert rows == [("ESZ6.GLBX", 1), ("MSFT.XNAS", 1)]
    assert c.query("SELECT {x:UInt32} * 2", parameters={"x": 21}).first_row == (42,)  # server-side binding
    assert c.query(f"SELECT * FROM {DB}.t WHERE id > 10000000000").result_rows == []
    assert list(c.query_df(f"SELECT id, price FROM {DB}.t WHERE id = 3").itertuples(index=False)) == [(3, 0.75)]


def test_errors_keep_their_clickhouse_code_and_bad_credentials_are_refused(settings, table):
    with pytest.raises(DatabaseError, match="code: 60") as e:
        table.query(f"SELECT * FROM {DB}.no_such_table")
    assert "UNKNOWN_TABLE" in str(e.value)
    with pytest.raises(DatabaseError, match="code: 62"):
        table.command("SELEC 1")
    assert table.command("SELECT 1") == 1  # the session survives its errors
    with pytest.raises(DatabaseError, match="516"):
        _client(settings, password="wrong")
    status, body, headers = _http(settings, "SELECT 1", password="wrong")
    assert status == 401 and headers["X-ClickHouse-Exception-Code"] == "516"


def test_sessions_keep_their_own_settings_and_temporary_tables(settings, table):
    a, b = _client(settings), _client(settings)
    a.command("SET max_threads = 1")
    a.command("CREATE TEMPORARY TABLE mine (x UInt8)")
    a.command("INSERT INTO mine VALUES (7)")
    setting = "SELECT value FROM system.settings WHERE name = 'max_threads'"
    assert a.query(setting).first_row == ("1",) and b.query(setting).first_row != ("1",)
    assert a.command("SELECT x FROM mine") == 7
    with pytest.raises(DatabaseError, match="code: 60"):
        b.command("SELECT x FROM mine")
    # a per-query setting holds for that query only
    assert a.query(
        "SELECT value FROM system.settings WHERE name = 'max_block_size'", settings={"max_block_size": 1234}
    ).first_row == ("1234",)
    assert a.query("SELECT value FROM system.settings WHERE name = 'max_block_size'").first_row != ("1234",)
    a.close()
    b.close()


def test_clients_of_many_threads_at_once(settings, table):
    errors, done = [], []

    def work(k):
        try:
            c = _client(settings)
            for i in range(20):
                c.insert(
                    f"{DB}.t",
                    [[k * 1000 + i, float(i), "AAPL.XNAS", pd.Timestamp.now(tz="UTC")]],
                    column_names=["id", "price", "instrument", "ts"],
                )
                assert c.command(f"SELECT count() FROM {DB}.t WHERE id = {k * 1000 + i}") == 1
            done.append(k)
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors and sorted(done) == list(range(6))
    assert table.command(f"SELECT count() FROM {DB}.t") == 120


def test_raw_http_as_curl_sends_it(settings, table):
    assert _http(settings, None)[0:2] == (200, b"Ok.\n")  # GET / : health check
    body = b'{"id": 1, "price": 2.5, "instrument": "AAPL.XNAS", "ts": "2026-12-01 10:00:00"}\n' * 3
    status, _, headers = _http(settings, f"INSERT INTO {DB}.t FORMAT JSONEachRow", body)
    assert status == 200 and '"written_rows": "3"' in headers["X-ClickHouse-Summary"]
    status, out, headers = _http(settings, None, f"SELECT count(), sum(price) FROM {DB}.t".encode())
    assert (status, out, headers["X-ClickHouse-Format"]) == (200, b"3\t7.5\n", "TabSeparated")
    status, out, _ = _http(
        settings, None, f"INSERT INTO {DB}.t FORMAT CSV\n2,1,SPY.ARCX,2026-12-01 10:00:00\n".encode()
    )
    assert status == 200 and table.command(f"SELECT count() FROM {DB}.t") == 4
    status, out, headers = _http(settings, None, b"SELECT * FROM nowhere")
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "60" and out.startswith(b"Code: 60.")


def test_data_outlives_a_server_restart(settings, table):
    table.insert(
        f"{DB}.t", [[5, 1.0, "AAPL.XNAS", pd.Timestamp.now(tz="UTC")]], column_names=["id", "price", "instrument", "ts"]
    )
    services.restart(settings, "clickhouse")
    deadline = time.time() + 60
    while True:
        try:
            c = _client(settings)
            break
        except Exception:  # noqa: BLE001  (refused until the restarted server is up)
            assert time.time() < deadline
            time.sleep(0.5)
    assert c.command(f"SELECT count() FROM {DB}.t WHERE id = 5") == 1
    c.close()
