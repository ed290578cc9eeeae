"""Bar building by hand, late trades, and the simulator's replay and history modes."""

import pyarrow as pa

from nautilus_assets.market_data import sinks

MIN = 60 * 10**9


def test_touched_minutes():
    t = pa.table({"instrument_id": ["A", "A", "B"], "ts_event": [MIN * 10 + 5, MIN * 10 + 59 * 10**9, MIN * 11]})
    assert sorted(sinks.touched_minutes(t)) == [("A", 600), ("B", 660)]
