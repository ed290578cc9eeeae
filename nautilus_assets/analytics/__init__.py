"""Analytics domain: the `market_analytics` product (TA-Lib technical indicators over 1-minute bars)."""
