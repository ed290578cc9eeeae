"""Risk domain: the `risk_metrics` product (VaR, expected shortfall, backtests)."""
