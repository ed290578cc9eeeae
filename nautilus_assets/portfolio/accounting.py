"""Average-cost position accounting (pure: no I/O).

A fill on the position's side re-averages the cost; an opposite fill closes up to the position and realizes
(fill − average cost) · closed quantity (sign-aware); a flip closes the whole position, then opens the rest at
the fill price. Fees accumulate separately; cash pays for fills and fees. NAV = cash + Σ position · mark, so
NAV − initial cash = realized + unrealized − fees.
"""

import math
from dataclasses import dataclass, field


@dataclass
class Position:
    quantity: float = 0.0  # signed: > 0 long, < 0 short
    avg_cost: float = 0.0
    realized_pnl: float = 0.0
    fees: float = 0.0

    def unrealized(self, mark: float) -> float:
        return self.quantity * (mark - self.avg_cost) if self.quantity else 0.0


def apply_fill(pos: Position, quantity: float, price: float, fee: float = 0.0) -> Position:
    """The position after a fill of signed `quantity` (> 0 buy, < 0 sell) at `price`."""
    if quantity == 0:
        raise ValueError("a fill has a non-zero quantity")
    q, out = pos.quantity, Position(pos.quantity, pos.avg_cost, pos.realized_pnl, pos.fees + fee)
    if q == 0 or math.copysign(1, q) == math.copysign(1, quantity):
        out.quantity = q + quantity
        out.avg_cost = (abs(q) * pos.avg_cost + abs(quantity) * price) / abs(out.quantity)
        return out
    closed = min(abs(quantity), abs(q))
    out.realized_pnl += closed * (price - pos.avg_cost) * math.copysign(1, q)
    rest = abs(quantity) - closed
    if rest > 0:  # flip: open the remainder at the fill price
        out.quantity, out.avg_cost = math.copysign(rest, quantity), price
    else:
        out.quantity = q + quantity
        out.avg_cost = pos.avg_cost if out.quantity else 0.0
    return out


@dataclass
class Portfolio:
    initial_cash: float
    cash: float = field(default=math.nan)
    positions: dict = field(default_factory=dict)  # instrument -> Position

    def __post_init__(self):
        if math.isnan(self.cash):
            self.cash = self.initial_cash

    def fill(self, instrument: str, quantity: float, price: float, fee: float = 0.0) -> None:
        self.positions[instrument] = apply_fill(self.positions.get(instrument, Position()), quantity, price, fee)
        self.cash -= quantity * price + fee

    def nav(self, marks: dict) -> float:
        return self.cash + sum(p.quantity * marks[i] for i, p in self.positions.items() if p.quantity)

    def rows(self, marks: dict) -> list[dict]:
        """Per instrument: position, average cost, realized and unrealized P&L, fees, cash and NAV."""
        nav = self.nav(marks)
        return [
            {
                "instrument_id": i,
                "position": p.quantity,
                "avg_cost": p.avg_cost,
                "realized_pnl": p.realized_pnl,
                "unrealized_pnl": p.unrealized(marks[i]) if p.quantity else 0.0,
                "fees": p.fees,
                "mark_price": marks.get(i, math.nan),
                "cash": self.cash,
                "nav": nav,
            }
            for i, p in sorted(self.positions.items())
        ]
