"""Market-data domain: the `market_data_feed` product (trades, level-1 quotes, 1-minute bars)."""
