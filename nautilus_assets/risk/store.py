"""ClickHouse storage of the risk_metrics product: risk.risk_metrics, risk.var_components and risk.stress_results
declared once, and the product's SQL (its reads of the portfolio and daily-bar products too)."""

import time
from dataclasses import replace
from datetime import date

import pandas as pd

from nautilus_assets.market_data.daily import KEY as BARS_1D_KEY
from nautilus_assets.portfolio.daily import KEY as NAV_KEY
from nautilus_assets.tables import Column, Table
from resources.clickhouse import ClickHouseResource
from resources.postgres import PostgresResource

# exposures come from the positions the NAV asset stores beside the NAV (portfolio.daily_positions)
FROM_POSITIONS = ((NAV_KEY, "nav"), (BARS_1D_KEY, "close"))
DATE = Column("date", "Date", "Trading day")
PORTFOLIO = Column("portfolio_id", "LowCardinality(String)", "Model portfolio")
ROW = (
    Column("version", "UInt64", "Row version; the latest wins"),
    Column("run_id", "String", "Run that computed the row"),
)
BATCH_ID = Column("batch_id", "String", "The row's run (row provenance)", extra="ALIAS run_id")


def _risk(name: str, description: str, added: bool = False) -> Column:
    return Column(name, "Float64", description, FROM_POSITIONS, added=added)


METRICS = Table(
    "risk.risk_metrics",
    (
        DATE,
        PORTFOLIO,
        # added: the metrics grew over releases, ADD COLUMN brings an older table to the full set
        *(
            _risk(n, d, added=True)
            for n, d in (
                ("hist_var_99_1d", "Historical VaR 99%, 1 day: today's exposures revalued over the last 250 days"),
                ("hist_var_99_10d_scaled", "Historical VaR 99% scaled to 10 days by √10"),
                ("es_975_1d", "Historical expected shortfall 97.5%, 1 day"),
                ("es_975_10d_scaled", "Historical ES 97.5% scaled to 10 days by √10"),
                ("param_var_99_1d", "Parametric VaR 99%, 1 day: normal P&L with the exposures' mean and covariance"),
                ("param_es_975_1d", "Parametric ES 97.5%, 1 day"),
                (
                    "mc_var_99_1d",
                    "Monte Carlo VaR 99%, 1 day: mc_paths draws from the same normal, Cholesky-correlated",
                ),
                ("mc_es_975_1d", "Monte Carlo ES 97.5%, 1 day"),
                ("gross_exposure", "Σ |position × close| / NAV"),
            )
        ),
        Column("observations", "UInt32", "Days of returns in the window"),
        Column("mc_paths", "UInt32", "Monte Carlo draws (0: none)"),
        *ROW,
        Column("nav", "Float64", "The portfolio's NAV at the day's close", added=True),
        Column("mc_backend", "LowCardinality(String)", "Backend that drew the Monte Carlo paths", added=True),
        replace(BATCH_ID, added=True),
    ),
    "ENGINE = ReplacingMergeTree(version) ORDER BY (portfolio_id, date)",
)
COMPONENTS = Table(
    "risk.var_components",
    (
        DATE,
        PORTFOLIO,
        Column("instrument_id", "LowCardinality(String)", "Held instrument"),
        _risk("exposure", "position × close, currency"),
        _risk("marginal_var", "∂ parametric VaR / ∂ exposure (currency per currency)"),
        _risk("component_var", "Euler component of parametric VaR 99%, fraction of NAV (sums to the VaR)"),
        _risk("incremental_var", "Parametric VaR 99% minus the VaR without this instrument, fraction of NAV"),
        *ROW,
        BATCH_ID,
    ),
    "ENGINE = ReplacingMergeTree(version) ORDER BY (portfolio_id, date, instrument_id)",
)
STRESS = Table(
    "risk.stress_results",
    (
        DATE,
        PORTFOLIO,
        Column("scenario", "String", "historical_worst_<k> or a scenario of the YAML"),
        Column("kind", "LowCardinality(String)", "historical | user"),
        Column("scenario_date", "Nullable(Date)", "the historical day replayed (historical scenarios)", FROM_POSITIONS),
        _risk("pnl", "P&L of the end-of-day exposures under the scenario, currency"),
        _risk("pnl_fraction", "pnl / NAV"),
        *ROW,
        BATCH_ID,
    ),
    "ENGINE = ReplacingMergeTree(version) ORDER BY (portfolio_id, date, scenario)",
)
DDL = ["CREATE DATABASE IF NOT EXISTS risk", *METRICS.ddl(), *COMPONENTS.ddl(), *STRESS.ddl()]


def read_inputs(
    pg: PostgresResource, ch: ClickHouseResource, since: date, until: date
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """NAV by (date, portfolio), non-zero end-of-day exposures and the instruments' daily closes, from `since` to
    `until`."""
    with pg.connect() as conn:
        nav = pd.DataFrame(
            conn.execute(
                "SELECT date, portfolio_id, nav FROM portfolio.daily_nav WHERE date BETWEEN %s AND %s", (since, until)
            ).fetchall(),
            columns=["date", "portfolio_id", "nav"],
        )
        pos = pd.DataFrame(
            conn.execute(
                "SELECT date, portfolio_id, instrument_id, position * close "
                "FROM portfolio.daily_positions WHERE date BETWEEN %s AND %s "
                "AND position <> 0",
                (since, until),
            ).fetchall(),
            columns=["date", "portfolio_id", "instrument_id", "exposure"],
        )
    closes = ch.query_df(
        "SELECT date, instrument_id, close FROM market_data.bars_1d FINAL WHERE date BETWEEN %(a)s AND %(b)s",
        parameters={"a": since, "b": until},
    )
    return nav, pos, closes


def replace_days(ch: ClickHouseResource, table: Table, rows: list[dict], days: list[date], run_id: str) -> None:
    """Replace the days whole (a row no longer computed, e.g. an instrument sold, must not survive)."""
    with ch.session() as c:
        c.command(f"DELETE FROM {table.name} WHERE date IN %(days)s", parameters={"days": days})
        if rows:
            c.insert_df(table.name, pd.DataFrame(rows).assign(version=time.time_ns(), run_id=run_id))
