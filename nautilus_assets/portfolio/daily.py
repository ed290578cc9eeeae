"""End-of-day NAV per model portfolio (partitioned by UTC trading date): all fills up to the day's end, marked to
the day's closing price (daily bars), in PostgreSQL `portfolio.daily_nav` and `portfolio.daily_positions`."""
from datetime import date, datetime, time as dtime, timedelta, timezone

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
DDL = """
CREATE TABLE IF NOT EXISTS portfolio.daily_nav (date date, portfolio_id text, nav double precision,
  daily_pnl double precision, daily_return double precision, run_id text, PRIMARY KEY (date, portfolio_id));
CREATE TABLE IF NOT EXISTS portfolio.daily_positions (date date, portfolio_id text, instrument_id text,
  position double precision, close double precision, PRIMARY KEY (date, portfolio_id, instrument_id));
"""


def _end_ns(d: date) -> int:
    return int(datetime.combine(d + timedelta(days=1), dtime(), timezone.utc).timestamp() * 1e9)


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
                navs.append({"date": d, "portfolio_id": pf, "nav": nav, "daily_pnl": None if p is None else nav - p,
                             "daily_return": None if not p else (nav - p) / p})
                positions += [{"date": d, "portfolio_id": pf, "instrument_id": inst, "position": pos.quantity,
                               "close": marks.get(inst)} for inst, pos in sorted(book.positions.items())]
            prev[pf] = nav
    return navs, positions


def daily_closes(ch: ClickHouseResource, until: date) -> pd.DataFrame:
    df = ch.query_df("SELECT date, instrument_id, close FROM market_data.bars_1d FINAL WHERE date <= %(d)s",
                     parameters={"d": until})
    if df.empty:
        return pd.DataFrame()
    df["date"] = pd.to_datetime(df["date"])
    return df.pivot(index="date", columns="instrument_id", values="close").sort_index()


@dg.asset(key=KEY, deps=[BARS_1D_KEY, FILLS_SPEC], partitions_def=TRADING_DAYS,
          backfill_policy=dg.BackfillPolicy.single_run(), group_name=PRODUCT.group, owners=list(PRODUCT.owners),
          kinds={"postgres", "python"}, code_version="1", pool="postgres", freshness_policy=END_OF_DAY,
          automation_condition=dg.AutomationCondition.eager().ignore(dg.AssetSelection.assets(FILLS_SPEC.key)),
          description="End-of-day NAV, P&L and return per model portfolio (daily P&L / previous day's NAV), and "
                      "the positions behind it, in PostgreSQL portfolio.daily_nav / portfolio.daily_positions.",
          check_specs=[dg.AssetCheckSpec("every_portfolio_every_day", asset=KEY,
                                         description="A portfolio that has traded has a NAV row for every later day")],
          metadata={"dagster/table_name": "portfolio.daily_nav", **PRODUCT.metadata, "dagster/column_schema":
                    dg.TableSchema(columns=[dg.TableColumn("date", "date"), dg.TableColumn("portfolio_id", "text"),
                                            dg.TableColumn("nav", "double precision"),
                                            dg.TableColumn("daily_pnl", "double precision"),
                                            dg.TableColumn("daily_return", "double precision")])})
def daily_nav(context: dg.AssetExecutionContext, postgres: PostgresResource, clickhouse: ClickHouseResource):
    days = [date.fromisoformat(k) for k in context.partition_keys]
    closes = daily_closes(clickhouse, days[-1])
    with postgres.connect() as conn:
        store.ensure_schema(conn)
        conn.execute(DDL)
        fills = conn.execute("SELECT ts_event, portfolio_id, instrument_id, quantity, price, fee FROM portfolio.fills "
                             "WHERE ts_event < %s ORDER BY ts_event, fill_id", (_end_ns(days[-1]),)).fetchall()
        navs, positions = eod_states(fills, closes, days)
        with conn.cursor() as cur:   # the days are replaced whole: a position gone since must not stay behind
            cur.execute("DELETE FROM portfolio.daily_positions WHERE date = ANY(%s)", (days,))
            cur.execute("DELETE FROM portfolio.daily_nav WHERE date = ANY(%s)", (days,))
            cur.executemany("INSERT INTO portfolio.daily_nav VALUES (%(date)s, %(portfolio_id)s, %(nav)s, "
                            "%(daily_pnl)s, %(daily_return)s, %(run_id)s) ON CONFLICT (date, portfolio_id) DO UPDATE "
                            "SET nav = EXCLUDED.nav, daily_pnl = EXCLUDED.daily_pnl, "
                            "daily_return = EXCLUDED.daily_return, run_id = EXCLUDED.run_id",
                            [{**r, "run_id": context.run.run_id} for r in navs])
            cur.executemany("INSERT INTO portfolio.daily_positions VALUES (%(date)s, %(portfolio_id)s, "
                            "%(instrument_id)s, %(position)s, %(close)s) ON CONFLICT (date, portfolio_id, instrument_id) "
                            "DO UPDATE SET position = EXCLUDED.position, close = EXCLUDED.close", positions)
        conn.commit()
    fill = lambda *cols: [dg.TableColumnDep(asset_key=FILLS_SPEC.key, column_name=c) for c in cols]  # noqa: E731
    close = [dg.TableColumnDep(asset_key=BARS_1D_KEY, column_name="close")]
    yield dg.MaterializeResult(metadata={"days": len(days), "nav_rows": len(navs), "dagster/column_lineage":
                                         dg.TableColumnLineage(deps_by_column={
                                             "nav": fill("quantity", "price", "fee") + close,
                                             "daily_pnl": fill("quantity", "price", "fee") + close,
                                             "daily_return": fill("quantity", "price", "fee") + close})})
    seen, missing = set(), 0
    for d in days:                       # once a portfolio has traded it has a NAV every later day
        today = {r["portfolio_id"] for r in navs if r["date"] == d}
        missing += len(seen - today)
        seen |= today
    yield dg.AssetCheckResult(check_name="every_portfolio_every_day", passed=missing == 0,
                              metadata={"portfolios": len(seen), "days": len(days), "missing_rows": missing})


DAILY_ASSETS = [daily_nav]
