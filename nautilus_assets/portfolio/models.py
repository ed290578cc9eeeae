"""The simulator's model portfolios: deterministic fills (with fees) derived from the simulated trades."""

import numpy as np
import orjson
import pyarrow as pa

from resources.topics import PORTFOLIO_FILLS

FILLS_TOPIC = PORTFOLIO_FILLS  # the model portfolios publish their fills here (resources/topics.py)
PORTFOLIOS = {"momentum": 1_000_000.0, "mean-reversion": 1_000_000.0, "noise": 250_000.0}
FEE_RATE, FEE_FIXED = 0.0002, 0.5


def model_fills(
    trades: pa.Table, seed: int = 1, every: int = 40, lookback: int = 20, notional: float = 10_000.0
) -> pa.Table:
    """About one fill per portfolio every `every` trades of an instrument: momentum buys after a rise over the
    last `lookback` trades, mean-reversion sells, noise flips a coin; 1-10 × `notional` in currency per fill.
    Fee = 2 bp of notional + 0.5."""
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("fill_id", "portfolio_id", "instrument_id", "quantity", "price", "fee", "ts_event")}
    inst = np.array(trades["instrument_id"].to_pylist(), dtype=object)
    price, ts = trades["price"].to_numpy(), trades["ts_event"].to_numpy()
    tid = trades["trade_id"].to_pylist()
    for name in sorted(set(inst)):
        idx = np.flatnonzero(inst == name)
        for k in range(lookback, idx.size, every):
            i, trend = idx[k], np.sign(price[idx[k]] - price[idx[k - lookback]])
            for pf, side in (
                ("momentum", trend or 1),
                ("mean-reversion", -trend or -1),
                ("noise", 1 if rng.random() < 0.5 else -1),
            ):
                qty = float(side * round(rng.integers(1, 11) * notional / price[i], 4) or side * 1e-4)
                cols["fill_id"].append(f"{pf}:{name}:{tid[i]}")
                cols["portfolio_id"].append(pf)
                cols["instrument_id"].append(name)
                cols["quantity"].append(qty)
                cols["price"].append(float(price[i]))
                cols["fee"].append(round(abs(qty) * price[i] * FEE_RATE + FEE_FIXED, 6))
                cols["ts_event"].append(int(ts[i]))
    return pa.table(cols).sort_by("ts_event")


def fill_messages(fills: pa.Table) -> list[bytes]:
    return [orjson.dumps({"schema_version": 1, **r}) for r in fills.to_pylist()]
