"""ml_predictions, walk-forward over history loaded into the stored products: train on the days before D,
predict D; weights versioned on the lake reproduce the stored predictions; baselines reported."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np

from nautilus_assets.analytics.assets import indicators_1m
from nautilus_assets.microstructure.assets import vpin_buckets
from nautilus_assets.ml import assets as ml
from nautilus_assets.ml import store as ml_store
from nautilus_assets.ml.model import FEATURES, features, predict_proba
from scripts.history import write_history


def test_walk_forward_day_with_versioned_model(clean, instance):
    res = clean
    today = datetime.now(UTC).date()
    write_history(res["lake"], ["AAPL.XNAS", "SPY.ARCX"], days=6, events_per_day=12_000, clickhouse=res["clickhouse"])
    resources = {k: res[k] for k in ("lake", "clickhouse", "pulsar", "redis")}
    for asset in (indicators_1m, vpin_buckets):
        assert dg.materialize([asset], instance=instance, resources=resources).success
    day = today - timedelta(days=1)
    for d in (day - timedelta(days=1), day):  # the check pools the day before from the registry
        result = dg.materialize(
            [ml.next_bar_direction], instance=instance, resources=resources, partition_key=d.isoformat()
        )
        assert result.success
    meta = result.asset_materializations_for_node("ml_predictions__next_bar_direction")[0].metadata
    assert meta["trained"].value and meta["n_train"].value > 1000
    assert "| ofi_5 |" in meta["coefficients"].value and "data:image/png;base64" in meta["calibration"].value
    check = result.get_asset_check_evaluations()[0]
    for k in (
        "model_accuracy",
        "majority_accuracy",
        "previous_sign_accuracy",
        "model_log_loss",
        "majority_log_loss",
        "previous_sign_log_loss",
    ):
        assert 0 <= check.metadata[k].value <= (1 if "accuracy" in k else 5), k
    assert check.metadata["pooled_days"].value == 2
    gains = [
        check.metadata[f"pooled_{b}_{k}_{s}"].value
        for b in ("majority", "previous_sign")
        for k in ("loss", "hit")
        for s in ("gain", "p_value")
    ]
    assert check.passed == all(g > 0 and p < 0.05 for g, p in zip(gains[::2], gains[1::2]))

    ch = res["clickhouse"]
    reg = ch.query_df("SELECT * FROM ml.model_registry WHERE partition_date = %(d)s", parameters={"d": day})
    assert len(reg) == 1 and reg["model_version"][0] == meta["model_version"].value
    assert str(reg["train_to"][0])[:10] < day.isoformat() <= str(reg["partition_date"][0])[:10]
    preds = ch.query_df(
        "SELECT instrument_id, minute, prob_up FROM ml.ml_predictions FINAL WHERE date = %(d)s "
        "ORDER BY instrument_id, minute",
        parameters={"d": day},
    )
    assert len(preds) == meta["n_test"].value and (preds["minute"].dt.date == day).all()
    # the versioned weights on the lake reproduce the stored predictions
    params = ml.load_model(res["lake"], reg["weights_uri"][0])
    f = features(ml_store.load_rows(ch, day - timedelta(days=ml.TRAIN_DAYS), day + timedelta(days=1)))
    f = f.replace([np.inf, -np.inf], np.nan).dropna(subset=[*FEATURES, "label"])
    f = f[f["minute"].dt.date == day]
    np.testing.assert_allclose(predict_proba(params, f[FEATURES].to_numpy()), preds["prob_up"].to_numpy(), rtol=1e-9)
