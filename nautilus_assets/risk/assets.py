"""The `risk_metrics` product: per portfolio and trading day, historical VaR 99% and ES 97.5% over the last 250
daily returns (1-day, and 10-day scaled by √10), parametric VaR 99% and MLX Monte Carlo VaR 99% (1-day), in
ClickHouse `risk.risk_metrics`; the VaR backtest (Kupiec, Basel zone) is an asset check."""
import time
from datetime import date, timedelta

import dagster as dg
import pandas as pd

from nautilus_assets.market_data.daily import KEY as BARS_1D_KEY
from nautilus_assets.portfolio.daily import KEY as NAV_KEY, daily_closes
from nautilus_assets.product import TRADING_DAYS, Product
from resources.clickhouse import ClickHouseResource
from resources.postgres import PostgresResource
from resources.pulsar import PulsarResource

from .measures import backtest, expected_shortfall, historical_var, parametric_var, scale_to_horizon
from .montecarlo import monte_carlo_var

PRODUCT = Product("risk_metrics", "risk", ("team:risk",), "risk-metrics", fail_after=timedelta(minutes=5),
                  warn_after=timedelta(minutes=2), latency_target_ms=1, availability_target=0.9999)
KEY = dg.AssetKey(["risk_metrics", "daily"])
WINDOW, PATHS = 250, 100_000
COLUMNS = [("hist_var_99_1d", "Historical VaR 99%, 1 day, fraction of NAV"),
           ("hist_var_99_10d_scaled", "Historical VaR 99% scaled to 10 days by √10"),
           ("es_975_1d", "Expected shortfall 97.5%, 1 day"), ("es_975_10d_scaled", "ES 97.5% scaled to 10 days by √10"),
           ("param_var_99_1d", "Parametric (normal) VaR 99%, 1 day"),
           ("mc_var_99_1d", f"Monte Carlo VaR 99%, 1 day, {PATHS:,} MLX paths, Cholesky-correlated instruments")]
DDL = ["CREATE DATABASE IF NOT EXISTS risk",
       "CREATE TABLE IF NOT EXISTS risk.risk_metrics (date Date, portfolio_id LowCardinality(String), "
       + ", ".join(f"{n} Float64" for n, _ in COLUMNS) +
       ", observations UInt32, mc_paths UInt32, version UInt64, run_id String) "
       "ENGINE = ReplacingMergeTree(version) ORDER BY (portfolio_id, date)",
       "ALTER TABLE risk.risk_metrics ADD COLUMN IF NOT EXISTS batch_id String ALIAS run_id"]  # row provenance


def load_inputs(pg: PostgresResource, ch: ClickHouseResource, until: date):
    """Daily returns (date × portfolio), NAVs by (date, portfolio), positions, and instruments' daily returns."""
    with pg.connect() as conn:
        nav = pd.DataFrame(conn.execute("SELECT date, portfolio_id, daily_return, nav FROM portfolio.daily_nav "
                                        "WHERE date <= %s ORDER BY date", (until,)).fetchall(),
                           columns=["date", "portfolio_id", "r", "nav"])
        pos = pd.DataFrame(conn.execute("SELECT date, portfolio_id, instrument_id, position, close "
                                        "FROM portfolio.daily_positions WHERE date <= %s", (until,)).fetchall(),
                           columns=["date", "portfolio_id", "instrument_id", "position", "close"])
    returns = nav.pivot(index="date", columns="portfolio_id", values="r").sort_index() if len(nav) else pd.DataFrame()
    closes = daily_closes(ch, until)
    navs = {(d, pf): v for d, pf, v in zip(nav["date"], nav["portfolio_id"], nav["nav"])}
    return returns, navs, pos, closes.pct_change() if len(closes) else closes


def metrics_for(day: date, pf: str, returns: pd.DataFrame, navs: dict, pos: pd.DataFrame,
                inst_returns: pd.DataFrame) -> dict | None:
    r = returns.loc[returns.index <= day, pf].dropna().to_numpy()[-WINDOW:]
    if r.size < WINDOW:
        return None
    hv, es = historical_var(r, 0.99), expected_shortfall(r, 0.975)
    row = {"date": day, "portfolio_id": pf, "hist_var_99_1d": hv, "hist_var_99_10d_scaled": scale_to_horizon(hv),
           "es_975_1d": es, "es_975_10d_scaled": scale_to_horizon(es), "param_var_99_1d": parametric_var(r, 0.99),
           "observations": int(r.size), "mc_var_99_1d": float("nan"), "mc_paths": 0}
    p = pos[(pos["date"] == day) & (pos["portfolio_id"] == pf) & (pos["position"] != 0)]
    hist = inst_returns.loc[inst_returns.index <= pd.Timestamp(day), list(p["instrument_id"])].dropna().iloc[-WINDOW:]
    if len(p) and len(hist) >= 30:
        exposures = (p["position"] * p["close"]).to_numpy()
        row["mc_var_99_1d"] = monte_carlo_var(exposures, hist.to_numpy(), navs[(day, pf)], 0.99, PATHS,
                                              seed=day.toordinal())
        row["mc_paths"] = PATHS
    return row


