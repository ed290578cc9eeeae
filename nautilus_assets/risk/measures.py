"""Risk measures (pure). Returns are simple returns; results are positive loss numbers."""
import math

import numpy as np
from statistics import NormalDist

BASEL_ZONES = ((4, "green"), (9, "yellow"))   # exceptions in 250 days: 0-4 green, 5-9 yellow, >= 10 red


def historical_var(returns, level: float = 0.99) -> float:
    """−quantile(returns, 1 − level), linear interpolation (numpy's default)."""
    return float(-np.quantile(np.asarray(returns, np.float64), 1 - level))


def expected_shortfall(returns, level: float = 0.975) -> float:
    """−mean of the returns ≤ −historical_var(returns, level)."""
    r = np.asarray(returns, np.float64)
    return float(-r[r <= -historical_var(r, level)].mean())


def parametric_var(returns, level: float = 0.99) -> float:
    """−(mean + std(ddof=1) · Φ⁻¹(1 − level))."""
    r = np.asarray(returns, np.float64)
    return float(-(r.mean() + r.std(ddof=1) * NormalDist().inv_cdf(1 - level)))


def scale_to_horizon(one_day: float, days: int = 10) -> float:
    """Square-root-of-time scaling (labelled as scaled wherever stored)."""
    return one_day * math.sqrt(days)


def kupiec_pof(exceptions: int, observations: int, level: float = 0.99) -> tuple[float, float]:
    """Kupiec's proportion-of-failures test: (likelihood ratio, p-value from χ²(1)); p = 1 − level, 0·ln 0 = 0."""
    p, x, n = 1 - level, exceptions, observations

    def xlogy(a, b):
        return 0.0 if a == 0 else a * math.log(b)

    phat = x / n
    lr = -2 * (xlogy(n - x, 1 - p) + xlogy(x, p) - xlogy(n - x, 1 - phat) - xlogy(x, phat))
    lr = max(lr, 0.0)
    return lr, math.erfc(math.sqrt(lr / 2))       # survival function of χ²(1) at lr


def basel_zone(exceptions: int) -> str:
    for limit, zone in BASEL_ZONES:
        if exceptions <= limit:
            return zone
    return "red"


def backtest(returns, window: int = 250, level: float = 0.99, days: int = 250) -> dict:
    """Each of the last `days` days: 1-day historical VaR from the previous `window` returns vs that day's return."""
    r = np.asarray(returns, np.float64)
    if r.size < window + days:
        raise ValueError(f"backtest needs {window + days} returns, got {r.size}")
    start = r.size - days
    forecasts = np.array([historical_var(r[t - window:t], level) for t in range(start, r.size)])
    exceptions = int((r[start:] < -forecasts).sum())
    lr, pval = kupiec_pof(exceptions, days, level)
    return {"exceptions": exceptions, "observations": days, "kupiec_lr": lr, "kupiec_p_value": pval,
            "zone": basel_zone(exceptions)}
