"""The simulator: deterministic, realistic enough, with visible one-sided (toxic) bursts."""
import numpy as np
import pyarrow.compute as pc

from nautilus_assets.market_data.simulator import MarketSimulator

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
    sim = MarketSimulator(["AAPL.XNAS"], seed=2, start_ns=START, burst_rate=1 / 2000)
    trades, _ = sim.take(60000, 0)
    buy = np.array(trades["aggressor_side"].to_pylist()) == "BUYER"
    window = 200
    share = np.convolve(buy, np.ones(window) / window, mode="valid")
    # balanced flow stays near 50% buyers; bursts push rolling windows to >= 80% one side
    assert abs(buy.mean() - 0.5) < 0.15
    assert (share > 0.8).any() or (share < 0.2).any()
    calm = MarketSimulator(["AAPL.XNAS"], seed=2, start_ns=START, burst_rate=0).take(60000, 0)[0]
    calm_share = np.convolve(np.array(calm["aggressor_side"].to_pylist()) == "BUYER", np.ones(window) / window, "valid")
    assert calm_share.max() < 0.7 and calm_share.min() > 0.3
