"""`nautilus audit row` takes structured filters, not SQL: a column of the table, an operator from a fixed list, and a
value bound as a parameter, with a row limit the caller cannot raise. The abuses that raw SQL allowed (issue 13:
"1=1 --" dropping the LIMIT and pulling a whole table under the chDB lock; a quote breaking out of a value) are
tried on a ClickHouse table and a PostgreSQL one."""

import os
import subprocess
import sys

import pytest

from nautilus_assets.audit.provenance import MAX_ROWS, fetch_rows
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def tables(res):
    ch = res["clickhouse"]
    ch.ensure(
        [
            "CREATE DATABASE IF NOT EXISTS audit_test",
            "CREATE TABLE IF NOT EXISTS audit_test.rows (id UInt64, name String, day Date, version UInt64) "
            "ENGINE = MergeTree ORDER BY id",
        ]
    )
    with ch.session() as c:
        c.command("TRUNCATE TABLE audit_test.rows")
        c.command(
            "INSERT INTO audit_test.rows SELECT number, concat('n', toString(number)), "
            "toDate('2026-01-01') + number % 10, 1 FROM numbers(1000)"
        )
    from nautilus_assets.portfolio import store

    with res["postgres"].connect() as conn:
        store.ensure_schema(conn)  # the portfolio schema (the store's role owns it)
        conn.execute("DROP TABLE IF EXISTS portfolio.audit_test_rows")
        conn.execute("CREATE TABLE portfolio.audit_test_rows (id bigint, name text)")
        conn.execute("INSERT INTO portfolio.audit_test_rows SELECT g, 'n' || g FROM generate_series(0, 999) g")
        conn.commit()
    yield res
    with ch.session() as c:
        c.command("DROP DATABASE IF EXISTS audit_test")
    with res["postgres"].connect() as conn:
        conn.execute("DROP TABLE IF EXISTS portfolio.audit_test_rows")
        conn.commit()


@pytest.mark.parametrize("table", ["audit_test.rows", "portfolio.audit_test_rows"])
def test_filters_select_and_values_stay_values(tables, table):
    assert [r["id"] for r in fetch_rows(tables, table, [("id", "=", "42")])] == [42]
    assert [r["name"] for r in fetch_rows(tables, table, [("name", "=", "n7")])] == ["n7"]
    assert sorted(r["id"] for r in fetch_rows(tables, table, [("id", ">=", "10"), ("id", "<", "13")])) == [10, 11, 12]
    assert len(fetch_rows(tables, table, [("name", "like", "n99%")], limit=50)) == 11
    # a quote cannot leave the value: matches nothing instead of everything
    assert fetch_rows(tables, table, [("name", "=", "n1' OR '1'='1")]) == []
    assert fetch_rows(tables, table, [("name", "=", "n1' --")]) == []


@pytest.mark.parametrize("table", ["audit_test.rows", "portfolio.audit_test_rows"])
def test_the_limit_cannot_be_removed_or_raised(tables, table):
    assert len(fetch_rows(tables, table, [("id", ">=", "0")], limit=10**9)) == MAX_ROWS
    assert len(fetch_rows(tables, table, [], limit=10**9)) == MAX_ROWS


@pytest.mark.parametrize(
    "bad", [[("1=1 --", "=", "1")], [("id", "; DROP TABLE x", "1")], [("nope", "=", "1")], [("id) OR (1", "=", "1")]]
)
def test_columns_and_operators_are_checked(tables, bad):
    with pytest.raises(ValueError):
        fetch_rows(tables, "audit_test.rows", bad)
    with pytest.raises(ValueError):
        fetch_rows(tables, "portfolio.audit_test_rows", bad)
    with pytest.raises(ValueError):
        fetch_rows(tables, "audit_test.rows; DROP DATABASE x", [("id", "=", "1")])


def test_the_cli_refuses_raw_sql(settings, tables):
    def row(*where):
        args = [a for w in where for a in ("--where", w)]
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "scripts.cli",
                "audit",
                "row",
                "--table",
                "audit_test.rows",
                *args,
                "--limit",
                "100000",
            ],
            cwd=ROOT,
            env={**os.environ, **settings.env},
            capture_output=True,
            text=True,
            timeout=300,
        )

    cp = row("1=1 --")
    assert cp.returncode != 0 and "expected 'column op value'" in cp.stderr
    cp = row("id >= 0")
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert cp.stdout.count('"table": "audit_test.rows"') == MAX_ROWS
