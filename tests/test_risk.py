"""risk_metrics over 520 days of history: daily bars -> end-of-day NAV -> VaR/ES (and the backtest check),
each day's figures equal to the measures recomputed from the stored daily returns with NumPy."""
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import numpy as np
import pytest

from nautilus_assets.market_data.daily import bars_1d
from nautilus_assets.portfolio.daily import daily_nav
from nautilus_assets.risk import assets as risk
from scripts.history import write_history

RANGE = "dagster/asset_partition_range_{}"


def materialize_range(asset, first: date, last: date, res, instance):
    return dg.materialize([asset], instance=instance, resources=res, tags={
        RANGE.format("start"): first.isoformat(), RANGE.format("end"): last.isoformat()})


def test_risk_metrics_and_backtest_from_history(clean, instance):
    res = clean
    today = datetime.now(timezone.utc).date()
    totals = write_history(res["lake"], ["AAPL.XNAS", "SPY.ARCX", "MSFT.XNAS"], days=520, events_per_day=600,
                           postgres=res["postgres"])
    assert totals["fills"] > 1000
    first, last = today - timedelta(days=520), today - timedelta(days=1)
    resources = {k: res[k] for k in ("lake", "clickhouse", "postgres", "pulsar", "redis")}
    for asset, start in ((bars_1d, first), (daily_nav, first), (risk.risk_metrics, last - timedelta(days=4))):
        result = materialize_range(asset, start, last, resources, instance)
        assert result.success
    checks = result.get_asset_check_evaluations()
    _day_is_replaced_whole(res, instance, resources, last)
    assert len(checks) == 1 and checks[0].metadata["zone"].value in ("green", "yellow", "red")
    assert checks[0].passed == (checks[0].metadata["zone"].value == "green")

    with res["postgres"].connect() as conn:
        rets = conn.execute("SELECT date, portfolio_id, daily_return FROM portfolio.daily_nav ORDER BY date").fetchall()
    stored = res["clickhouse"].query_df("SELECT * FROM risk.risk_metrics FINAL")
    assert len(stored) == 5 * 3
    for row in stored.itertuples():
        r = np.array([x for d, pf, x in rets if pf == row.portfolio_id and d <= row.date.date() and x is not None])[-250:]
        s = np.sort(r)
        h = 249 * 0.01
        var = -(s[int(h)] + (h - int(h)) * (s[int(h) + 1] - s[int(h)]))
        assert row.hist_var_99_1d == pytest.approx(var, rel=1e-12)
        assert row.hist_var_99_10d_scaled == pytest.approx(var * 10 ** 0.5, rel=1e-12)
        v975 = -np.quantile(r, 0.025)
        assert row.es_975_1d == pytest.approx(-r[r <= -v975].mean(), rel=1e-12)
        assert row.param_var_99_1d == pytest.approx(-(r.mean() - 2.3263478740408408 * r.std(ddof=1)), rel=1e-9)
        assert row.mc_paths == 100_000 and 0 < row.mc_var_99_1d < 1
        # normal-ish daily P&L: Monte Carlo and parametric VaR agree in magnitude
        assert 0.3 < row.mc_var_99_1d / row.param_var_99_1d < 3


def _day_is_replaced_whole(res, instance, resources, day: date) -> None:
    """Re-materializing a day's NAV replaces its positions: a row no longer computed (here planted) is gone."""
    q = "SELECT portfolio_id, instrument_id, position, close FROM portfolio.daily_positions WHERE date = %s ORDER BY 1, 2"
    with res["postgres"].connect() as conn:
        before = conn.execute(q, (day,)).fetchall()
        conn.execute("INSERT INTO portfolio.daily_positions VALUES (%s, %s, 'STALE.XNAS', 5, 1.0)",
                     (day, before[0][0]))
        conn.commit()
    assert materialize_range(daily_nav, day, day, resources, instance).success
    with res["postgres"].connect() as conn:
        assert conn.execute(q, (day,)).fetchall() == before
