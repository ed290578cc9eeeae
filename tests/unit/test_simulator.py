"""The simulator: deterministic, with visible one-sided (toxic) bursts, and the stylized facts measured from its
ticks: fat tails, volatility clustering, a U-shaped intraday volume, and Kyle price impact of the order flow."""

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

from nautilus_assets.market_data.simulator import MEAN_SIZE, NS_PER_DAY, MarketSimulator, intraday_intensity

INSTR = ["AAPL.XNAS", "MSFT.XNAS", "ESZ6.GLBX"]
START = 1_790_000_000_000_000_000


def test_deterministic_for_seed_and_start():
    a = MarketSimulator(INSTR, seed=5, start_ns=START).take(5000, 5000)
    b = MarketSimulator(INSTR, seed=5, start_ns=START).take(5000, 5000)
    c = MarketSimulator(INSTR, seed=6, start_ns=START).take(5000, 5000)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    assert not a[0].equals(c[0])


def test_ticks_are_sane():
    trades, quotes = MarketSimulator(INSTR, seed=1, start_ns=START).take(20000, 20000)
    assert trades.num_rows == quotes.num_rows == 20000
    assert pc.min(trades["price"]).as_py() > 0 and pc.min(trades["size"]).as_py() >= 1
    assert pc.all(pc.less(quotes["bid_price"], quotes["ask_price"])).as_py()
    ts = trades["ts_event"].to_numpy()
    assert (np.diff(ts) > 0).all() and ts[0] > START
    assert pc.all(pc.greater_equal(trades["ts_init"], trades["ts_event"])).as_py()
    ids = trades.select(["instrument_id", "trade_id"]).to_pylist()
    assert len({(r["instrument_id"], r["trade_id"]) for r in ids}) == len(ids)
    assert set(trades["instrument_id"].to_pylist()) == set(INSTR)


def test_toxic_bursts_are_one_sided():
    """Sparse enough (~5,500 events a day) that a burst is as one-sided as it gets (burst_buy 90%): windows of 25
    trades are lopsided (>= 80% one side) far more often than balanced flow allows (~0.4%)."""

    def lopsided(**kw):
        trades, _ = MarketSimulator(["AAPL.XNAS"], seed=2, start_ns=START, events_per_second=0.064, **kw).take(60000, 0)
        buy = np.array(trades["aggressor_side"].to_pylist()) == "BUYER"
        share = np.convolve(buy, np.ones(25) / 25, mode="valid")
        return buy.mean(), float(((share >= 0.8) | (share <= 0.2)).mean())

    mean, toxic = lopsided()
    assert abs(mean - 0.5) < 0.1 and toxic > 0.04
    mean, calm = lopsided(bursts_per_day=0)
    assert abs(mean - 0.5) < 0.02 and calm < 0.01


DAY0 = START // NS_PER_DAY * NS_PER_DAY
INSTR2 = ["AAPL.XNAS", "MSFT.XNAS"]


def _ticks(model: str, days: int, events_per_day: int, **kw) -> tuple[pd.DataFrame, pd.DataFrame]:
    sim = MarketSimulator(INSTR2, seed=3, start_ns=DAY0, events_per_second=events_per_day / 86_400, model=model, **kw)
    trades, quotes = [], []
    while sim.now_ns < DAY0 + days * NS_PER_DAY:
        t, q = sim.chunk()
        trades.append(t.to_pandas())
        quotes.append(q.to_pandas())
    q = pd.concat(quotes)
    q = q[q["ts_event"] < DAY0 + days * NS_PER_DAY]
    q = q.assign(
        mid=np.log((q["bid_price"] + q["ask_price"]) / 2),
        day=q["ts_event"] // NS_PER_DAY,
        minute=q["ts_event"] // 60_000_000_000,
    )
    return pd.concat(trades), q


def _kurtosis(x) -> float:
    x = np.asarray(x) - np.mean(x)
    return float((x**4).mean() / (x**2).mean() ** 2)


def _acf_squared(x, lags=range(1, 6)) -> float:
    x = np.asarray(x) ** 2
    return float(np.mean([np.corrcoef(x[:-k], x[k:])[0, 1] for k in lags]))


@pytest.fixture(scope="module")
def stylized():
    return _ticks("stylized", 1000, 3000)


@pytest.fixture(scope="module")
def gaussian():
    return _ticks("gaussian", 1000, 3000)


