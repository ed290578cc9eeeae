"""VPIN against a straightforward bar-by-bar implementation of the published definition, a hand-worked
example, batch-by-batch = full history, and the simulator's toxic bursts raising it."""
import math

import numpy as np
import pandas as pd
import pyarrow as pa

from nautilus_assets.market_data.simulator import MarketSimulator
from nautilus_assets.microstructure.vpin import VpinState, vpin
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
        out.append(math.nan if t < window - 1 else sum(buckets[t - window + 1:t + 1]) / (window * V))
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
        st = VpinState.from_dict(st.to_dict())              # state survives serialisation between runs
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=1e-9, equal_nan=True)


def _bars(trades: pa.Table) -> pd.DataFrame:
    return reference_bars(trades).sort_values("minute")


def test_toxic_bursts_raise_vpin():
    start = 1_790_000_000_000_000_000
    kw = dict(instruments=["AAPL.XNAS"], seed=8, start_ns=start, events_per_second=2.0)
    toxic = _bars(MarketSimulator(**kw, burst_rate=1 / 1500).take(60_000, 0)[0])
    calm = _bars(MarketSimulator(**kw, burst_rate=0).take(60_000, 0)[0])
    sigma = calm["close"].diff().std()
    V = calm["volume"].sum() / len(calm) * 1440 / 50 / 20    # buckets of a fraction of a day's volume
    v_toxic = vpin(toxic["close"].to_numpy(), toxic["volume"].to_numpy(), V, sigma)
    v_calm = vpin(calm["close"].to_numpy(), calm["volume"].to_numpy(), V, sigma)
    assert np.nanmax(v_toxic) > 1.5 * np.nanmax(v_calm)
    assert np.nanmean(v_toxic) > np.nanmean(v_calm)
