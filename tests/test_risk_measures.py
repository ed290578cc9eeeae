"""Risk measures against their published definitions computed another way (sorting, closed forms, scipy-free χ²)."""
import math

import numpy as np
import pytest

from nautilus_assets.risk.measures import (backtest, basel_zone, expected_shortfall, historical_var, kupiec_pof,
                                           parametric_var, scale_to_horizon)


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
    z = -2.3263478740408408                           # Φ⁻¹(0.01)
    assert parametric_var(r, 0.99) == pytest.approx(-(r.mean() + r.std(ddof=1) * z), rel=1e-12)
    assert scale_to_horizon(0.02) == pytest.approx(0.02 * math.sqrt(10))


def test_kupiec_against_hand_values():
    # 5 exceptions in 250 at 99%: LR = -2 ln[(0.99^245 0.01^5) / ((245/250)^245 (5/250)^5)]
    lr, p = kupiec_pof(5, 250, 0.99)
    expected = -2 * (245 * math.log(0.99) + 5 * math.log(0.01) - 245 * math.log(0.98) - 5 * math.log(0.02))
    assert lr == pytest.approx(expected) and lr == pytest.approx(1.9568, abs=1e-3)
    assert p == pytest.approx(0.16189, abs=1e-4)
    lr0, p0 = kupiec_pof(0, 250, 0.99)               # 0·ln 0 = 0
    assert lr0 == pytest.approx(-2 * 250 * math.log(0.99)) and 0 < p0 < 1
    assert kupiec_pof(3, 300, 0.99)[0] == pytest.approx(0.0, abs=1e-12)   # exactly the expected rate


def test_basel_zones_and_backtest():
    assert [basel_zone(x) for x in (0, 4, 5, 9, 10)] == ["green", "green", "yellow", "yellow", "red"]
    rng = np.random.default_rng(7)
    calm = rng.normal(0, 0.01, 500)
    bt = backtest(calm)
    assert bt["observations"] == 250 and bt["zone"] in ("green", "yellow")
    stressed = np.concatenate([rng.normal(0, 0.005, 250), rng.normal(0, 0.03, 250)])   # volatility triples
    assert backtest(stressed)["zone"] == "red"
    with pytest.raises(ValueError):
        backtest(calm[:400])


def test_monte_carlo_var_matches_the_closed_form_for_normal_returns():
    from statistics import NormalDist

    from nautilus_assets.risk.montecarlo import monte_carlo_var, monte_carlo_var_numpy
    rng = np.random.default_rng(2)
    cov = np.array([[1.0, 0.6, -0.2], [0.6, 2.0, 0.3], [-0.2, 0.3, 1.5]]) * 1e-4
    hist = rng.multivariate_normal([0.0005, 0.0, -0.0002], cov, size=250)
    w = np.array([500_000.0, -200_000.0, 300_000.0])
    nav = 1_000_000.0
    mu, sigma = w @ hist.mean(axis=0), math.sqrt(w @ np.cov(hist, rowvar=False) @ w)
    exact = -(mu + sigma * NormalDist().inv_cdf(0.01)) / nav
    assert monte_carlo_var(w, hist, nav, paths=200_000) == pytest.approx(exact, rel=0.02)
    assert monte_carlo_var_numpy(w, hist, nav, paths=200_000) == pytest.approx(exact, rel=0.02)
