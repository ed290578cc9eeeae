"""Monte Carlo P&L: correlated instrument returns ~ N(mean, cov) through a Cholesky factor, one set of scenarios
shared by every portfolio (P&L = scenarios @ exposuresᵀ), in NumPy or MLX.

`backend()` is the one place that chooses: MLX where it has a GPU (Metal or CUDA), NumPy on a CPU, where
bench/compute.py measures MLX slower (its CPU backend draws and multiplies in float32 without NumPy's BLAS
threading). MLX factorises on the CPU stream (its GPU backends have no Cholesky); the simulation runs on its
default device. `NAUTILUS_MC_BACKEND` (resources/settings.py) overrides the choice.
"""

import functools

import mlx.core as mx
import numpy as np

from resources.settings import load

BACKENDS = ("numpy", "mlx")


@functools.cache
def backend() -> str:
    """The Monte Carlo backend for this machine: the setting, else MLX on a GPU, else NumPy."""
    chosen = load().mc_backend
    if chosen:
        return chosen
    return "mlx" if mx.default_device().type == mx.DeviceType.gpu else "numpy"


def scenarios(
    mean: np.ndarray, cov: np.ndarray, paths: int = 100_000, seed: int = 0, backend_name: str | None = None
) -> np.ndarray:
    """paths × n simulated 1-day instrument returns ~ N(mean, cov), shared by every portfolio."""
    mean = np.atleast_1d(mean)
    cov = np.atleast_2d(cov) + 1e-18 * np.eye(mean.size)  # positive definite where a variance is 0
    name = backend_name or backend()
    if name == "numpy":
        z = np.random.default_rng(seed).standard_normal((paths, mean.size))
        return z @ np.linalg.cholesky(cov).T + mean
    if name != "mlx":
        raise ValueError(f"Monte Carlo backend {name!r}: one of {BACKENDS}")
    chol = mx.linalg.cholesky(mx.array(cov, dtype=mx.float32), stream=mx.cpu)
    z = mx.random.normal((paths, mean.size), key=mx.random.key(seed))
    return np.array(z @ chol.T + mx.array(mean, dtype=mx.float32), dtype=np.float64)


def monte_carlo_var(
    exposures: np.ndarray,
    returns: np.ndarray,
    nav: float,
    level: float = 0.99,
    paths: int = 100_000,
    seed: int = 0,
    backend_name: str | None = None,
) -> float:
    """1-day VaR as a fraction of NAV (positive loss) of one portfolio's currency `exposures`, simulating `paths`
    draws of instrument returns ~ N(mean, cov) estimated from `returns` (days × instruments)."""
    returns = np.atleast_2d(np.asarray(returns, np.float64))
    sims = scenarios(returns.mean(axis=0), np.cov(returns, rowvar=False), paths, seed, backend_name)
    return float(-np.quantile(sims @ np.asarray(exposures, np.float64), 1 - level) / nav)