@dg.asset(key=KEY, deps=[NAV_KEY, BARS_1D_KEY], partitions_def=TRADING_DAYS,
          backfill_policy=dg.BackfillPolicy.single_run(), group_name=PRODUCT.group, owners=list(PRODUCT.owners),
          kinds={"clickhouse", "mlx", "python"}, code_version="1", pool="mlx", freshness_policy=PRODUCT.freshness,
          automation_condition=dg.AutomationCondition.eager(),
          description="Per model portfolio and day: historical VaR 99% and ES 97.5% over the last 250 daily "
                      "returns (1-day; 10-day scaled by √10), parametric VaR 99% and Monte Carlo VaR 99% (MLX, "
                      f"{PATHS:,} paths) in ClickHouse risk.risk_metrics. Results are positive loss fractions of NAV.",
          metadata={"dagster/table_name": "risk.risk_metrics", **PRODUCT.metadata,
                    "dagster/column_schema": dg.TableSchema(columns=[
                        dg.TableColumn("date", "Date"), dg.TableColumn("portfolio_id", "String"),
                        *[dg.TableColumn(n, "Float64", description=d) for n, d in COLUMNS]])},
          check_specs=[dg.AssetCheckSpec("var_backtest", asset=KEY, description=(
              "1-day 99% historical VaR from the previous 250 days vs the next day's return, over the last 250 "
              "days: exceptions, Kupiec LR and p-value, Basel zone (warn on yellow, fail on red)"))])
def risk_metrics(context: dg.AssetExecutionContext, postgres: PostgresResource, clickhouse: ClickHouseResource,
                 pulsar: PulsarResource):
    days = [date.fromisoformat(k) for k in context.partition_keys]
    # the portfolio product, read as the risk role (a declared reader of portfolio: resources/access.py)
    returns, navs, pos, inst_returns = load_inputs(postgres.as_role("risk"), clickhouse, days[-1])
    rows = [m for d in days for pf in returns.columns if (m := metrics_for(d, pf, returns, navs, pos, inst_returns))]
    clickhouse.ensure(DDL)
    if rows:
        with clickhouse.session() as c:
            c.insert_df("risk.risk_metrics", pd.DataFrame(rows).assign(version=time.time_ns(), run_id=context.run.run_id))
    ret = [dg.TableColumnDep(asset_key=NAV_KEY, column_name="daily_return")]
    mc = [dg.TableColumnDep(asset_key=NAV_KEY, column_name="nav"), dg.TableColumnDep(asset_key=BARS_1D_KEY,
                                                                                     column_name="close")]
    lineage = dg.TableColumnLineage(deps_by_column={n: mc if n.startswith("mc_") else ret for n, _ in COLUMNS})
    yield dg.MaterializeResult(metadata={"days": len(days), "rows": len(rows), "portfolios": len(returns.columns),
                                         "dagster/column_lineage": lineage})
    results, zones = {}, []
    for pf in returns.columns:
        r = returns.loc[returns.index <= days[-1], pf].dropna().to_numpy()
        if r.size >= 2 * WINDOW:
            bt = backtest(r, WINDOW, 0.99, WINDOW)
            results[pf] = bt
            zones.append(bt["zone"])
    if not results:
        yield dg.AssetCheckResult(check_name="var_backtest", passed=False, severity=dg.AssetCheckSeverity.WARN,
                                  metadata={"reason": f"needs {2 * WINDOW} daily returns per portfolio"})
    else:
        worst = "red" if "red" in zones else "yellow" if "yellow" in zones else "green"
        meta = {f"{pf}_{k}": v for pf, bt in results.items() for k, v in bt.items()}
        yield dg.AssetCheckResult(check_name="var_backtest", passed=worst == "green", metadata={**meta, "zone": worst},
                                  severity=dg.AssetCheckSeverity.ERROR if worst == "red" else dg.AssetCheckSeverity.WARN)
    PRODUCT.announce(pulsar, KEY, context.run.run_id, days=[str(d) for d in days], rows=len(rows))


ASSETS = [risk_metrics]
