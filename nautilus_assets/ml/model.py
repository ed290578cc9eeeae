"""Features, an MLX logistic regression, honest baselines and their significance (pure: no I/O).

Label: whether the next 1-minute bar of the same instrument closes higher. Features come only from the
analytics and microstructure products at the bar itself and from the order flow of the bars before it (no
look-ahead). The order-flow imbalance leaves out the bar itself: its last trade's side predicts the next close
through the bid-ask bounce, which a random walk has too, and which is no information about the price."""

import math
from statistics import NormalDist

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pandas as pd

FEATURES = [
    "rsi",
    "macd_hist",
    "bb_position",
    "sma_gap",
    "atr_ratio",
    "vwap_gap",
    "ret_1",
    "ret_1_sign",
    "vpin",
    "order_imbalance",
    "ofi_5",
    "ofi_20",
]
OFI_WINDOWS = (5, 20)


def features(df: pd.DataFrame) -> pd.DataFrame:
    """From indicator rows (+ vpin, order_imbalance as of the bar, the bar's buy and sell volume) sorted by
    instrument, minute: features and label."""
    out = pd.DataFrame({"instrument_id": df["instrument_id"], "minute": df["minute"]})
    c = df["close"]
    out["rsi"] = df["rsi_14"] / 100 - 0.5
    out["macd_hist"] = df["macd_hist"] / c
    out["bb_position"] = (c - df["bb_middle"]) / (df["bb_upper"] - df["bb_lower"]).replace(0, np.nan)
    out["sma_gap"] = c / df["sma_20"] - 1
    out["atr_ratio"] = df["atr_14"] / c
    out["vwap_gap"] = c / df["session_vwap"] - 1
    g = c.groupby(df["instrument_id"])
    out["ret_1"] = c / g.shift(1) - 1
    out["ret_1_sign"] = np.sign(out["ret_1"])  # the bar's direction (the bounce), so the model nests that baseline
    out["vpin"] = df["vpin"].fillna(0.0)
    out["order_imbalance"] = df["order_imbalance"].fillna(0.0)
    net, vol = df["buy_volume"] - df["sell_volume"], df["buy_volume"] + df["sell_volume"]
    for w in OFI_WINDOWS:  # (buy − sell) / volume over the w bars before this one
        num = net.groupby(df["instrument_id"]).transform(lambda x, w=w: x.rolling(w).sum().shift(1))
        den = vol.groupby(df["instrument_id"]).transform(lambda x, w=w: x.rolling(w).sum().shift(1))
        out[f"ofi_{w}"] = num / den.replace(0, np.nan)
    nxt = g.shift(-1)
    out["label"] = np.where(nxt.isna(), np.nan, (nxt > c).astype(float))
    return out


class Logistic(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.linear = nn.Linear(n, 1)

    def __call__(self, x):
        return self.linear(x).squeeze(-1)


def train(x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 0.05, seed: int = 0) -> dict:
    """Standardised logistic regression trained full-batch with Adam; returns numpy weights and scaling."""
    mx.random.seed(seed)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-12
    xs, ys = mx.array((x - mu) / sd, dtype=mx.float32), mx.array(y, dtype=mx.float32)
    model = Logistic(x.shape[1])
    opt = optim.Adam(learning_rate=lr)

    def loss_fn(m, a, b):
        return nn.losses.binary_cross_entropy(m(a), b, with_logits=True, reduction="mean")

    step = nn.value_and_grad(model, loss_fn)
    for _ in range(steps):
        loss, grads = step(model, xs, ys)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
    return {
        "w": np.array(model.linear.weight).ravel(),
        "b": float(np.array(model.linear.bias)[0]),
        "mu": mu,
        "sd": sd,
        "train_loss": float(loss),
    }


def predict_proba(params: dict, x: np.ndarray) -> np.ndarray:
    z = ((x - params["mu"]) / params["sd"]) @ params["w"] + params["b"]
    return 1 / (1 + np.exp(-z))


def _losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(_losses(y, p).mean())


def long_run_variance(d: np.ndarray, lags: int = 5) -> float:
    """Newey–West (Bartlett) long-run variance of d: the variance of its mean is this / n (for Diebold–Mariano;
    consecutive bars' losses are not independent)."""
    d = np.asarray(d, np.float64) - np.mean(d)
    n = d.size
    v = float(d @ d) / n
    for k in range(1, min(lags, n - 1) + 1):
        v += 2 * (1 - k / (lags + 1)) * float(d[k:] @ d[:-k]) / n
    return v


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, lags: int = 5) -> tuple[float, float]:
    """Diebold–Mariano (1995) test that model b has lower expected loss than model a: (statistic, one-sided
    p-value, N(0, 1)); the differential's variance is Newey–West with `lags` lags."""
    d = np.asarray(loss_a, np.float64) - np.asarray(loss_b, np.float64)
    se = math.sqrt(max(long_run_variance(d, lags), 1e-300) / d.size)
    stat = float(d.mean() / se)
    return stat, 1 - NormalDist().cdf(stat)


