"""Microstructure domain: the `market_microstructure` product (VPIN, order-flow toxicity)."""
