"""End-of-day NAV per model portfolio (partitioned by UTC trading date): all fills up to the day's end, marked to
the day's closing price (daily bars), in PostgreSQL `portfolio.daily_nav` and `portfolio.daily_positions`."""

from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

import dagster as dg
import pandas as pd

from nautilus_assets.market_data.daily import KEY as BARS_1D_KEY
from nautilus_assets.product import END_OF_DAY, TRADING_DAYS
from resources.clickhouse import ClickHouseResource
from resources.postgres import PostgresResource

from . import store
from .accounting import Portfolio
from .assets import FILLS_SPEC, PRODUCT
from .models import PORTFOLIOS

KEY = dg.AssetKey(["portfolio_states", "daily_nav"])


def _end_ns(d: date) -> int:
    return int(datetime.combine(d + timedelta(days=1), dtime(), UTC).timestamp() * 1e9)


def eod_states(fills: list[tuple], closes: pd.DataFrame, days: list[date]) -> tuple[list[dict], list[dict]]:
    """(NAV rows, position rows) at the end of each day in `days` (consecutive, ascending), plus the day before the
    first for the first day's P&L. `fills`: (ts_event, portfolio, instrument, qty, price, fee) sorted by time;
    `closes`: date × instrument closing prices."""
    books, last_price, i = {}, {}, 0
    navs, positions, prev = [], [], {}
    for d in [days[0] - timedelta(days=1), *days]:
        end = _end_ns(d)
        while i < len(fills) and fills[i][0] < end:
            _, pf, inst, qty, price, fee = fills[i]
            books.setdefault(pf, Portfolio(PORTFOLIOS.get(pf, 1_000_000.0))).fill(inst, qty, price, fee)
            last_price[inst] = price
            i += 1
        known = closes[closes.index <= pd.Timestamp(d)]
        marks = {**last_price, **(known.ffill().iloc[-1].dropna().to_dict() if len(known) else {})}
        for pf, book in sorted(books.items()):
            nav = book.nav(marks)
            if d >= days[0]:
                p = prev.get(pf)
                navs.append(
                    {
                        "date": d,
                        "portfolio_id": pf,
                        "nav": nav,
                        "daily_pnl": None if p is None else nav - p,
                        "daily_return": None if not p else (nav - p) / p,
                    }
                )
                positions += [
                    {
                        "date": d,
                        "portfolio_id": pf,
                        "instrument_id": inst,
                        "position": pos.quantity,
                        "close": marks.get(inst),
                    }
                    for inst, pos in sorted(book.positions.items())
                ]
            prev[pf] = nav
    return navs, positions


@dg.asset(
    key=KEY,
    deps=[BARS_1D_KEY, FILLS_SPEC],
    partitions_def=TRADING_DAYS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name=PRODUCT.group,
    owners=list(PRODUCT.owners),
    kinds={"postgres", "python"},
    code_version="1",
    pool="postgres",
    freshness_policy=END_OF_DAY,
    automation_condition=dg.AutomationCondition.eager().ignore(dg.AssetSelection.assets(FILLS_SPEC.key)),
    description="End-of-day NAV, P&L and return per model portfolio (daily P&L / previous day's NAV), and "
    "the positions behind it, in PostgreSQL portfolio.daily_nav / portfolio.daily_positions.",
    check_specs=[
        dg.AssetCheckSpec(
            "every_portfolio_every_day",
            asset=KEY,
            description="A portfolio that has traded has a NAV row for every later day",
        )
    ],
    metadata=PRODUCT.stored_in(store.DAILY_NAV),
)
def daily_nav(context: dg.AssetExecutionContext, postgres: PostgresResource, clickhouse: ClickHouseResource):
    days = [date.fromisoformat(k) for k in context.partition_keys]
    closes = store.daily_closes(clickhouse, days[-1])
    with postgres.connect() as conn:
        navs, positions = eod_states(store.fills_before(conn, _end_ns(days[-1])), closes, days)
        store.replace_days(conn, days, navs, positions, context.run.run_id)
        conn.commit()
    yield dg.MaterializeResult(
        metadata={"days": len(days), "nav_rows": len(navs), "dagster/column_lineage": store.DAILY_NAV.lineage}
    )
    seen, missing = set(), 0
    for d in days:  # once a portfolio has traded it has a NAV every later day
        today = {r["portfolio_id"] for r in navs if r["date"] == d}
        missing += len(seen - today)
        seen |= today
    yield dg.AssetCheckResult(
        check_name="every_portfolio_every_day",
        passed=missing == 0,
        metadata={"portfolios": len(seen), "days": len(days), "missing_rows": missing},
    )


DAILY_ASSETS = [daily_nav]
