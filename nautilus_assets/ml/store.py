"""ClickHouse storage of the ml_predictions product: ml.ml_predictions and the registry ml.model_registry declared
once, and the product's SQL (its read of the analytics, microstructure and bar features too)."""

import json
from datetime import date, timedelta

import pandas as pd

from nautilus_assets.analytics.assets import KEY as INDICATORS_KEY
from nautilus_assets.market_data.assets import BARS_KEY
from nautilus_assets.microstructure.assets import KEY as VPIN_KEY
from nautilus_assets.tables import Column, Table
from resources.clickhouse import ClickHouseResource

FEATURE_INPUTS = (
    *(
        (INDICATORS_KEY, c)
        for c in (
            "close",
            "rsi_14",
            "macd_hist",
            "bb_upper",
            "bb_middle",
            "bb_lower",
            "sma_20",
            "atr_14",
            "session_vwap",
        )
    ),
    (VPIN_KEY, "vpin"),
    (VPIN_KEY, "order_imbalance"),
    (BARS_KEY, "buy_volume"),
    (BARS_KEY, "sell_volume"),
)
PREDICTIONS = Table(
    "ml.ml_predictions",
    (
        Column("instrument_id", "LowCardinality(String)", "Instrument"),
        Column("minute", "DateTime('UTC')", "Bar minute"),
        Column("date", "Date", "Trading day of the model (the partition)"),
        Column("prob_up", "Float64", "Predicted probability that the next bar closes higher", FEATURE_INPUTS),
        Column("predicted_up", "UInt8", "prob_up >= 0.5", FEATURE_INPUTS),
        Column("model_version", "String", "Model that predicted (ml.model_registry)"),
        Column("version", "UInt64", "Row version; the latest wins"),
        Column("run_id", "String", "Run that predicted"),
        Column("batch_id", "String", "The row's run (row provenance)", extra="ALIAS run_id", added=True),
    ),
    "ENGINE = ReplacingMergeTree(version) ORDER BY (instrument_id, minute)",
)
REGISTRY = Table(
    "ml.model_registry",
    (
        Column("model_version", "String", "<day>-c<code version>-<run id prefix>"),
        Column("partition_date", "Date", "Day the model predicts"),
        Column("train_from", "Date", "First training day"),
        Column("train_to", "Date", "Last training day"),
        Column("n_train", "UInt32", "Training bars"),
        Column("n_test", "UInt32", "Test bars"),
        Column("metrics", "String", "Out-of-sample evaluation, JSON"),
        Column("code_version", "String", "The asset's code version"),
        Column("weights_uri", "String", "Weights on the lake"),
        Column("created_at", "DateTime64(3, 'UTC')", "When the model was trained"),
        Column("run_id", "String", "Run that trained it"),
    ),
    "ENGINE = ReplacingMergeTree ORDER BY model_version",
)
DDL = ["CREATE DATABASE IF NOT EXISTS ml", *PREDICTIONS.ddl(), *REGISTRY.ddl()]

ROWS_SQL = """
SELECT i.instrument_id AS instrument_id, i.minute AS minute, i.close AS close, i.rsi_14 AS rsi_14,
       i.macd_hist AS macd_hist, i.bb_upper AS bb_upper, i.bb_middle AS bb_middle, i.bb_lower AS bb_lower,
       i.sma_20 AS sma_20, i.atr_14 AS atr_14, i.session_vwap AS session_vwap, v.vpin AS vpin,
       v.order_imbalance AS order_imbalance, b.buy_volume AS buy_volume, b.sell_volume AS sell_volume
FROM (SELECT * FROM analytics.indicators_1m FINAL WHERE minute >= %(lo)s AND minute < %(hi)s) AS i
LEFT JOIN (SELECT instrument_id, minute, buy_volume, sell_volume FROM market_data.bars_1m FINAL
           WHERE minute >= %(lo)s AND minute < %(hi)s) AS b
  ON i.instrument_id = b.instrument_id AND i.minute = b.minute
ASOF LEFT JOIN (SELECT instrument_id, end_minute, vpin, order_imbalance FROM microstructure.vpin_buckets FINAL
                WHERE variant = 'bvc' AND end_minute < %(hi)s) AS v
  ON i.instrument_id = v.instrument_id AND i.minute >= v.end_minute
ORDER BY instrument_id, minute"""


def load_rows(ch: ClickHouseResource, first: date, end: date) -> pd.DataFrame:
    with ch.session() as c:
        df = c.query_df(
            ROWS_SQL, parameters={"lo": pd.Timestamp(first), "hi": pd.Timestamp(end)}, settings={"join_use_nulls": 1}
        )
    df["instrument_id"] = df["instrument_id"].astype(str)
    df["minute"] = (
        pd.to_datetime(df["minute"]).dt.tz_localize(None)
        if df["minute"].dt.tz is not None
        else pd.to_datetime(df["minute"])
    )
    return df


def earlier_evaluations(ch: ClickHouseResource, day: date, days: int) -> list[dict]:
    """The latest registry evaluation of each of the `days` − 1 days before `day` (those that carry the per-bar gain
    summaries: code version 2 on)."""
    rows = ch.query_df(
        f"SELECT partition_date, argMax(metrics, created_at) AS metrics FROM {REGISTRY.name} "
        "WHERE partition_date >= %(lo)s AND partition_date < %(day)s GROUP BY partition_date "
        "ORDER BY partition_date",
        parameters={"lo": day - timedelta(days=days - 1), "day": day},
    )
    out = [json.loads(m) for m in rows["metrics"]] if len(rows) else []
    return [m for m in out if "majority_loss_gain" in m]


def write(ch: ClickHouseResource, predictions: pd.DataFrame, registry: pd.DataFrame) -> None:
    with ch.session() as c:
        c.insert_df(PREDICTIONS.name, predictions)
        c.insert_df(REGISTRY.name, registry)
