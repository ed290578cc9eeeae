"""risk_metrics over 520 days of history: daily bars -> end-of-day positions and NAV -> positions-based VaR/ES,
components and stress (and the backtest check), each day's figures equal to the measures recomputed from the stored
positions and closes with straightforward NumPy."""

import math
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from nautilus_assets.market_data.daily import bars_1d
from nautilus_assets.portfolio.daily import daily_nav
from nautilus_assets.risk import assets as risk
from scripts.history import write_history
from tests.helpers import product_resources

RANGE = "dagster/asset_partition_range_{}"


def materialize_range(asset, first: date, last: date, res, instance):
    return dg.materialize(
        [asset],
        instance=instance,
        resources=res,
        tags={RANGE.format("start"): first.isoformat(), RANGE.format("end"): last.isoformat()},
    )


def test_risk_metrics_and_backtest_from_history(clean, instance):
    res = clean
    today = datetime.now(UTC).date()
    totals = write_history(
        res["lake"], ["AAPL.XNAS", "SPY.ARCX", "MSFT.XNAS"], days=520, events_per_day=600, postgres=res["postgres"]
    )
    assert totals["fills"] > 1000
    first, last = today - timedelta(days=520), today - timedelta(days=1)
    resources = product_resources(res)
    for asset, start in ((bars_1d, first), (daily_nav, first), (risk.risk_metrics, last - timedelta(days=4))):
        result = materialize_range(asset, start, last, resources, instance)
        assert result.success
    checks = sorted(result.get_asset_check_evaluations(), key=lambda c: c.check_name != "var_backtest")
    _day_is_replaced_whole(res, instance, resources, last)
    assert len(checks) == 2 and checks[0].check_name == "var_backtest"
    assert checks[0].passed == (checks[0].metadata["zone"].value == "green")
    for pf in ("momentum", "mean-reversion", "noise"):
        assert checks[0].metadata[f"{pf}_observations"].value == 250
        assert "exceptions in 250 days" in checks[0].metadata[f"{pf}_why"].value

    assert checks[0].metadata["zone"].value in ("green", "yellow"), checks[0].metadata  # the simulated market
    components_check = next(c for c in checks if c.check_name == "components_sum_to_var")
    assert components_check.passed and components_check.metadata["portfolio_days"].value == 5 * 3

    ch = res["clickhouse"]
    closes = ch.query_df("SELECT date, instrument_id, close FROM market_data.bars_1d FINAL")
    closes["date"] = pd.to_datetime(closes["date"]).dt.date
    rets = closes.pivot(index="date", columns="instrument_id", values="close").sort_index().pct_change()
    stored = ch.query_df("SELECT * FROM risk.risk_metrics FINAL")
    components = ch.query_df("SELECT * FROM risk.var_components FINAL")
    stress = ch.query_df("SELECT * FROM risk.stress_results FINAL")
    assert len(stored) == 5 * 3
    for row in stored.itertuples():
        day = row.date.date()
        with res["postgres"].connect() as conn:
            held = conn.execute(
                "SELECT instrument_id, position * close FROM portfolio.daily_positions "
                "WHERE date = %s AND portfolio_id = %s AND position <> 0 ORDER BY 1",
                (day, row.portfolio_id),
            ).fetchall()
            nav = conn.execute(
                "SELECT nav FROM portfolio.daily_nav WHERE date = %s AND portfolio_id = %s", (day, row.portfolio_id)
            ).fetchone()[0]
        inst, e = [i for i, _ in held], np.array([x for _, x in held])
        r = rets.loc[[d for d in rets.index if d <= day], inst].dropna().to_numpy()[-250:]
        pnl = np.sort([sum(e[k] * r[t, k] for k in range(len(e))) for t in range(len(r))])
        h = 249 * 0.01
        var = -(pnl[int(h)] + (h - int(h)) * (pnl[int(h) + 1] - pnl[int(h)])) / nav
        assert row.hist_var_99_1d == pytest.approx(var, rel=1e-9)
        assert row.hist_var_99_10d_scaled == pytest.approx(var * 10**0.5, rel=1e-9)
        v975 = -np.quantile(pnl, 0.025)
        assert row.es_975_1d == pytest.approx(-pnl[pnl <= -v975].mean() / nav, rel=1e-9)
        sd = math.sqrt(e @ np.cov(r, rowvar=False) @ e)
        assert row.param_var_99_1d == pytest.approx((2.3263478740408408 * sd - e @ r.mean(axis=0)) / nav, rel=1e-9)
        assert row.mc_paths == 100_000 and row.mc_var_99_1d == pytest.approx(row.param_var_99_1d, rel=0.03)
        mine = components[(components["portfolio_id"] == row.portfolio_id) & (components["date"] == row.date)]
        assert sorted(mine["instrument_id"]) == inst
        assert mine["component_var"].sum() == pytest.approx(row.param_var_99_1d, abs=1e-9)
        s = stress[(stress["portfolio_id"] == row.portfolio_id) & (stress["date"] == row.date)].set_index("scenario")
        crash = dict(zip(inst, e))
        expected = sum(x * {"AAPL": -0.09, "MSFT": -0.09, "SPY": -0.09}[i.split(".")[0]] for i, x in crash.items())
        assert s.loc["equity_crash_2008", "pnl"] == pytest.approx(expected, rel=1e-12)
        assert s.loc["melt_up", "pnl_fraction"] == pytest.approx(0.08 * e.sum() / nav, rel=1e-12)
        every_day = rets.loc[[d for d in rets.index if d <= day], inst].dropna().to_numpy() @ e
        assert s.loc["historical_worst_1", "pnl"] == pytest.approx(every_day.min(), rel=1e-12)
        assert s.loc["historical_worst_1", "pnl"] <= s.loc["historical_worst_2", "pnl"]


def _day_is_replaced_whole(res, instance, resources, day: date) -> None:
    """Re-materializing a day's NAV replaces its positions: a row no longer computed (here planted) is gone."""
    q = (
        "SELECT portfolio_id, instrument_id, position, close FROM portfolio.daily_positions WHERE date = %s "
        "ORDER BY 1, 2"
    )
    with res["postgres"].connect() as conn:
        before = conn.execute(q, (day,)).fetchall()
        conn.execute("INSERT INTO portfolio.daily_positions VALUES (%s, %s, 'STALE.XNAS', 5, 1.0)", (day, before[0][0]))
        conn.commit()
    assert materialize_range(daily_nav, day, day, resources, instance).success
    with res["postgres"].connect() as conn:
        assert conn.execute(q, (day,)).fetchall() == before
