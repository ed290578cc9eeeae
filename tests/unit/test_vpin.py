"""VPIN against a straightforward bar-by-bar implementation of the published definition, a hand-worked
example, batch-by-batch = full history, and the simulator's toxic bursts raising it; the vectorised erf against
math.erf, and vpin() against its previous vectorised form (math.erf per bar, np.interp) across its chunks."""

import math

import numpy as np
import pandas as pd
import pyarrow as pa

from nautilus_assets.market_data.simulator import MarketSimulator
from nautilus_assets.microstructure.vpin import _CHUNK, VpinState, erf, vpin, vpin_straightforward
from tests.helpers import reference_bars


def reference_vpin(close, volume, V, sigma, window=50):
    """Literal reading of the definition: one bar at a time, splitting overflow pro rata, with NormalDist."""
    from statistics import NormalDist

    z = NormalDist()
    buckets, cur_v, cur_b = [], 0.0, 0.0
    for i, (c, v) in enumerate(zip(close, volume)):
        dp = 0.0 if i == 0 else c - close[i - 1]
        share = 0.5 if sigma == 0 else z.cdf(dp / sigma)
        left = float(v)
        while left > 1e-12:
            take = min(left, V - cur_v)
            cur_v += take
            cur_b += take * share
            left -= take
            if cur_v >= V - 1e-9:
                buckets.append(abs((V - cur_b) - cur_b))
                cur_v, cur_b = 0.0, 0.0
    out = []
    for t in range(len(buckets)):
        out.append(math.nan if t < window - 1 else sum(buckets[t - window + 1 : t + 1]) / (window * V))
    return np.array(out)


def test_hand_worked_example():
    # sigma=1: bar 0 dP=0 -> 50/50; bar 1 dP=+1 -> buy share Z(1)=0.8413; bucket volume 100, window 2
    close, volume = [10.0, 11.0, 11.0], [100.0, 150.0, 50.0]
    z1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    # buckets: [bar0: 50/50] [bar1 100: buy 100·z1] [bar1 50 + bar2 50: buy 50·z1 + 25]
    imb = [0.0, abs(100 - 2 * 100 * z1), abs(100 - 2 * (50 * z1 + 25))]
    expected = [math.nan, (imb[0] + imb[1]) / 200, (imb[1] + imb[2]) / 200]
    np.testing.assert_allclose(vpin(close, volume, 100.0, 1.0, window=2), expected, rtol=1e-12)


def test_matches_the_literal_definition_on_random_bars():
    rng = np.random.default_rng(3)
    close = 100 + np.cumsum(rng.normal(0, 0.05, 3000))
    volume = rng.integers(0, 400, 3000).astype(float)
    for sigma in (0.05, 0.0):
        ours = vpin(close, volume, 1234.5, sigma, window=50)
        ref = reference_vpin(close, volume, 1234.5, sigma, window=50)
        assert ours.size == ref.size > 400
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_batch_by_batch_equals_full_history():
    rng = np.random.default_rng(4)
    close = 50 + np.cumsum(rng.normal(0, 0.02, 5000))
    volume = rng.gamma(2.0, 100.0, 5000)
    full = vpin(close, volume, 2000.0, 0.02)
    st, parts = VpinState(), []
    for idx in np.array_split(np.arange(5000), 7):
        parts.append(st.advance(close[idx], volume[idx], 2000.0, sigma=0.02)["vpin"])
        st = VpinState.from_dict(st.to_dict())  # state survives serialisation between runs
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=1e-9, equal_nan=True)


def _bars(trades: pa.Table) -> pd.DataFrame:
    return reference_bars(trades).sort_values("minute")


def test_toxic_bursts_raise_vpin():
    start = 1_790_000_000_000_000_000
    # constant variance and a flat intraday rate, so only the bursts (informed flow moving the price) differ
    kw = {
        "instruments": ["AAPL.XNAS"],
        "seed": 8,
        "start_ns": start,
        "events_per_second": 2.0,
        "garch": (0.0, 0.0),
        "tail_df": 100,
        "intraday_profile": False,
    }
    toxic = _bars(MarketSimulator(**kw, bursts_per_day=4, burst_minutes=60, burst_move=0.4).take(60_000, 0)[0])
    calm = _bars(MarketSimulator(**kw, bursts_per_day=0).take(60_000, 0)[0])
    sigma = calm["close"].diff().std()
    V = calm["volume"].sum() / len(calm) * 1440 / 50 / 20  # buckets of a fraction of a day's volume
    v_toxic = vpin(toxic["close"].to_numpy(), toxic["volume"].to_numpy(), V, sigma)
    v_calm = vpin(calm["close"].to_numpy(), calm["volume"].to_numpy(), V, sigma)
    assert np.nanmax(v_toxic) > 1.3 * np.nanmax(v_calm)
    assert np.nanmean(v_toxic) > np.nanmean(v_calm)


def test_erf_equals_math_erf():
    x = np.concatenate(
        [
            np.linspace(-40, 40, 400_001),
            np.linspace(-6.5, 6.5, 650_001),
            np.geomspace(1e-300, 30, 5000),
            -np.geomspace(1e-300, 30, 5000),
            [0.0, 5.9, 5.921579999999999, 1e300, -1e300, np.inf, -np.inf],
        ]
    )
    ref = np.array([math.erf(v) for v in x.tolist()])
    np.testing.assert_allclose(erf(x), ref, rtol=1e-14, atol=1e-14)
    small = np.abs(x) < 1e-3
    np.testing.assert_allclose(erf(x[small]), ref[small], rtol=1e-14, atol=0)  # relative accuracy near 0 too
    assert np.isnan(erf(np.array([np.nan])))[0]


def test_equals_the_previous_implementation_across_chunks():
    rng = np.random.default_rng(5)
    n = 2 * _CHUNK + 777
    close = 100 + np.cumsum(rng.normal(0, 0.05, n))
    for volume, V in (
        (rng.gamma(2.0, 100.0, n), 20_000.0),
        (np.where(rng.random(n) < 0.2, 0.0, rng.integers(0, 400, n)).astype(float), 5_000.0),
    ):
        for sigma, window in ((0.05, 50), (0.5, 1), (0.0, 10)):
            ours, ref = vpin(close, volume, V, sigma, window), vpin_straightforward(close, volume, V, sigma, window)
            assert ours.size == ref.size > 500
            # absolute: a one-bucket window's |S - B| / V near 0 keeps the rounding of the cumulative sums (~1e-12)
            np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-10, equal_nan=True)
