"""market_microstructure: VPIN computed batch by batch (with daily parameters from the lake's past trades)
equals one pass over the full history; the plot is attached; checks pass."""

import time

import dagster as dg
import numpy as np
import pandas as pd

from nautilus_assets import current
from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.market_data.simulator import MarketSimulator
from nautilus_assets.market_data.sinks import bronze_table
from nautilus_assets.microstructure import assets as micro
from nautilus_assets.microstructure import store as micro_store
from nautilus_assets.microstructure.params import daily_params
from nautilus_assets.microstructure.vpin import VpinState
from scripts.history import write_history
from scripts.publisher import publish_tables
from tests.helpers import batch, reference_bars

INSTR = ["AAPL.XNAS", "ESZ6.GLBX"]


def reference(lake, live_trades) -> pd.DataFrame:
    everything = (
        lake.table(bronze_table(TRADES))
        .to_pyarrow_table(columns=["instrument_id", "price", "size", "ts_event"])
        .to_pandas()
    )
    bars = reference_bars(live_trades)
    bars["date"] = bars["minute"].dt.date
    out = []
    for inst, b in bars.groupby("instrument_id"):
        st = {"bvc": VpinState(), "aggressor": VpinState()}
        for day, g in b.sort_values("minute").groupby("date"):
            p = daily_params(everything[everything["instrument_id"] == inst], day).iloc[0]
            close, vol = g["close"].to_numpy(), g["volume"].to_numpy()
            for variant, r in (
                ("bvc", st["bvc"].advance(close, vol, p.bucket_volume, sigma=p.sigma)),
                (
                    "aggressor",
                    st["aggressor"].advance(
                        close,
                        (g["buy_volume"] + g["sell_volume"]).to_numpy(),
                        p.bucket_volume,
                        buy=g["buy_volume"].to_numpy(),
                    ),
                ),
            ):
                r.pop("bar_index")
                out.append(pd.DataFrame(r).assign(instrument_id=inst, variant=variant))
    return pd.concat(out, ignore_index=True)


def test_vpin_batch_by_batch_equals_full_history(clean, instance):
    res = clean
    assert write_history(res["lake"], INSTR, days=21, events_per_day=3000)["trades"] > 0
    now = time.time_ns()
    trades, _ = MarketSimulator(
        INSTR, seed=12, start_ns=now - 4 * 3600 * 10**9, events_per_second=1.5, intraday_profile=False
    ).take(9000, 0)  # in the past at any hour
    assert trades["ts_event"][-1].as_py() < now
    for k, idx in enumerate(np.array_split(np.arange(trades.num_rows), 5)):
        publish_tables(res["pulsar"], trades.take(idx), trades.slice(0, 0))
        assert batch(res, TRADES, f"v-{k}").valid == len(idx)
        result = dg.materialize(
            [micro.vpin_buckets],
            instance=instance,
            resources={
                "clickhouse": res["clickhouse"],
                "pulsar": res["pulsar"],
                "lake": res["lake"],
                "redis": res["redis"],
            },
        )
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    mat = result.asset_materializations_for_node("market_microstructure__vpin")[0]
    assert "data:image/png;base64," in mat.metadata["vpin_vs_price"].value
    stored = res["clickhouse"].query_df(f"SELECT * FROM {micro_store.DB}.vpin_buckets FINAL")
    stored["instrument_id"] = stored["instrument_id"].astype(str)
    stored["variant"] = stored["variant"].astype(str)
    ref = reference(res["lake"], trades)
    assert len(stored) == len(ref) and (ref.groupby("variant").size() > 100).all()
    m = stored.merge(ref, on=["instrument_id", "variant", "bucket_seq"], suffixes=("", "_ref"))
    assert len(m) == len(ref)
    for col in ("buy", "sell", "vpin", "order_imbalance", "bucket_volume"):
        np.testing.assert_allclose(m[col], m[col + "_ref"], rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=col)
    assert m["vpin"].notna().sum() > 100 and m["vpin"].max() <= 1
    # the runs kept the latest bucket per instrument and variant in Redis, as the store has it
    cached, _ = res["redis"].get("vpin")
    kind = current.KINDS["vpin"]
    assert cached == {kind.field(r): r for r in current.from_store(kind, res["clickhouse"])}
    assert len(cached) == 2 * len(INSTR)


def test_a_run_remembers_daily_parameters_and_rechecks_missing_ones(clean):
    """params_for with a run's memo: a day without parameters is not looked up again (no lake read per batch)
    until NO_PARAMS_RECHECK_S has passed; then the stored parameters are found and kept."""
    import datetime

    res = clean
    ch, lake, day, memo = res["clickhouse"], res["lake"], datetime.date(2026, 11, 30), {}
    ch.ensure(micro_store.DDL)
    assert micro.params_for(ch, lake, "AAPL.XNAS", [day], memo) == {} and memo[("AAPL.XNAS", day)][0] is None
    ch.command(
        f"INSERT INTO {micro_store.DB}.vpin_params (instrument_id, date, sigma, bucket_volume, version) "
        "VALUES ('AAPL.XNAS', '2026-11-30', 0.25, 1000, 1)"
    )
    assert micro.params_for(ch, lake, "AAPL.XNAS", [day], memo) == {}  # remembered as missing
    memo[("AAPL.XNAS", day)] = (None, time.monotonic() - micro.NO_PARAMS_RECHECK_S - 1)
    want = {day: {"sigma": 0.25, "bucket_volume": 1000.0}}
    assert micro.params_for(ch, lake, "AAPL.XNAS", [day], memo) == want
    ch.command(f"TRUNCATE TABLE {micro_store.DB}.vpin_params")
    assert micro.params_for(ch, lake, "AAPL.XNAS", [day], memo) == want  # fixed for the day: not read again
