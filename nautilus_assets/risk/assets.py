"""The `risk_metrics` product: per model portfolio and trading day, the 1-day risk of its end-of-day positions
(positions.py: historical full revaluation, parametric and Monte Carlo VaR 99% / ES 97.5% over the last 250 days of
the instruments' returns) in ClickHouse risk.risk_metrics; Euler component, marginal and incremental VaR per
instrument in risk.var_components; the worst historical days and user-defined shocks in risk.stress_results. The
VaR backtest (Kupiec, Christoffersen, Basel zone) of the same positions-based VaR is an asset check."""

import itertools
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import yaml

from nautilus_assets.market_data.daily import KEY as BARS_1D_KEY
from nautilus_assets.portfolio.daily import KEY as NAV_KEY
from nautilus_assets.product import TRADING_DAYS, Product, png_markdown
from nautilus_assets.tables import Table
from resources.clickhouse import ClickHouseResource
from resources.postgres import PostgresResource
from resources.pulsar import PulsarResource
from resources.settings import load

from . import store
from .measures import evaluate_backtest, scale_to_horizon
from .montecarlo import backend
from .positions import position_risk, shock_pnl, worst_days

PRODUCT = Product(
    "risk_metrics",
    "risk",
    ("team:risk",),
    "risk-metrics",
    fail_after=timedelta(minutes=5),
    warn_after=timedelta(minutes=2),
    latency_target_ms=1,
    availability_target=0.9999,
)
KEY = dg.AssetKey(["risk_metrics", "daily"])
COMPONENTS_KEY = dg.AssetKey(["risk_metrics", "var_components"])
STRESS_KEY = dg.AssetKey(["risk_metrics", "stress_results"])
KEYS = (KEY, COMPONENTS_KEY, STRESS_KEY)  # materialized together (one multi-asset: selections take all three)
WINDOW, BACKTEST_DAYS, PATHS, WORST = 250, 250, 100_000, 5
CODE_VERSION = "2"  # 2: positions-based (1 was the portfolio's own NAV returns)


# ---- inputs (I/O) -------------------------------------------------------------------------------------------
def load_inputs(pg: PostgresResource, ch: ClickHouseResource, first: date, until: date):
    """NAV by (date, portfolio), non-zero end-of-day positions with their closes, and the instruments' daily simple
    returns: only the span the window and the backtest need before `first` (not the whole history)."""
    since = first - timedelta(days=2 * (WINDOW + BACKTEST_DAYS))
    nav, pos, closes = store.read_inputs(pg, ch, since, until)
    returns = pd.DataFrame()
    if len(closes):
        closes["date"] = pd.to_datetime(closes["date"]).dt.date
        returns = closes.pivot(index="date", columns="instrument_id", values="close").sort_index().pct_change()
    navs = {(d, pf): v for d, pf, v in zip(nav["date"], nav["portfolio_id"], nav["nav"])}
    return navs, pos, returns


def scenarios() -> list[dict]:
    with open(load().stress_scenarios) as f:
        out = yaml.safe_load(f)["scenarios"]
    for s in out:
        if not s.get("name") or not isinstance(s.get("shocks"), dict):
            raise ValueError(f"stress scenario {s!r}: needs a name and a mapping of shocks")
    return out


# ---- computations (pure) ------------------------------------------------------------------------------------
def exposures_on(pos: pd.DataFrame, day: date) -> pd.DataFrame:
    """portfolio × instrument exposures at the close of `day` (0 where not held)."""
    p = pos[pos["date"] == day]
    return p.pivot_table(
        index="portfolio_id", columns="instrument_id", values="exposure", aggfunc="sum", fill_value=0.0
    ).sort_index()


def window(returns: pd.DataFrame, day: date, instruments, n: int = WINDOW) -> pd.DataFrame:
    """The last n days (up to and including `day`) of returns with every one of `instruments` known."""
    r = returns.reindex(columns=list(instruments))
    return r.loc[r.index <= day].dropna().iloc[-n:]


