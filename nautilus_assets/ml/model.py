"""Features, an MLX logistic regression, and honest baselines (pure: no I/O).

Label: whether the next 1-minute bar of the same instrument closes higher. Features come only from the
analytics and microstructure products at the bar itself (no look-ahead)."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pandas as pd

FEATURES = ["rsi", "macd_hist", "bb_position", "sma_gap", "atr_ratio", "vwap_gap", "ret_1", "vpin", "order_imbalance"]


def features(df: pd.DataFrame) -> pd.DataFrame:
    """From indicator rows (+ vpin, order_imbalance as of the bar) sorted by instrument, minute: features and label."""
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
    out["vpin"] = df["vpin"].fillna(0.0)
    out["order_imbalance"] = df["order_imbalance"].fillna(0.0)
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
    return {"w": np.array(model.linear.weight).ravel(), "b": float(np.array(model.linear.bias)[0]),
            "mu": mu, "sd": sd, "train_loss": float(loss)}


def predict_proba(params: dict, x: np.ndarray) -> np.ndarray:
    z = ((x - params["mu"]) / params["sd"]) @ params["w"] + params["b"]
    return 1 / (1 + np.exp(-z))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


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
    return {"n_test": int(len(y_test)), "model_accuracy": acc(p_model), "model_log_loss": log_loss(y_test, p_model),
            "majority_accuracy": acc(p_major), "majority_log_loss": log_loss(y_test, p_major),
            "previous_sign_accuracy": float(np.mean((prev_up_test == 1) == (y_test == 1))),
            "previous_sign_log_loss": log_loss(y_test, p_prev)}
