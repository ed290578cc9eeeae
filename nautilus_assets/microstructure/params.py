"""VPIN's daily parameters from past data only (pure): sigma and bucket volume, fixed for the day."""

from datetime import date

import pandas as pd

ADV_DAYS = 20
BUCKETS_PER_DAY = 50


def daily_params(trades: pd.DataFrame, day: date) -> pd.DataFrame:
    """Per instrument for `day`, from trades (instrument_id, price, size, ts_event) of earlier days:
    sigma = std (ddof=1) of 1-minute close changes over the previous trading day (the latest earlier day with
    trades); bucket_volume = average daily volume over the last 20 trading days / 50."""
    t = trades.assign(minute=(trades["ts_event"] // 60_000_000_000) * 60)
    t["day"] = pd.to_datetime(t["minute"], unit="s").dt.date
    t = t[t["day"] < day].sort_values("ts_event")
    rows = []
    for inst, g in t.groupby("instrument_id"):
        days = sorted(g["day"].unique())[-ADV_DAYS:]
        adv = g[g["day"].isin(days)].groupby("day")["size"].sum().mean()
        prev = g[g["day"] == days[-1]]
        closes = prev.groupby("minute")["price"].last()
        sigma = float(closes.diff().std(ddof=1)) if len(closes) > 2 else 0.0
        rows.append(
            {
                "instrument_id": inst,
                "date": day,
                "sigma": sigma,
                "adv": float(adv),
                "bucket_volume": float(adv) / BUCKETS_PER_DAY,
                "days_used": len(days),
            }
        )
    return pd.DataFrame(rows, columns=["instrument_id", "date", "sigma", "adv", "bucket_volume", "days_used"])
