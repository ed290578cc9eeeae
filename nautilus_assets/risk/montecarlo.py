"""Monte Carlo VaR with MLX: correlated instrument returns through a Cholesky factor of their covariance.
MLX factorises on the CPU stream (its GPU backends have no Cholesky); the simulation runs on MLX's default
device, so the same code uses a GPU where MLX has one."""
import mlx.core as mx
import numpy as np


def monte_carlo_var(exposures: np.ndarray, returns: np.ndarray, nav: float, level: float = 0.99,
                    paths: int = 100_000, seed: int = 0) -> float:
    """1-day VaR as a fraction of NAV (positive loss) for currency `exposures` per instrument, simulating
    `paths` draws of instrument returns ~ N(mean, cov) estimated from `returns` (days × instruments)."""
    returns = np.atleast_2d(np.asarray(returns, np.float64))
    mean = returns.mean(axis=0)
    cov = np.atleast_2d(np.cov(returns, rowvar=False)) + 1e-18 * np.eye(returns.shape[1])
    chol = mx.linalg.cholesky(mx.array(cov, dtype=mx.float32), stream=mx.cpu)
    z = mx.random.normal((paths, returns.shape[1]), key=mx.random.key(seed))
    sims = z @ chol.T + mx.array(mean, dtype=mx.float32)
    pnl = sims @ mx.array(np.asarray(exposures, np.float64), dtype=mx.float32)
    return float(-np.quantile(np.array(pnl, dtype=np.float64), 1 - level) / nav)


def monte_carlo_var_numpy(exposures, returns, nav, level=0.99, paths=100_000, seed=0) -> float:
    """The same estimator in NumPy (baseline for bench/compute.py and an independent check)."""
    returns = np.atleast_2d(np.asarray(returns, np.float64))
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(np.atleast_2d(np.cov(returns, rowvar=False)))
    sims = rng.standard_normal((paths, returns.shape[1])) @ chol.T + returns.mean(axis=0)
    return float(-np.quantile(sims @ np.asarray(exposures, np.float64), 1 - level) / nav)
