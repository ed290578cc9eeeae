"""Shared test helpers: reference computations independent of the product code."""
import pandas as pd
import pyarrow as pa


def reference_bars(trades: pa.Table) -> pd.DataFrame:
    """1-minute bars from raw published trades, computed with pandas only."""
    df = trades.to_pandas().sort_values(["instrument_id", "ts_event"])
    df["minute"] = pd.to_datetime(df["ts_event"] // 60_000_000_000 * 60, unit="s")
    df["pv"] = df["price"] * df["size"]
    df["buy"] = df["size"].where(df["aggressor_side"] == "BUYER", 0.0)
    df["sell"] = df["size"].where(df["aggressor_side"] == "SELLER", 0.0)
    g = df.groupby(["instrument_id", "minute"])
    out = pd.DataFrame({"open": g["price"].first(), "high": g["price"].max(), "low": g["price"].min(),
                        "close": g["price"].last(), "volume": g["size"].sum(), "vwap": g["pv"].sum() / g["size"].sum(),
                        "trade_count": g["price"].size(), "buy_volume": g["buy"].sum(), "sell_volume": g["sell"].sum()})
    return out.reset_index()


def stored_bars(ch) -> pd.DataFrame:
    df = ch.query_df("SELECT instrument_id, minute, open, high, low, close, volume, vwap, trade_count, buy_volume, "
                     "sell_volume FROM market_data.bars_1m FINAL ORDER BY instrument_id, minute")
    df["minute"] = pd.to_datetime(df["minute"]).dt.tz_localize(None)
    df["instrument_id"] = df["instrument_id"].astype(str)
    df["trade_count"] = df["trade_count"].astype("int64")
    return df


def assert_bars_equal(stored: pd.DataFrame, ref: pd.DataFrame) -> None:
    ref = ref.sort_values(["instrument_id", "minute"]).reset_index(drop=True)
    ref["instrument_id"] = ref["instrument_id"].astype(str)
    ref["minute"] = ref["minute"].astype(stored["minute"].dtype)
    pd.testing.assert_frame_equal(stored.reset_index(drop=True), ref, check_dtype=False, rtol=1e-12, atol=0)


def fail_orphaned_runs(instance, since: float) -> list[str]:
    """After a test killed the daemon it spawned (and with it the run workers it launched), fail the runs left
    unfinished: a run the sensor launched moments before the kill would otherwise stay in flight in the shared
    instance, and the next test's sensor would wait on it."""
    import dagster as dg
    from sensors.pulsar_ingest import NOT_FINISHED_STATUSES
    left = [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(statuses=list(NOT_FINISHED_STATUSES)))
            if r.create_timestamp.timestamp() >= since]
    for run in left:
        instance.report_run_failed(run, "the test that launched it killed its daemon")
    return [run.run_id for run in left]