def day_risk(
    day: date, pos: pd.DataFrame, navs: dict, returns: pd.DataFrame, shocks: list[dict], paths: int = PATHS
) -> tuple[list, list, list]:
    """Rows of risk_metrics, var_components and stress_results for one day (empty before a full window)."""
    e = exposures_on(pos, day)
    e = e[[navs.get((day, pf), 0) > 0 for pf in e.index]]
    if e.empty:
        return [], [], []
    r = window(returns, day, e.columns)
    if len(r) < WINDOW:
        return [], [], []
    nav = np.array([navs[(day, pf)] for pf in e.index])
    x = e.to_numpy()
    res = position_risk(x, r.to_numpy(), nav, paths=paths, seed=day.toordinal())
    span = window(returns, day, e.columns, n=len(returns))  # every day loaded: the historical scenarios
    span_pnl = span.to_numpy() @ x.T
    metrics, components, stress = [], [], []
    for p, pf in enumerate(e.index):
        metrics.append(
            {
                "date": day,
                "portfolio_id": pf,
                "hist_var_99_1d": res["hist_var"][p],
                "hist_var_99_10d_scaled": scale_to_horizon(res["hist_var"][p]),
                "es_975_1d": res["hist_es"][p],
                "es_975_10d_scaled": scale_to_horizon(res["hist_es"][p]),
                "param_var_99_1d": res["param_var"][p],
                "param_es_975_1d": res["param_es"][p],
                "mc_var_99_1d": res["mc_var"][p] if paths else float("nan"),
                "mc_es_975_1d": res["mc_es"][p] if paths else float("nan"),
                "gross_exposure": float(np.abs(x[p]).sum() / nav[p]),
                "nav": float(nav[p]),
                "observations": len(r),
                "mc_paths": paths,
                "mc_backend": backend(),
            }
        )
        for i, inst in enumerate(e.columns):
            if x[p, i]:
                components.append(
                    {
                        "date": day,
                        "portfolio_id": pf,
                        "instrument_id": inst,
                        "exposure": x[p, i],
                        "marginal_var": res["marginal_var"][p, i],
                        "component_var": res["component_var"][p, i],
                        "incremental_var": res["incremental_var"][p, i],
                    }
                )
        for k, t in enumerate(worst_days(span_pnl[:, p], WORST), start=1):
            stress.append(
                {
                    "date": day,
                    "portfolio_id": pf,
                    "scenario": f"historical_worst_{k}",
                    "kind": "historical",
                    "scenario_date": span.index[t],
                    "pnl": span_pnl[t, p],
                    "pnl_fraction": span_pnl[t, p] / nav[p],
                }
            )
        held = {inst: x[p, i] for i, inst in enumerate(e.columns) if x[p, i]}
        for s in shocks:
            pnl = shock_pnl(held, s["shocks"])
            stress.append(
                {
                    "date": day,
                    "portfolio_id": pf,
                    "scenario": s["name"],
                    "kind": "user",
                    "scenario_date": None,
                    "pnl": pnl,
                    "pnl_fraction": pnl / nav[p],
                }
            )
    return metrics, components, stress


def backtest_positions(pos: pd.DataFrame, navs: dict, returns: pd.DataFrame, last: date, level: float = 0.99):
    """Per portfolio, over the last BACKTEST_DAYS days up to `last`: the 1-day historical VaR forecast at each day's
    previous close (that day's exposures over the WINDOW before it) against the next day's hypothetical P&L (the same
    exposures under the next day's returns), as fractions of NAV. {portfolio: (days, realized, forecasts)}"""
    days = [d for d in returns.index if d <= last][-(BACKTEST_DAYS + 1) :]
    out: dict = {}
    for prev, day in itertools.pairwise(days):
        e = exposures_on(pos, prev)
        if e.empty:
            continue
        r = window(returns, prev, e.columns)
        nxt = returns.loc[day, list(e.columns)]
        if len(r) < WINDOW or nxt.isna().any():
            continue
        pnl = r.to_numpy() @ e.to_numpy().T
        var = -np.quantile(pnl, 1 - level, axis=0)
        realized = e.to_numpy() @ nxt.to_numpy()
        for p, pf in enumerate(e.index):
            nav = navs.get((prev, pf))
            if nav and nav > 0:
                d, a, f = out.setdefault(pf, ([], [], []))
                d.append(day), a.append(realized[p] / nav), f.append(var[p] / nav)
    return out