def evaluate(y_train, prev_up_train, y_test, prev_up_test, p_model) -> dict:
    """Out-of-sample accuracy and log-loss of the model and of two naive baselines: the training window's
    majority sign (probability = its up frequency) and the previous bar's sign (probability = the training
    frequency of up after up / after down)."""
    up = float(np.mean(y_train))
    p_major = np.full(len(y_test), up)
    after_up = float(np.mean(y_train[prev_up_train == 1])) if (prev_up_train == 1).any() else 0.5
    after_down = float(np.mean(y_train[prev_up_train == 0])) if (prev_up_train == 0).any() else 0.5
    p_prev = np.where(prev_up_test == 1, after_up, after_down)
    acc = lambda p: float(np.mean((p >= 0.5) == (y_test == 1)))  # noqa: E731
    out = {
        "n_test": int(len(y_test)),
        "model_accuracy": acc(p_model),
        "model_log_loss": log_loss(y_test, p_model),
        "majority_accuracy": acc(p_major),
        "majority_log_loss": log_loss(y_test, p_major),
        "previous_sign_accuracy": float(np.mean((prev_up_test == 1) == (y_test == 1))),
        "previous_sign_log_loss": log_loss(y_test, p_prev),
    }
    # per-bar loss and hit differentials against each baseline, summarised for pooling over days (significance)
    model_loss, model_hit = _losses(y_test, p_model), ((p_model >= 0.5) == (y_test == 1)).astype(float)
    for name, p, hit in (
        ("majority", p_major, (p_major >= 0.5) == (y_test == 1)),
        ("previous_sign", p_prev, (prev_up_test == 1) == (y_test == 1)),
    ):
        d_loss, d_hit = _losses(y_test, p) - model_loss, model_hit - hit.astype(float)
        out[f"{name}_loss_gain"], out[f"{name}_loss_gain_lrv"] = float(d_loss.mean()), long_run_variance(d_loss)
        out[f"{name}_hit_gain"], out[f"{name}_hit_gain_lrv"] = float(d_hit.mean()), long_run_variance(d_hit)
    return out


def pooled_significance(days: list[dict], alpha: float = 0.05) -> dict:
    """Over the days' `evaluate` results: per baseline, the pooled mean log-loss and accuracy gain of the model, their
    Diebold–Mariano statistics (per-day means weighted by bars, per-day Newey–West variances) and one-sided p-values;
    the days won on both losses (with a one-sided binomial sign test); `beats` when every gain is positive with
    p < alpha."""
    n = np.array([d["n_test"] for d in days], np.float64)
    out: dict = {"days": len(days), "bars": int(n.sum())}
    beats = True
    for base in ("majority", "previous_sign"):
        for kind in ("loss", "hit"):
            m = np.array([d[f"{base}_{kind}_gain"] for d in days])
            v = np.array([d[f"{base}_{kind}_gain_lrv"] for d in days])
            mean = float((n * m).sum() / n.sum())
            stat = mean / math.sqrt(max(float((n * v).sum()) / n.sum() ** 2, 1e-300))
            p = 1 - NormalDist().cdf(stat)
            out.update({f"{base}_{kind}_gain": mean, f"{base}_{kind}_dm": stat, f"{base}_{kind}_p_value": p})
            beats &= mean > 0 and p < alpha
    won = sum(d["model_log_loss"] < min(d["majority_log_loss"], d["previous_sign_log_loss"]) for d in days)
    out["days_won"] = int(won)
    out["sign_test_p_value"] = float(sum(math.comb(len(days), k) for k in range(won, len(days) + 1)) / 2 ** len(days))
    out["beats"] = bool(beats)
    return out


def coefficients(params: dict, x: np.ndarray) -> list[dict]:
    """The fitted logistic coefficients on the standardised features with standard errors from the Fisher
    information (Xᵀ W X)⁻¹, W = p(1 − p), and Wald z: which features carry the prediction, and how surely."""
    xs = np.c_[np.ones(len(x)), (x - params["mu"]) / params["sd"]]
    beta = np.r_[params["b"], params["w"]]
    p = 1 / (1 + np.exp(-(xs @ beta)))
    info = xs.T @ (xs * (p * (1 - p))[:, None])
    se = np.sqrt(np.diag(np.linalg.pinv(info)))
    return [
        {"feature": f, "coefficient": float(b), "std_error": float(s), "z": float(b / s) if s else 0.0}
        for f, b, s in zip(["intercept", *FEATURES], beta, se)
    ]


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict]:
    """Reliability: per equal-count bin of predicted probability, the mean prediction and the observed frequency."""
    order = np.argsort(p, kind="stable")
    return [
        {"predicted": float(p[idx].mean()), "observed": float(y[idx].mean()), "n": int(idx.size)}
        for idx in np.array_split(order, bins)
        if idx.size
    ]
