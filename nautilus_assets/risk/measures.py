"""Risk measures (pure). Returns are simple returns; results are positive loss numbers."""

import math
from statistics import NormalDist

import numpy as np

BASEL_ZONES = ((4, "green"), (9, "yellow"))  # exceptions in 250 days: 0-4 green, 5-9 yellow, >= 10 red


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
    return lr, math.erfc(math.sqrt(lr / 2))  # survival function of χ²(1) at lr


def basel_zone(exceptions: int) -> str:
    for limit, zone in BASEL_ZONES:
        if exceptions <= limit:
            return zone
    return "red"


def christoffersen_independence(hits) -> tuple[float, float]:
    """Christoffersen's (1998) test that exceptions do not cluster: (LR_ind, p-value from χ²(1)), from the
    Markov transition counts of the 0/1 exception sequence (0·ln 0 = 0)."""
    h = np.asarray(hits, bool)
    prev, cur = h[:-1], h[1:]
    n00, n01 = int((~prev & ~cur).sum()), int((~prev & cur).sum())
    n10, n11 = int((prev & ~cur).sum()), int((prev & cur).sum())

    def ll(n_stay, n_move, p):  # log-likelihood of n_move moves and n_stay stays at move probability p
        return (0.0 if n_stay == 0 else n_stay * math.log(1 - p)) + (0.0 if n_move == 0 else n_move * math.log(p))

    pi = (n01 + n11) / max(n00 + n01 + n10 + n11, 1)
    pi01, pi11 = n01 / max(n00 + n01, 1), n11 / max(n10 + n11, 1)
    lr = max(-2 * (ll(n00 + n10, n01 + n11, pi) - ll(n00, n01, pi01) - ll(n10, n11, pi11)), 0.0)
    return lr, math.erfc(math.sqrt(lr / 2))


def evaluate_backtest(realized, forecasts, level: float = 0.99) -> dict:
    """Exceptions (realized loss beyond the VaR forecast for that day), Kupiec POF, Christoffersen independence
    and conditional coverage (LR_pof + LR_ind ~ χ²(2): p = e^(−LR/2)), and the Basel zone (scaled to 250 days)."""
    realized, forecasts = np.asarray(realized, np.float64), np.asarray(forecasts, np.float64)
    hits = realized < -forecasts
    n, x = int(hits.size), int(hits.sum())
    lr_pof, p_pof = kupiec_pof(x, n, level)
    lr_ind, p_ind = christoffersen_independence(hits)
    return {
        "exceptions": x,
        "observations": n,
        "kupiec_lr": lr_pof,
        "kupiec_p_value": p_pof,
        "christoffersen_lr": lr_ind,
        "christoffersen_p_value": p_ind,
        "conditional_coverage_p_value": math.exp(-(lr_pof + lr_ind) / 2),
        "zone": basel_zone(round(x * 250 / n)) if n else "green",
    }


def backtest(returns, window: int = 250, level: float = 0.99, days: int = 250) -> dict:
    """Each of the last `days` days: 1-day historical VaR from the previous `window` returns vs that day's return."""
    r = np.asarray(returns, np.float64)
    if r.size < window + days:
        raise ValueError(f"backtest needs {window + days} returns, got {r.size}")
    start = r.size - days
    forecasts = np.array([historical_var(r[t - window : t], level) for t in range(start, r.size)])
    return evaluate_backtest(r[start:], forecasts, level)
