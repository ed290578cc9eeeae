"""Risk measures against their published definitions computed another way (sorting, closed forms, scipy-free χ²)."""

import math

import numpy as np
import pytest

from nautilus_assets.risk.measures import (
    backtest,
    basel_zone,
    expected_shortfall,
    historical_var,
    kupiec_pof,
    parametric_var,
    scale_to_horizon,
)


def test_historical_var_interpolates_between_order_statistics():
    r = np.array([-0.05, -0.04, -0.03, -0.02, -0.01, 0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    # 1% quantile of 11 points: position 0.01·10 = 0.1 between -0.05 and -0.04 -> -0.049
    assert historical_var(r, 0.99) == pytest.approx(0.049)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.01, 250)
    s, h = np.sort(x), (250 - 1) * 0.01
    ref = s[int(h)] + (h - int(h)) * (s[int(h) + 1] - s[int(h)])
    assert historical_var(x, 0.99) == pytest.approx(-ref, rel=1e-12)


def test_expected_shortfall_is_the_mean_beyond_var():
    r = np.array([-0.10, -0.08, -0.02, 0.0, 0.01, 0.02, 0.03, 0.04] * 5)
    v = historical_var(r, 0.975)
    tail = [x for x in r if x <= -v]
    assert expected_shortfall(r, 0.975) == pytest.approx(-sum(tail) / len(tail))
    assert expected_shortfall(r, 0.975) >= v


def test_parametric_var_closed_form():
    r = np.array([0.01, -0.02, 0.005, 0.0, -0.01, 0.015])
    z = -2.3263478740408408  # Φ⁻¹(0.01)
    assert parametric_var(r, 0.99) == pytest.approx(-(r.mean() + r.std(ddof=1) * z), rel=1e-12)
    assert scale_to_horizon(0.02) == pytest.approx(0.02 * math.sqrt(10))


def test_kupiec_against_hand_values():
    # 5 exceptions in 250 at 99%: LR = -2 ln[(0.99^245 0.01^5) / ((245/250)^245 (5/250)^5)]
    lr, p = kupiec_pof(5, 250, 0.99)
    expected = -2 * (245 * math.log(0.99) + 5 * math.log(0.01) - 245 * math.log(0.98) - 5 * math.log(0.02))
    assert lr == pytest.approx(expected) and lr == pytest.approx(1.9568, abs=1e-3)
    assert p == pytest.approx(0.16189, abs=1e-4)
    lr0, p0 = kupiec_pof(0, 250, 0.99)  # 0·ln 0 = 0
    assert lr0 == pytest.approx(-2 * 250 * math.log(0.99)) and 0 < p0 < 1
    assert kupiec_pof(3, 300, 0.99)[0] == pytest.approx(0.0, abs=1e-12)  # exactly the expected rate


def test_basel_zones_and_backtest():
    assert [basel_zone(x) for x in (0, 4, 5, 9, 10)] == ["green", "green", "yellow", "yellow", "red"]
    rng = np.random.default_rng(7)
    calm = rng.normal(0, 0.01, 500)
    bt = backtest(calm)
    assert bt["observations"] == 250 and bt["zone"] in ("green", "yellow")
    stressed = np.concatenate([rng.normal(0, 0.005, 250), rng.normal(0, 0.03, 250)])  # volatility triples
    assert backtest(stressed)["zone"] == "red"
    with pytest.raises(ValueError):
        backtest(calm[:400])


def test_monte_carlo_var_matches_the_closed_form_for_normal_returns():
    from statistics import NormalDist

    from nautilus_assets.risk.montecarlo import monte_carlo_var

    rng = np.random.default_rng(2)
    cov = np.array([[1.0, 0.6, -0.2], [0.6, 2.0, 0.3], [-0.2, 0.3, 1.5]]) * 1e-4
    hist = rng.multivariate_normal([0.0005, 0.0, -0.0002], cov, size=250)
    w = np.array([500_000.0, -200_000.0, 300_000.0])
    nav = 1_000_000.0
    mu, sigma = w @ hist.mean(axis=0), math.sqrt(w @ np.cov(hist, rowvar=False) @ w)
    exact = -(mu + sigma * NormalDist().inv_cdf(0.01)) / nav
    for backend in ("numpy", "mlx"):
        assert monte_carlo_var(w, hist, nav, paths=200_000, backend_name=backend) == pytest.approx(exact, rel=0.02)


def test_christoffersen_independence_by_hand():
    from nautilus_assets.risk.measures import christoffersen_independence, evaluate_backtest

    # 10 exceptions in 250 days, in five adjacent pairs: n01 = 5, n11 = 5, n10 = 5, n00 = 234
    hits = np.zeros(250, bool)
    for start in (20, 70, 120, 170, 220):
        hits[start : start + 2] = True
    n00, n01, n10, n11 = 234, 5, 5, 5
    pi, p01, p11 = 10 / 249, 5 / 239, 5 / 10
    lr = -2 * (
        (n00 + n10) * math.log(1 - pi)
        + (n01 + n11) * math.log(pi)
        - n00 * math.log(1 - p01)
        - n01 * math.log(p01)
        - n10 * math.log(1 - p11)
        - n11 * math.log(p11)
    )
    got, p = christoffersen_independence(hits)
    assert got == pytest.approx(lr, rel=1e-12) and p < 0.001  # clustered: independence rejected
    spread = np.zeros(250, bool)
    spread[::25] = True  # the same count, evenly spaced
    assert christoffersen_independence(spread)[1] > 0.3
    bt = evaluate_backtest(np.where(hits, -0.05, 0.01), np.full(250, 0.02))
    assert bt["exceptions"] == 10 and bt["zone"] == "red"
    assert bt["conditional_coverage_p_value"] == pytest.approx(math.exp(-(bt["kupiec_lr"] + lr) / 2), rel=1e-12)


def _reference_risk(e, r, nav, level=0.99, es_level=0.975):
    """One portfolio, straightforwardly: sorted historical P&L, closed-form normal VaR/ES, finite-difference
    marginal VaR (for the Euler components) and the VaR without each instrument."""
    from statistics import NormalDist

    pnl = np.array([sum(e[i] * r[t, i] for i in range(len(e))) for t in range(len(r))])
    s, h = np.sort(pnl), (len(pnl) - 1) * (1 - level)
    hist = -(s[int(h)] + (h - int(h)) * (s[int(h) + 1] - s[int(h)]))
    cov, mu = np.cov(r, rowvar=False), r.mean(axis=0)
    z = NormalDist().inv_cdf(level)

    def pvar(x):
        return z * math.sqrt(x @ cov @ x) - x @ mu

    eps = 1e-3
    marginal = np.array(
        [(pvar(e + eps * np.eye(len(e))[i]) - pvar(e - eps * np.eye(len(e))[i])) / (2 * eps) for i in range(len(e))]
    )
    incremental = np.array([pvar(e) - pvar(np.where(np.arange(len(e)) == i, 0.0, e)) for i in range(len(e))])
    es_z = NormalDist().inv_cdf(es_level)
    param_es = math.sqrt(e @ cov @ e) * NormalDist().pdf(es_z) / (1 - es_level) - e @ mu
    return hist / nav, pvar(e) / nav, param_es / nav, e * marginal / nav, incremental / nav


def test_position_risk_against_a_straightforward_reference():
    from nautilus_assets.risk.positions import position_risk

    rng = np.random.default_rng(4)
    a = rng.normal(size=(4, 4))
    r = rng.multivariate_normal([0.0003, 0.0, -0.0001, 0.0002], (a @ a.T + np.eye(4)) * 2e-5, size=250)
    e = np.array([[300_000.0, -100_000.0, 50_000.0, 0.0], [0.0, 200_000.0, 200_000.0, -150_000.0]])
    nav = np.array([1_000_000.0, 500_000.0])
    got = position_risk(e, r, nav, paths=200_000, seed=1, backend="numpy")
    for p in range(2):
        hist, pvar, pes, comp, incr = _reference_risk(e[p], r, nav[p])
        assert got["hist_var"][p] == pytest.approx(hist, rel=1e-12)
        assert got["param_var"][p] == pytest.approx(pvar, rel=1e-12)
        assert got["param_es"][p] == pytest.approx(pes, rel=1e-12)
        np.testing.assert_allclose(got["component_var"][p], comp, rtol=1e-6, atol=1e-12)
        assert got["component_var"][p].sum() == pytest.approx(got["param_var"][p], abs=1e-9)  # Euler
        np.testing.assert_allclose(got["incremental_var"][p], incr, rtol=1e-12, atol=1e-15)
        # Monte Carlo on the same covariance converges to the closed forms (200,000 paths: ~1% sampling error)
        assert got["mc_var"][p] == pytest.approx(pvar, rel=0.03) and got["mc_es"][p] == pytest.approx(pes, rel=0.03)


def test_three_models_agree_on_gaussian_and_part_on_fat_tails():
    """Historical, parametric and Monte Carlo VaR/ES of the same positions: within sampling error on normal returns;
    on Student-t(3) returns of the same covariance, historical ES exceeds the normal models' (the model choice)."""
    from nautilus_assets.risk.positions import position_risk

    rng = np.random.default_rng(5)
    cov = np.array([[1.0, 0.5], [0.5, 1.5]]) * 4e-4
    e, nav = np.array([[400_000.0, 250_000.0]]), np.array([1_000_000.0])
    normal = rng.multivariate_normal([0.0, 0.0], cov, size=2500)
    got = position_risk(e, normal, nav, paths=100_000, backend="numpy")
    for k in ("var", "es"):
        assert got[f"hist_{k}"][0] == pytest.approx(got[f"param_{k}"][0], rel=0.1)
        assert got[f"mc_{k}"][0] == pytest.approx(got[f"param_{k}"][0], rel=0.03)
    chol = np.linalg.cholesky(cov)
    t = rng.standard_t(3, size=(2500, 2)) / math.sqrt(3) @ chol.T
    fat = position_risk(e, t, nav, paths=100_000, backend="numpy")
    assert fat["hist_es"][0] > 1.15 * fat["param_es"][0]


def test_stress_shocks_match_by_id_symbol_or_default():
    from nautilus_assets.risk.positions import shock_pnl, worst_days

    exposures = {"AAPL.XNAS": 100_000.0, "BTCUSDT.BINANCE": -50_000.0, "SPY.ARCX": 20_000.0}
    assert shock_pnl(exposures, {"AAPL": -0.1, "BTCUSDT.BINANCE": -0.4, "*": 0.05}) == pytest.approx(
        -10_000 + 20_000 + 1_000
    )
    assert shock_pnl(exposures, {"MSFT": -0.5}) == 0.0
    assert list(worst_days(np.array([0.0, -3.0, 2.0, -5.0, -3.0]), 3)) == [3, 1, 4]


def _simulated_daily_returns(model: str, days: int = 750) -> np.ndarray:
    """Daily simple returns of three instruments' last trade prices from the simulator (history mode)."""
    from datetime import date

    from scripts.history import simulate_days

    closes = []
    for _, trades, _ in simulate_days(
        ["AAPL.XNAS", "MSFT.XNAS", "SPY.ARCX"], date(2024, 1, 1), days, 1500, seed=9, model=model
    ):
        t = trades.to_pandas()
        closes.append(t.groupby("instrument_id")["price"].last())
    c = np.array([[row[i] for i in ("AAPL.XNAS", "MSFT.XNAS", "SPY.ARCX")] for row in closes])
    return c[1:] / c[:-1] - 1


def test_the_three_models_on_the_simulators_markets():
    """Gaussian market: historical, parametric and Monte Carlo VaR/ES of the same positions agree within sampling
    error (750 days: ~8% for a 99% historical quantile). Stylized market (GARCH-t): the historical ES exceeds the
    normal models' — the difference is the model choice, as the asset's description says."""
    from nautilus_assets.risk.positions import position_risk

    e, nav = np.array([[300_000.0, -150_000.0, 400_000.0]]), np.array([1_000_000.0])
    g = position_risk(e, _simulated_daily_returns("gaussian"), nav, paths=200_000, backend="numpy")
    for k in ("var", "es"):
        assert g[f"hist_{k}"][0] == pytest.approx(g[f"param_{k}"][0], rel=0.12), k
        assert g[f"mc_{k}"][0] == pytest.approx(g[f"param_{k}"][0], rel=0.02), k
    s = position_risk(e, _simulated_daily_returns("stylized"), nav, paths=200_000, backend="numpy")
    assert s["hist_es"][0] > 1.1 * s["param_es"][0]
    assert s["mc_var"][0] == pytest.approx(s["param_var"][0], rel=0.02)


def test_tail_losses_equal_the_quantile_definitions():
    """The partial-sort VaR/ES equal historical_var / expected_shortfall row by row, ties included."""
    from nautilus_assets.risk.positions import tail_losses

    rng = np.random.default_rng(6)
    rows = [
        rng.standard_t(4, 250),
        rng.normal(size=1000),
        np.round(rng.normal(size=400), 1),  # ties
        np.repeat([-2.0, -1.0, 0.0, 1.0], 10),
    ]
    for x in rows:
        var, es = tail_losses(x[None, :], 0.99, 0.975)
        assert var[0] == pytest.approx(historical_var(x, 0.99), rel=1e-12, abs=1e-15)
        assert es[0] == pytest.approx(expected_shortfall(x, 0.975), rel=1e-12, abs=1e-15)