def explain(bt: dict, returns_vol_ratio: float) -> str:
    """Why a backtest is where it is, in words (for the check's metadata)."""
    why = [f"{bt['exceptions']} exceptions in {bt['observations']} days (expected {bt['observations'] / 100:.1f})"]
    if bt["christoffersen_p_value"] < 0.05:
        why.append(
            "they cluster (Christoffersen p < 0.05): volatility rose faster than a 250-day historical window "
            "follows (volatility clustering)"
        )
    if returns_vol_ratio > 1.3:
        why.append(f"the last 20 days' P&L volatility is {returns_vol_ratio:.1f}× the window's")
    if bt["exceptions"] and bt["kupiec_p_value"] < 0.05 and bt["christoffersen_p_value"] >= 0.05:
        why.append("too many, not clustered: the window under-represents the tails (fat tails)")
    return "; ".join(why)


def backtest_plot(results: dict) -> dg.MetadataValue | None:
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.2 * len(results)), sharex=True, squeeze=False)
    for ax, (pf, (days, realized, forecasts)) in zip(axes[:, 0], results.items()):
        realized, forecasts = np.array(realized), np.array(forecasts)
        hit = realized < -forecasts
        ax.plot(days, realized * 100, lw=0.7, label="hypothetical P&L %")
        ax.plot(days, -forecasts * 100, lw=1.0, color="C3", label="−VaR 99%")
        ax.scatter(np.array(days)[hit], realized[hit] * 100, color="C3", s=14, zorder=3, label="exception")
        ax.set_title(pf, fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    return png_markdown(fig, "VaR backtest")


# ---- the assets ---------------------------------------------------------------------------------------------
def _spec(key: dg.AssetKey, table: Table, description: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        key,
        deps=[NAV_KEY, BARS_1D_KEY],
        group_name=PRODUCT.group,
        owners=list(PRODUCT.owners),
        kinds={"clickhouse", "python"},
        code_version=CODE_VERSION,
        freshness_policy=PRODUCT.freshness,
        automation_condition=dg.AutomationCondition.eager(),
        description=description,
        metadata=PRODUCT.stored_in(table),
    )


SPECS = [
    _spec(
        KEY,
        store.METRICS,
        "Per model portfolio and day, the 1-day risk of its end-of-day positions as positive loss fractions of NAV: "
        "historical simulation (the exposures revalued over the instruments' last 250 daily returns: exact for these "
        "linear positions), parametric (normal with the exposures' mean and covariance) and Monte Carlo (100,000 "
        "draws from that normal) VaR 99% and ES 97.5%. On normal returns the three agree within sampling error; on "
        "the fat-tailed, volatility-clustered market the historical figures differ by the model choice: they keep "
        "the window's fat tails (ES above the normal models'), while both normal models assume them away.",
    ),
    _spec(
        COMPONENTS_KEY,
        store.COMPONENTS,
        "Per portfolio, day and held instrument: Euler component VaR (sums to the parametric VaR 99%), marginal and "
        "incremental VaR.",
    ),
    _spec(
        STRESS_KEY,
        store.STRESS,
        f"Per portfolio and day: P&L of the end-of-day exposures on the {WORST} worst historical days of the loaded "
        "span and under the user-defined shocks of the scenarios YAML (NAUTILUS_STRESS_SCENARIOS).",
    ),
]


@dg.multi_asset(
    specs=SPECS,
    partitions_def=TRADING_DAYS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="mlx",
    name="risk_metrics",
    check_specs=[
        dg.AssetCheckSpec(
            "var_backtest",
            asset=KEY,
            description=(
                "Each of the last 250 days: the positions-based 1-day 99% historical VaR at the previous "
                "close vs the next day's hypothetical P&L: exceptions, Kupiec POF, Christoffersen "
                "independence, Basel zone (warn on yellow, fail on red, with the exceptions and why)"
            ),
        ),
        dg.AssetCheckSpec(
            "components_sum_to_var",
            asset=COMPONENTS_KEY,
            description=("Euler components of each portfolio-day sum to its parametric VaR to 1e-9"),
        ),
    ],
)
def risk_metrics(
    context: dg.AssetExecutionContext,
    postgres_risk: PostgresResource,
    clickhouse: ClickHouseResource,
    pulsar: PulsarResource,
):
    days = [date.fromisoformat(k) for k in context.partition_keys]
    # the portfolio product, read as the risk role (a declared reader of portfolio: resources/access.py)
    navs, pos, returns = load_inputs(postgres_risk, clickhouse, days[0], days[-1])
    shocks = scenarios()
    metrics, components, stress = [], [], []
    for d in days:
        m, c, s = day_risk(d, pos, navs, returns, shocks)
        metrics += m
        components += c
        stress += s
    run_id = context.run.run_id
    outputs = (
        (KEY, store.METRICS, metrics),
        (COMPONENTS_KEY, store.COMPONENTS, components),
        (STRESS_KEY, store.STRESS, stress),
    )
    for _, table, rows in outputs:  # all three written before any is reported materialized
        store.replace_days(clickhouse, table, rows, days, run_id)
    for key, table, rows in outputs:
        yield dg.MaterializeResult(
            asset_key=key, metadata={"days": len(days), "rows": len(rows), "dagster/column_lineage": table.lineage}
        )
    comp = pd.DataFrame(components)
    gaps = []
    if len(comp):
        sums = comp.groupby(["date", "portfolio_id"])["component_var"].sum()
        total = pd.DataFrame(metrics).set_index(["date", "portfolio_id"])["param_var_99_1d"]
        gaps = (sums - total.reindex(sums.index)).abs()
    yield dg.AssetCheckResult(
        asset_key=COMPONENTS_KEY,
        check_name="components_sum_to_var",
        passed=bool(len(gaps) == 0 or gaps.max() < 1e-9),
        metadata={"max_gap": float(gaps.max()) if len(gaps) else 0.0, "portfolio_days": len(gaps)},
    )
    yield var_backtest_check(pos, navs, returns, days[-1])
    PRODUCT.announce(pulsar, KEY, run_id, days=[str(d) for d in days], rows=len(metrics))


def var_backtest_check(pos, navs, returns, last: date) -> dg.AssetCheckResult:
    series = backtest_positions(pos, navs, returns, last)
    results = {pf: s for pf, s in series.items() if len(s[0]) >= BACKTEST_DAYS}
    if not results:
        return dg.AssetCheckResult(
            asset_key=KEY,
            check_name="var_backtest",
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"reason": f"needs {WINDOW + BACKTEST_DAYS} days of positions and returns"},
        )
    meta, zones = {}, []
    for pf, (days, realized, forecasts) in results.items():
        bt = evaluate_backtest(realized, forecasts)
        zones.append(bt["zone"])
        recent, whole = np.std(realized[-20:]), np.std(realized)
        meta.update({f"{pf}_{k}": v for k, v in bt.items()})
        meta[f"{pf}_why"] = explain(bt, recent / whole if whole else 1.0)
        hits = [f"{d}: loss {-a:.2%} > VaR {f:.2%}" for d, a, f in zip(days, realized, forecasts) if a < -f]
        meta[f"{pf}_exceptions_list"] = dg.MetadataValue.md("\n".join(f"- {h}" for h in hits) or "none")
    worst = "red" if "red" in zones else "yellow" if "yellow" in zones else "green"
    plot = backtest_plot(results)
    return dg.AssetCheckResult(
        asset_key=KEY,
        check_name="var_backtest",
        passed=worst == "green",
        metadata={**meta, "zone": worst, **({"plot": plot} if plot else {})},
        severity=dg.AssetCheckSeverity.ERROR if worst == "red" else dg.AssetCheckSeverity.WARN,
    )


ASSETS = [risk_metrics]