def test_fat_tails_and_volatility_clustering(stylized, gaussian):
    for quotes, fat in ((stylized[1], True), (gaussian[1], False)):
        for _, g in quotes.groupby("instrument_id"):
            daily = g.groupby("day")["mid"].last().diff().dropna()
            minute = g.groupby("minute")["mid"].last().diff().dropna()
            assert 0.012 < daily.std() < 0.035  # daily_vol 2% (GARCH: the sample varies)
            if fat:  # GARCH(1,1)-t: leptokurtic, and big days follow big days
                assert _kurtosis(daily) > 4 and _kurtosis(minute) > 8
                assert _acf_squared(daily) > 0.05
            else:  # i.i.d. normal days (the minutes are mixed by the intraday profile)
                assert 2.5 < _kurtosis(daily) < 3.5
                assert abs(_acf_squared(daily)) < 0.05


def test_u_shaped_intraday_volume(stylized):
    trades = stylized[0]
    hour = (trades["ts_event"] % NS_PER_DAY) // 3_600_000_000_000
    share = trades.groupby(hour)["size"].sum()
    share = share / share.mean()
    # open and close hours carry ~3.5x the midday hours' volume; matches the profile's hourly means
    expected = np.array([intraday_intensity(np.linspace(h / 24, (h + 1) / 24, 61)).mean() for h in range(24)])
    np.testing.assert_allclose(share.to_numpy(), expected, rtol=0.25)
    assert share.iloc[[0, 1, 22, 23]].mean() > 2.5 * share.iloc[10:14].mean()


def _impact(trades: pd.DataFrame, quotes: pd.DataFrame) -> tuple[float, float]:
    """Regression of the mid's change between consecutive quotes on the signed size traded between them:
    (slope per share in log-mid, its t statistic)."""
    slopes = []
    for inst, q in quotes.groupby("instrument_id"):
        t = trades[trades["instrument_id"] == inst]
        signed = np.where(t["aggressor_side"] == "BUYER", 1.0, -1.0) * t["size"].to_numpy()
        cum = np.r_[0.0, np.cumsum(signed)]
        at = np.searchsorted(t["ts_event"].to_numpy(), q["ts_event"].to_numpy())
        x, y = np.diff(cum[at]), np.diff(q["mid"].to_numpy())
        beta = (x * y).sum() / (x * x).sum()
        se = np.sqrt(((y - beta * x) ** 2).sum() / (x.size - 1) / (x * x).sum())
        slopes.append((beta, beta / se))
    return float(np.mean([b for b, _ in slopes])), float(np.min([abs(t) for _, t in slopes]))


def test_kyle_price_impact(gaussian):
    trades, quotes = gaussian
    sim = MarketSimulator(INSTR2, events_per_second=3000 / 86_400, model="gaussian")
    expected = sim.impact * sim.daily_vol / np.sqrt(sim.events_per_instrument_day) / MEAN_SIZE
    beta, t = _impact(trades, quotes)
    assert beta == pytest.approx(expected, rel=0.1) and t > 20
    # the random walk's flow moves nothing
    beta, t = _impact(*_ticks("random_walk", 60, 3000))
    assert abs(beta) < 0.05 * expected or t < 3


def test_informed_bursts_predict_the_next_bars_only_when_flow_moves_prices():
    """Order-flow imbalance over the last 20 minutes vs the next minute's mid change: positive in the stylized
    market (bursts persist and move the price), nothing in the random walk."""

    def corr(model):
        trades, quotes = _ticks(model, 40, 12_000)
        trades = trades.assign(
            minute=trades["ts_event"] // 60_000_000_000,
            s=np.where(trades["aggressor_side"] == "BUYER", 1.0, -1.0) * trades["size"],
        )
        out = []
        for inst, q in quotes.groupby("instrument_id"):
            mid = q.groupby("minute")["mid"].last()
            flow = trades[trades["instrument_id"] == inst].groupby("minute")["s"].sum()
            idx = np.arange(mid.index.min(), mid.index.max() + 1)
            mid, flow = mid.reindex(idx).ffill(), flow.reindex(idx, fill_value=0.0)
            ofi = flow.rolling(20).sum().shift(1)  # strictly before the minute that follows
            nxt = mid.diff().shift(-1)
            ok = ofi.notna() & nxt.notna()
            out.append(np.corrcoef(ofi[ok], nxt[ok])[0, 1])
        return np.mean(out)

    assert 0.03 < corr("stylized") < 0.3
    assert abs(corr("random_walk")) < 0.02
