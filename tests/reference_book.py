"""A plain order book, independent of nautilus_assets.market_data.orderbook: a {price: size} dict per side, one
delta at a time, the top n by sorting. The reference the order-book tests and bench/orderbook.py compare with."""

from __future__ import annotations


class DictBook:
    def __init__(self):
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}

    def apply(self, action: str, side: str, price: float, size: float) -> None:
        """One MBP delta; an operation on a level that is not there (or an ADD of one that is) raises."""
        if action == "CLEAR":
            self.bids.clear()
            self.asks.clear()
            return
        book = self.bids if side == "BUY" else self.asks
        if action == "ADD":
            if price in book:
                raise ValueError(f"ADD {side} {price}: level exists")
            book[price] = size
        elif action == "UPDATE":
            if price not in book:
                raise ValueError(f"UPDATE {side} {price}: no such level")
            book[price] = size
        elif action == "DELETE":
            del book[price]
        else:
            raise ValueError(f"action {action!r}")

    def depth(self, n: int = 10) -> tuple[list[float], list[float], list[float], list[float]]:
        """(bid prices, bid sizes, ask prices, ask sizes), best first, at most n levels each."""
        bids = sorted(self.bids.items(), reverse=True)[:n]
        asks = sorted(self.asks.items())[:n]
        return [p for p, _ in bids], [s for _, s in bids], [p for p, _ in asks], [s for _, s in asks]

    def best(self) -> tuple[float | None, float | None]:
        """(best bid, best ask) prices, None for an empty side."""
        return max(self.bids, default=None), min(self.asks, default=None)
