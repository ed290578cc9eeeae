"""portfolio_states end to end: model fills on the engines topic -> PostgreSQL 15 (native daily partitions) and
PGlite + TimescaleDB (hypertable),
positions, cash and NAV equal an independent pandas computation marked to the latest bar close."""

import time

import dagster as dg
import pandas as pd
import pytest

from nautilus_assets import current
from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.market_data.simulator import MarketSimulator
from nautilus_assets.portfolio import assets as portfolio
from nautilus_assets.portfolio.models import (
    FILLS_TOPIC,
    PORTFOLIOS,
    fill_messages,
    model_fills,
)
from resources import schemas
from scripts.publisher import publish_tables
from tests.helpers import batch, reference_bars


@pytest.fixture(params=["native", "timescaledb"])
def store(request, clean, settings):
    """The portfolio store on the test PostgreSQL 15 (native partitions) or on PGlite + TimescaleDB (hypertable)."""
    return clean["postgres"] if request.param == "native" else request.getfixturevalue("timescaledb")


def test_portfolio_states_from_fills(clean, store, instance):
    res = {**clean, "postgres": store}
    trades, _ = MarketSimulator(
        ["AAPL.XNAS", "SPY.ARCX"],
        seed=31,
        start_ns=time.time_ns() - 2 * 3600 * 10**9,
        events_per_second=2,
        intraday_profile=False,
    ).take(4000, 0)  # past at any hour
    publish_tables(res["pulsar"], trades, trades.slice(0, 0))
    batch(res, TRADES, "p-1")
    fills = model_fills(trades, seed=5)
    with res["pulsar"].client() as client:
        p = schemas.create_producer(client, FILLS_TOPIC)
        for m in fill_messages(fills) + [b'{"schema_version": 1, "fill_id": "bad", "quantity": 0}']:
            p.send(m)
        p.close()
    resources = {
        "clickhouse": res["clickhouse"],
        "pulsar": res["pulsar"],
        "postgres": res["postgres"],
        "redis": res["redis"],
    }
    for _ in range(2):  # the second run finds no new fills: nothing doubles
        result = dg.materialize([portfolio.portfolio_states], instance=instance, resources=resources)
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    meta = result.asset_materializations_for_node("portfolio_states__positions")[0].metadata
    # the latest position and mark per portfolio and instrument in Redis, as the store has it
    cached, _ = res["redis"].get("positions")
    kind = current.KINDS["positions"]
    assert cached and cached == {kind.field(r): r for r in current.from_store(kind, postgres=res["postgres"])}
    mode = "timescaledb" if store.user == "postgres" else "native"
    assert meta["partitioning"].value == mode and "nav_curve" in meta

    with res["postgres"].connect() as conn:
        assert conn.execute("SELECT count(*) FROM portfolio.fills").fetchone()[0] == fills.num_rows
        assert conn.execute("SELECT reason FROM portfolio.fills_quarantine").fetchone()[0].startswith("bad_value")
        if mode == "native":
            assert (
                conn.execute(
                    "SELECT count(*) FROM pg_inherits WHERE inhparent = 'portfolio.portfolio_states'::regclass"
                ).fetchone()[0]
                >= 1
            )
        else:
            assert conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables").fetchall() == [
                ("portfolio_states",)
            ]
        latest = pd.DataFrame(
            conn.execute(
                "SELECT portfolio_id, instrument_id, position, cash, nav, mark_price FROM portfolio.portfolio_states "
                "WHERE ts = (SELECT max(ts) FROM portfolio.portfolio_states)"
            ).fetchall(),
            columns=["portfolio_id", "instrument_id", "position", "cash", "nav", "mark_price"],
        )

    f = fills.to_pandas()
    bars = reference_bars(trades)
    marks = bars.sort_values("minute").groupby("instrument_id")["close"].last()
    pos = f.groupby(["portfolio_id", "instrument_id"])["quantity"].sum()
    cash = pd.Series(PORTFOLIOS) - (f["quantity"] * f["price"] + f["fee"]).groupby(f["portfolio_id"]).sum()
    for row in latest.itertuples():
        assert abs(row.position - pos[(row.portfolio_id, row.instrument_id)]) < 1e-9
        assert abs(row.cash - cash[row.portfolio_id]) < 1e-6
        assert row.mark_price == marks[row.instrument_id]
    nav = cash + (pos * pos.index.get_level_values(1).map(marks)).groupby(level=0).sum()
    for pf, g in latest.groupby("portfolio_id"):
        assert abs(g["nav"].iloc[0] - nav[pf]) < 1e-6
