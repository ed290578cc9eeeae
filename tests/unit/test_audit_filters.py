"""`nautilus audit row` takes structured filters, not SQL: a column of the table, an operator from a fixed list, and a
value bound as a parameter, with a row limit the caller cannot raise. The abuses that raw SQL allowed (issue 13:
"1=1 --" dropping the LIMIT and pulling a whole table under the chDB lock; a quote breaking out of a value) are
tried on a ClickHouse table and a PostgreSQL one."""

import pytest

from nautilus_assets.audit.provenance import parse_filter


def test_parse_filter():
    assert parse_filter("trade_id = S7T1-1") == ("trade_id", "=", "S7T1-1")
    assert parse_filter("day>=2026-01-03") == ("day", ">=", "2026-01-03")
    assert parse_filter("name LIKE n1%") == ("name", "like", "n1%")
    assert parse_filter("name = a b = c") == ("name", "=", "a b = c")
    for bad in ("1=1 --", "trade_id", "id ~ 3", "(id) = 1"):
        with pytest.raises(ValueError):
            parse_filter(bad)
