"""Average-cost accounting against hand-computed examples: re-averaging, partial closes, flips, shorts, fees."""

import pytest

from nautilus_assets.portfolio.accounting import Portfolio, Position, apply_fill


def test_buys_reaverage_and_a_partial_close_realizes():
    p = apply_fill(Position(), 100, 10.0, fee=1.0)  # long 100 @ 10
    p = apply_fill(p, 50, 13.0, fee=1.0)  # long 150 @ (1000 + 650) / 150 = 11
    assert (p.quantity, p.avg_cost, p.realized_pnl, p.fees) == (150, pytest.approx(11.0), 0.0, 2.0)
    p = apply_fill(p, -60, 12.5, fee=0.5)  # close 60: (12.5 - 11) * 60 = 90
    assert (p.quantity, p.avg_cost, p.realized_pnl, p.fees) == (90, pytest.approx(11.0), pytest.approx(90.0), 2.5)
    assert p.unrealized(12.0) == pytest.approx(90 * 1.0)


def test_flip_closes_everything_then_opens_the_rest_at_the_fill_price():
    p = apply_fill(Position(), 100, 10.0)
    p = apply_fill(p, -150, 9.0)  # realize (9 - 10) * 100 = -100, then short 50 @ 9
    assert (p.quantity, p.avg_cost, p.realized_pnl) == (-50, 9.0, pytest.approx(-100.0))
    p = apply_fill(p, -50, 8.0)  # short 100 @ 8.5
    assert (p.quantity, p.avg_cost) == (-100, pytest.approx(8.5))
    p = apply_fill(p, 40, 7.5)  # cover 40: (8.5 - 7.5) * 40 = +40
    assert (p.quantity, p.realized_pnl) == (-60, pytest.approx(-60.0))
    assert p.unrealized(9.5) == pytest.approx(-60 * (9.5 - 8.5))
    p = apply_fill(p, 60, 8.0)  # flat: (8.5 - 8) * 60 = +30
    assert (p.quantity, p.avg_cost, p.realized_pnl) == (0, 0.0, pytest.approx(-30.0))


def test_cash_and_nav_reconcile_with_pnl_and_fees():
    pf = Portfolio(initial_cash=10_000)
    pf.fill("A", 100, 10.0, fee=2.0)  # cash 10000 - 1000 - 2 = 8998
    pf.fill("B", -20, 50.0, fee=1.0)  # cash 8998 + 1000 - 1 = 9997
    pf.fill("A", -40, 12.0, fee=1.0)  # cash 9997 + 480 - 1 = 10476; realized A 80
    marks = {"A": 11.0, "B": 45.0}
    assert pf.cash == pytest.approx(10_476.0)
    nav = pf.nav(marks)  # 10476 + 60·11 − 20·45 = 10236
    assert nav == pytest.approx(10_236.0)
    rows = {r["instrument_id"]: r for r in pf.rows(marks)}
    realized = sum(r["realized_pnl"] for r in rows.values())
    unrealized = sum(r["unrealized_pnl"] for r in rows.values())
    fees = sum(r["fees"] for r in rows.values())
    assert (realized, unrealized, fees) == (pytest.approx(80.0), pytest.approx(60.0 + 100.0), 4.0)
    assert nav - pf.initial_cash == pytest.approx(realized + unrealized - fees)


def test_zero_quantity_fill_is_an_error():
    with pytest.raises(ValueError):
        apply_fill(Position(), 0, 1.0)
