"""The `ml_predictions` product: per trading day D (walk-forward), an MLX logistic regression trained on the
days before D predicts, for every 1-minute bar of D, whether the next bar closes higher. Predictions go to
ClickHouse `ml.ml_predictions`; weights and metrics are versioned on the lake with a registry table
`ml.model_registry`; an asset check compares out-of-sample accuracy and log-loss with two naive baselines."""

import io
import json
import time
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pandas as pd

from nautilus_assets.analytics.assets import KEY as INDICATORS_KEY
from nautilus_assets.market_data.assets import BARS_KEY
from nautilus_assets.microstructure.assets import KEY as VPIN_KEY
from nautilus_assets.product import TRADING_DAYS, Product, png_markdown
from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource
from resources.pulsar import PulsarResource

from . import store
from .model import FEATURES, calibration, coefficients, evaluate, features, pooled_significance, predict_proba, train

PRODUCT = Product(
    "ml_predictions",
    "ml",
    ("team:ml",),
    "ml-predictions",
    fail_after=timedelta(minutes=5),
    warn_after=timedelta(minutes=2),
    latency_target_ms=2,
    availability_target=0.9995,
)
KEY = dg.AssetKey(["ml_predictions", "next_bar_direction"])
CODE_VERSION = "2"  # 2: order-flow imbalance features, significance over the days
TRAIN_DAYS, MIN_TRAIN = 5, 200
SIGNIFICANCE_DAYS = 20  # the check pools this day with the registry's evaluations of up to 19 days before it


def calibration_plot(cal: list[dict]) -> dg.MetadataValue:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    lo = min(min(c["predicted"] for c in cal), min(c["observed"] for c in cal)) - 0.02
    hi = max(max(c["predicted"] for c in cal), max(c["observed"] for c in cal)) + 0.02
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="perfectly calibrated")
    ax.plot([c["predicted"] for c in cal], [c["observed"] for c in cal], marker="o", label="model (deciles)")
    ax.set_xlabel("predicted P(next bar up)")
    ax.set_ylabel("observed frequency")
    ax.legend(fontsize=7)
    return png_markdown(fig, "calibration")


def save_model(lake: LakeResource, version: str, params: dict, metrics: dict) -> str:
    buf = io.BytesIO()
    np.savez(
        buf, w=params["w"], b=np.array([params["b"]]), mu=params["mu"], sd=params["sd"], features=np.array(FEATURES)
    )
    key = f"ml/models/{version}"
    s3 = lake.s3_client()
    s3.put_object(Bucket=lake.bucket, Key=f"{key}/weights.npz", Body=buf.getvalue())
    s3.put_object(Bucket=lake.bucket, Key=f"{key}/metrics.json", Body=json.dumps(metrics).encode())
    return f"s3://{lake.bucket}/{key}/weights.npz"


def load_model(lake: LakeResource, uri: str) -> dict:
    key = uri.split(f"s3://{lake.bucket}/", 1)[1]
    z = np.load(io.BytesIO(lake.s3_client().get_object(Bucket=lake.bucket, Key=key)["Body"].read()))
    return {"w": z["w"], "b": float(z["b"][0]), "mu": z["mu"], "sd": z["sd"]}


