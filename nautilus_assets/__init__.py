"""Nautilus data products: one sub-package per domain; `definitions` composes them."""
