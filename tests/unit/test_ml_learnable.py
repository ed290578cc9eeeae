"""The ML product's model on the simulator's markets, without services: the same features, training, baselines and
significance test as the asset, on bars and indicators computed straight from simulated trades (the VPIN features
left at their fill value). Walk-forward over 14 days: the stylized market's informed bursts are learnable, so the
model beats both naive baselines significantly; on the random walk it does not."""

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from nautilus_assets.analytics.indicators import indicators
from nautilus_assets.ml.model import (
    FEATURES,
    calibration,
    coefficients,
    diebold_mariano,
    evaluate,
    features,
    pooled_significance,
    predict_proba,
    train,
)
from scripts.history import simulate_days
from tests.helpers import reference_bars

INSTR, DAYS, TRAIN = ["AAPL.XNAS", "SPY.ARCX"], 14, 5


def walk_forward(model: str) -> list[dict]:
    trades = pa.concat_tables([t for _, t, _ in simulate_days(INSTR, date(2025, 3, 1), DAYS, 12_000, 7, model)])
    bars = reference_bars(trades).sort_values(["instrument_id", "minute"]).reset_index(drop=True)
    rows = pd.concat(
        [
            pd.concat([g.reset_index(drop=True), indicators(g.reset_index(drop=True))], axis=1)
            for _, g in bars.groupby("instrument_id")
        ],
        ignore_index=True,
    )
    rows["vpin"], rows["order_imbalance"] = np.nan, np.nan
    f = features(rows).replace([np.inf, -np.inf], np.nan).dropna(subset=[*FEATURES, "label"])
    day = f["minute"].dt.date
    out = []
    for d in sorted(set(day))[TRAIN:]:
        tr, te = f[(day < d) & (day >= d - timedelta(days=TRAIN))], f[day == d]
        params = train(tr[FEATURES].to_numpy(), tr["label"].to_numpy())
        p = predict_proba(params, te[FEATURES].to_numpy())
        out.append(
            evaluate(
                tr["label"].to_numpy(),
                (tr["ret_1"] > 0).astype(int).to_numpy(),
                te["label"].to_numpy(),
                (te["ret_1"] > 0).astype(int).to_numpy(),
                p,
            )
        )
    last = (params, tr, te, p)
    return out, last


def test_the_model_learns_the_stylized_market_and_not_the_random_walk():
    stylized, (params, tr, te, p) = walk_forward("stylized")
    pooled = pooled_significance(stylized)
    assert pooled["beats"], pooled
    assert pooled["days"] == DAYS - TRAIN and pooled["days_won"] >= 6
    # what it learned: recent order flow carries the bursts' drift (the coefficient is positive and significant)
    coef = {c["feature"]: c for c in coefficients(params, tr[FEATURES].to_numpy())}
    assert coef["ofi_5"]["coefficient"] > 0 and coef["ofi_5"]["z"] > 3
    # calibrated: no decile's observed frequency more than 8 points from its mean prediction
    cal = calibration(te["label"].to_numpy(), p)
    assert sum(c["n"] for c in cal) == len(te) and max(abs(c["predicted"] - c["observed"]) for c in cal) < 0.08

    walk = pooled_significance(walk_forward("random_walk")[0])
    assert not walk["beats"], walk
    assert walk["majority_loss_p_value"] > 0.05 or walk["previous_sign_loss_p_value"] > 0.05


def test_diebold_mariano_and_pooling_by_hand():
    rng = np.random.default_rng(3)
    a = rng.exponential(1.0, 4000)
    b = a - 0.05 + rng.normal(0, 0.5, 4000)  # b's loss lower by 0.05 on average
    stat, p = diebold_mariano(a, b, lags=0)
    d = a - b
    assert stat == pytest.approx(d.mean() / (d.std() / np.sqrt(d.size)), rel=1e-12) and p < 1e-3
    # pooling two days equals the statistic over the concatenated differentials (lags 0, equal-weight means)
    day = {"n_test": 2000, "model_log_loss": 0.6, "majority_log_loss": 0.7, "previous_sign_log_loss": 0.7}
    parts = []
    for chunk in (d[:2000], d[2000:]):
        g = {**day}
        for base in ("majority", "previous_sign"):
            for kind in ("loss", "hit"):
                c = chunk - chunk.mean()
                g[f"{base}_{kind}_gain"], g[f"{base}_{kind}_gain_lrv"] = chunk.mean(), float(c @ c) / c.size
        parts.append(g)
    pooled = pooled_significance(parts)
    assert pooled["majority_loss_gain"] == pytest.approx(d.mean(), rel=1e-12)
    within = sum(((x - x.mean()) ** 2).sum() for x in (d[:2000], d[2000:])) / 4000**2
    assert pooled["majority_loss_dm"] == pytest.approx(d.mean() / np.sqrt(within), rel=1e-12)
    assert pooled["days_won"] == 2 and pooled["sign_test_p_value"] == pytest.approx(0.25)