@dg.asset(
    key=KEY,
    deps=[INDICATORS_KEY, VPIN_KEY, BARS_KEY],
    partitions_def=TRADING_DAYS,
    group_name=PRODUCT.group,
    owners=list(PRODUCT.owners),
    kinds={"mlx", "clickhouse", "s3"},
    code_version=CODE_VERSION,
    freshness_policy=PRODUCT.freshness,
    pool="mlx",
    # one partition per run: each day is its own model version, recorded as that partition's data version and
    # registry row, and a single-run range would carry one materialization (one data version) for all days
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    automation_condition=dg.AutomationCondition.on_cron("15 0 * * *", cron_timezone="UTC"),
    description="Walk-forward MLX logistic regression on analytics, microstructure and order-flow features "
    f"(imbalance of the 5 and 20 bars before): trained on the {TRAIN_DAYS} trading days before D, "
    "it predicts for each 1-minute bar of D whether the next bar closes higher. Coefficients with "
    "standard errors and a calibration plot on each materialization. Predictions in ClickHouse "
    "ml.ml_predictions; weights and metrics versioned on the lake (ml/models/<version>/) with the "
    "registry ml.model_registry.",
    metadata=PRODUCT.stored_in(store.PREDICTIONS),
    check_specs=[
        dg.AssetCheckSpec(
            "beats_naive_baselines",
            asset=KEY,
            description=(
                "Out of sample, pooled over this day and the registry's evaluations of up to "
                f"{SIGNIFICANCE_DAYS - 1} days before it: the model's log-loss and accuracy beat both naive baselines "
                "(training majority sign; previous bar's sign), each gain significant at 5% (Diebold–Mariano, "
                "Newey–West variance). On a random-walk market it does not pass, as it should not."
            ),
        )
    ],
)
def next_bar_direction(
    context: dg.AssetExecutionContext, clickhouse: ClickHouseResource, lake: LakeResource, pulsar: PulsarResource
):
    day = date.fromisoformat(context.partition_key)
    f = features(store.load_rows(clickhouse, day - timedelta(days=TRAIN_DAYS), day + timedelta(days=1)))
    f = f.replace([np.inf, -np.inf], np.nan).dropna(subset=[*FEATURES, "label"])
    is_test = f["minute"].dt.date == day
    tr, te = f[~is_test], f[is_test]
    if len(tr) < MIN_TRAIN or te.empty:
        yield dg.MaterializeResult(metadata={"trained": False, "n_train": len(tr), "n_test": len(te)})
        yield dg.AssetCheckResult(
            check_name="beats_naive_baselines",
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"reason": f"needs {MIN_TRAIN} training bars and bars on {day}"},
        )
        return
    params = train(tr[FEATURES].to_numpy(), tr["label"].to_numpy())
    p = predict_proba(params, te[FEATURES].to_numpy())
    metrics = evaluate(
        tr["label"].to_numpy(),
        (tr["ret_1"] > 0).astype(int).to_numpy(),
        te["label"].to_numpy(),
        (te["ret_1"] > 0).astype(int).to_numpy(),
        p,
    )
    version = f"{day}-c{CODE_VERSION}-{context.run.run_id[:8]}"
    uri = save_model(lake, version, params, metrics)
    now = time.time_ns()
    preds = pd.DataFrame(
        {
            "instrument_id": te["instrument_id"],
            "minute": te["minute"],
            "date": day,
            "prob_up": p,
            "predicted_up": (p >= 0.5).astype("uint8"),
            "model_version": version,
            "version": now,
            "run_id": context.run.run_id,
        }
    )
    registry = pd.DataFrame(
        [
            {
                "model_version": version,
                "partition_date": day,
                "train_from": tr["minute"].min().date(),
                "train_to": tr["minute"].max().date(),
                "n_train": len(tr),
                "n_test": len(te),
                "metrics": json.dumps(metrics),
                "code_version": CODE_VERSION,
                "weights_uri": uri,
                "created_at": pd.Timestamp.now(tz="UTC"),
                "run_id": context.run.run_id,
            }
        ]
    )
    earlier = store.earlier_evaluations(clickhouse, day, SIGNIFICANCE_DAYS)
    store.write(clickhouse, preds, registry)
    coefs = coefficients(params, tr[FEATURES].to_numpy())
    cal = calibration(te["label"].to_numpy(), p)
    summary = {k: v for k, v in metrics.items() if not k.endswith("_lrv")}
    yield dg.MaterializeResult(
        metadata={
            "trained": True,
            "model_version": version,
            "weights_uri": uri,
            "n_train": len(tr),
            **summary,
            "coefficients": dg.MetadataValue.md(_table(coefs, ("feature", "coefficient", "std_error", "z"))),
            "calibration": calibration_plot(cal),
            "dagster/column_lineage": store.PREDICTIONS.lineage,
        },
        data_version=dg.DataVersion(version),
    )
    pooled = pooled_significance([*earlier, metrics])
    yield dg.AssetCheckResult(
        check_name="beats_naive_baselines",
        passed=pooled["beats"],
        metadata={**summary, **{f"pooled_{k}": v for k, v in pooled.items()}},
        severity=dg.AssetCheckSeverity.WARN,
    )
    PRODUCT.announce(pulsar, KEY, context.run.run_id, model_version=version, **summary)


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
    return head + "".join(
        "\n| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in columns) + " |"
        for r in rows
    )


ASSETS = [next_bar_direction]
