"""Compute benchmarks of the domain code, each against a baseline run in the same process:

- VPIN: bars/s through the pure function and through VpinState (micro-batches of 390 bars);
- analytics: the indicators pipeline time ÷ raw TA-Lib calls on the same bars (goal <= 2);
- risk: historical VaR + ES for 1,000 portfolios × 2,500 days (vectorised NumPy vs the per-portfolio functions);
- positions-based VaR/ES/component VaR: 1,000 portfolios × 50 instruments × 2,500 days, vectorised vs per portfolio,
  and with Monte Carlo (100,000 paths) on each backend;
- Monte Carlo VaR: MLX vs NumPy, 100,000 paths × 20 instruments (and which one this machine defaults to).

    .venv/bin/python -m bench.compute
"""

import time

import numpy as np
import pandas as pd
import talib

from nautilus_assets.analytics.indicators import indicators
from nautilus_assets.microstructure.vpin import VpinState, vpin, vpin_straightforward
from nautilus_assets.risk.measures import expected_shortfall, historical_var
from nautilus_assets.risk.montecarlo import BACKENDS, backend, monte_carlo_var
from nautilus_assets.risk.positions import position_risk


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    n = 500_000
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    volume = rng.gamma(2.0, 500.0, n)

    args = (close, volume, 20_000.0, 0.1)
    t, t_ref = best(lambda: vpin(*args)), best(lambda: vpin_straightforward(*args))
    diff = np.nanmax(np.abs(vpin(*args) - vpin_straightforward(*args)))
    print(
        f"VPIN pure function:       {n / t:,.0f} bars/s (reference {n / t_ref:,.0f} bars/s, ratio {t_ref / t:.1f}; "
        f"goal >= 20 M/s), max |diff| = {diff:.1e}"
    )

    def batches():
        st = VpinState()
        for i in range(0, n, 390):
            st.advance(close[i : i + 390], volume[i : i + 390], 20_000.0, sigma=0.1)

    print(f"VPIN in 390-bar batches:  {n / best(batches, 1):,.0f} bars/s")

    bars = pd.DataFrame(
        {
            "minute": pd.date_range("2026-01-01", periods=n, freq="min"),
            "close": close,
            "high": close * 1.001,
            "low": close * 0.999,
            "vwap": close,
            "volume": volume,
        }
    )
    h, lo = bars["high"].to_numpy(), bars["low"].to_numpy()

    def raw():
        talib.SMA(close, 20)
        talib.EMA(close, 20)
        talib.RSI(close, 14)
        talib.MACD(close, 12, 26, 9)
        talib.BBANDS(close, 20, 2.0, 2.0)
        talib.ATR(h, lo, close, 14)

    t_raw, t_ours = best(raw), best(lambda: indicators(bars))
    print(
        f"analytics pipeline / raw TA-Lib on {n:,} bars: {t_ours:.3f}s / {t_raw:.3f}s = {t_ours / t_raw:.2f} "
        "(goal <= 2)"
    )

    rets = rng.normal(0, 0.01, (1000, 2500))

    def per_portfolio():
        for r in rets:
            historical_var(r, 0.99)
            expected_shortfall(r, 0.975)

    def vectorised():
        np.quantile(rets, 0.01, axis=1)  # VaR
        q = -np.quantile(rets, 0.025, axis=1)
        np.where(rets <= -q[:, None], rets, np.nan)

    t_pp, t_vec = best(per_portfolio, 1), best(vectorised)
    print(
        f"historical VaR+ES, 1,000 portfolios x 2,500 days: {t_pp:.2f}s per-portfolio functions, "
        f"{t_vec:.2f}s vectorised baseline (ratio {t_pp / t_vec:.1f})"
    )

    # positions-based risk: 1,000 portfolios x 50 instruments over 2,500 days, all portfolios at once vs one by one
    a = rng.normal(size=(50, 50))
    r50 = rng.multivariate_normal(np.zeros(50), (a @ a.T / 50 + np.eye(50)) * 1e-4, size=2500)
    e50, nav50 = rng.normal(0, 20_000, (1000, 50)), np.full(1000, 1e6)
    t_all = best(lambda: position_risk(e50, r50, nav50, paths=0), 1)
    t_one = best(lambda: [position_risk(e50[p : p + 1], r50, nav50[p : p + 1], paths=0) for p in range(1000)], 1)
    print(
        f"positions-based VaR/ES/component/incremental VaR, 1,000 portfolios x 50 instruments x 2,500 days: "
        f"{t_all:.2f}s all at once, {t_one:.2f}s one portfolio at a time (ratio {t_one / t_all:.1f})"
    )
    for name in BACKENDS:
        t_mc = best(lambda name=name: position_risk(e50, r50[-250:], nav50, paths=100_000, backend=name), 1)
        print(f"  the same with Monte Carlo VaR/ES, 100,000 shared paths, {name}: {t_mc:.2f}s")

    hist = rng.multivariate_normal(np.zeros(20), np.eye(20) * 1e-4 + 5e-5, size=250)
    w = rng.normal(0, 50_000, 20)
    t_mlx = best(lambda: monte_carlo_var(w, hist, 1e6, paths=100_000, backend_name="mlx"))
    t_np = best(lambda: monte_carlo_var(w, hist, 1e6, paths=100_000, backend_name="numpy"))
    print(
        f"Monte Carlo VaR 100,000 paths x 20 instruments: MLX {t_mlx:.3f}s, NumPy {t_np:.3f}s "
        f"(MLX / NumPy = {t_mlx / t_np:.2f}); this machine's default: {backend()}"
    )


if __name__ == "__main__":
    main()
