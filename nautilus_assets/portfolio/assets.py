"""The `portfolio_states` product: fills from the engines topic -> PostgreSQL fills -> per portfolio and instrument
position, average cost, realized/unrealized P&L (marked to the latest 1-minute close at or before the state time),
fees, cash and NAV in `portfolio.portfolio_states`."""
import math
from datetime import datetime, timedelta, timezone

import dagster as dg
import orjson
import pulsar

from nautilus_assets.market_data.assets import BARS_KEY
from nautilus_assets.market_data.ingest import receive
from nautilus_assets.product import Product, follows_stream, png_markdown
from resources.clickhouse import ClickHouseResource
from resources.postgres import PostgresResource
from resources.pulsar import PulsarResource

from . import store
from .accounting import Portfolio
from .models import FILLS_TOPIC, PORTFOLIOS

PRODUCT = Product("portfolio_states", "portfolio", ("team:portfolio",), "portfolio-positions",
                  fail_after=timedelta(minutes=2), warn_after=timedelta(minutes=1),
                  latency_target_ms=1, availability_target=0.9999)
KEY = dg.AssetKey(["portfolio_states", "positions"])
FILLS_SPEC = dg.AssetSpec(["pulsar", "engines", "portfolio_fills"], group_name="pulsar_topics", kinds={"pulsar"},
                          owners=list(PRODUCT.owners), description=f"Pulsar topic {FILLS_TOPIC}: model portfolios' fills",
                          metadata={"pulsar/topic": FILLS_TOPIC})
SUBSCRIPTION = "nautilus-portfolio"
FIELDS = {"fill_id": str, "portfolio_id": str, "instrument_id": str, "quantity": (int, float), "price": (int, float),
          "fee": (int, float), "ts_event": int}

COLUMNS = [("ts", "timestamptz", "State time"), ("portfolio_id", "text", "Model portfolio"),
           ("instrument_id", "text", "Instrument"), ("position", "double precision", "Signed quantity"),
           ("avg_cost", "double precision", "Average cost (average-cost method)"),
           ("realized_pnl", "double precision", "Realized P&L"), ("unrealized_pnl", "double precision",
                                                                   "position · (mark − average cost)"),
           ("fees", "double precision", "Fees paid"), ("mark_price", "double precision",
                                                       "Latest 1-minute close at or before ts"),
           ("mark_source", "text", "bar, or fill when no bar exists yet"), ("cash", "double precision", "Portfolio cash"),
           ("nav", "double precision", "Portfolio NAV = cash + Σ position · mark"), ("run_id", "text", "Run")]
FILL_KEY = FILLS_SPEC.key
LINEAGE = dg.TableColumnLineage(deps_by_column={
    "position": [dg.TableColumnDep(asset_key=FILL_KEY, column_name="quantity")],
    "avg_cost": [dg.TableColumnDep(asset_key=FILL_KEY, column_name=c) for c in ("quantity", "price")],
    "realized_pnl": [dg.TableColumnDep(asset_key=FILL_KEY, column_name=c) for c in ("quantity", "price")],
    "unrealized_pnl": [dg.TableColumnDep(asset_key=FILL_KEY, column_name="quantity"),
                       dg.TableColumnDep(asset_key=BARS_KEY, column_name="close")],
    "fees": [dg.TableColumnDep(asset_key=FILL_KEY, column_name="fee")],
    "mark_price": [dg.TableColumnDep(asset_key=BARS_KEY, column_name="close")],
    "cash": [dg.TableColumnDep(asset_key=FILL_KEY, column_name=c) for c in ("quantity", "price", "fee")],
    "nav": [dg.TableColumnDep(asset_key=FILL_KEY, column_name=c) for c in ("quantity", "price", "fee")]
    + [dg.TableColumnDep(asset_key=BARS_KEY, column_name="close")]})


def validate_fill(payload: bytes) -> tuple[dict | None, str | None]:
    try:
        rec = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        return None, f"invalid_json: {e}"
    if not isinstance(rec, dict) or rec.get("schema_version") != 1:
        return None, "unknown_schema_version"
    for name, typ in FIELDS.items():
        v = rec.get(name)
        if v is None or isinstance(v, bool) or not isinstance(v, typ):
            return None, f"bad_value: {name}"
    if rec["quantity"] == 0 or not rec["price"] > 0 or rec["fee"] < 0 or not math.isfinite(rec["price"]):
        return None, "bad_value: quantity, price or fee"
    return rec, None


def ingest_fills(pulsar_res: PulsarResource, pg: PostgresResource, run_id: str) -> dict:
    """Pending fills -> portfolio.fills (idempotent on fill_id), acknowledged after the commit."""
    stats = {"fills_consumed": 0, "fills_quarantined": 0}
    with pulsar_res.client() as client, pg.connect() as conn:
        consumer = client.subscribe(FILLS_TOPIC, SUBSCRIPTION, consumer_type=pulsar.ConsumerType.Shared,
                                    initial_position=pulsar.InitialPosition.Earliest)
        try:
            msgs = receive(consumer, 100_000, 10)
            for m in msgs:
                mid = str(m.message_id())
                rec, why = validate_fill(m.data())
                if rec is None:
                    conn.execute("INSERT INTO portfolio.fills_quarantine VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                                 (mid, why, m.data(), run_id))
                    stats["fills_quarantined"] += 1
                    continue
                conn.execute("INSERT INTO portfolio.fills VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                             "ON CONFLICT (fill_id) DO NOTHING",
                             (rec["fill_id"], rec["portfolio_id"], rec["instrument_id"], rec["quantity"], rec["price"],
                              rec["fee"], rec["ts_event"], mid, run_id))
            conn.commit()
            for m in msgs:
                consumer.acknowledge(m)
            stats["fills_consumed"] = len(msgs)
        finally:
            consumer.close()
    return stats


def marks_at(ch: ClickHouseResource, state_time: datetime) -> dict:
    df = ch.query_df("SELECT instrument_id, argMax(close, minute) AS close FROM market_data.bars_1m FINAL "
                     "WHERE minute <= toDateTime(%(t)s, 'UTC') GROUP BY instrument_id",
                     parameters={"t": int(state_time.timestamp())})
    return dict(zip(df["instrument_id"].astype(str), df["close"]))


def states(conn, ch: ClickHouseResource, state_time: datetime) -> list[dict]:
    """Every portfolio replayed from all its fills up to `state_time`, marked at `state_time`."""
    cutoff = int(state_time.timestamp() * 1e9)
    fills = conn.execute("SELECT portfolio_id, instrument_id, quantity, price, fee FROM portfolio.fills "
                         "WHERE ts_event <= %s ORDER BY ts_event, fill_id", (cutoff,)).fetchall()
    books: dict[str, Portfolio] = {}
    last_price: dict[str, float] = {}
    for pf, inst, qty, price, fee in fills:
        books.setdefault(pf, Portfolio(PORTFOLIOS.get(pf, 1_000_000.0))).fill(inst, qty, price, fee)
        last_price[inst] = price
    bar_marks = marks_at(ch, state_time)
    marks = {**last_price, **bar_marks}
    rows = []
    for pf, book in sorted(books.items()):
        for r in book.rows(marks):
            rows.append({"ts": state_time, "portfolio_id": pf, **r,
                         "mark_source": "bar" if r["instrument_id"] in bar_marks else "fill"})
    return rows


def nav_plot(conn) -> dg.MetadataValue | None:
    data = conn.execute("SELECT ts, portfolio_id, max(nav) FROM portfolio.portfolio_states "
                        "GROUP BY ts, portfolio_id ORDER BY ts").fetchall()
    if len(data) < 2:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for pf in sorted({d[1] for d in data}):
        pts = [(d[0], d[2]) for d in data if d[1] == pf]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=pf)
    ax.set_title("NAV per model portfolio")
    ax.legend()
    fig.autofmt_xdate()
    return png_markdown(fig, "NAV")


@dg.asset(key=KEY, deps=[BARS_KEY, FILLS_SPEC], group_name=PRODUCT.group, owners=list(PRODUCT.owners),
          kinds={"postgres", "pulsar", "python"}, code_version="1", freshness_policy=PRODUCT.freshness,
          # eager on the bars; the fills topic is an external source that never "materializes"
          automation_condition=follows_stream().ignore(dg.AssetSelection.assets(FILLS_SPEC.key)),
          pool="postgres",
          description="Per model portfolio and instrument: position, average cost, realized and unrealized P&L "
                      "(marked to the latest 1-minute close at or before the state time), fees, cash and NAV, in "
                      "PostgreSQL portfolio.portfolio_states (TimescaleDB hypertable or native daily partitions).",
          metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(n, t, description=d)
                                                                    for n, t, d in COLUMNS]),
                    "dagster/table_name": "portfolio.portfolio_states", **PRODUCT.metadata},
          check_specs=[dg.AssetCheckSpec("nav_reconciles", asset=KEY,
                                         description="NAV − initial cash = realized + unrealized − fees, per portfolio"),
                       dg.AssetCheckSpec("positions_match_fills", asset=KEY,
                                         description="Each position equals the sum of its signed fill quantities")])
def portfolio_states(context: dg.AssetExecutionContext, clickhouse: ClickHouseResource, postgres: PostgresResource,
                     pulsar: PulsarResource):
    state_time = datetime.now(timezone.utc).replace(microsecond=0)
    with postgres.connect() as conn:
        mode = store.ensure_schema(conn)
        conn.commit()
    stats = ingest_fills(pulsar, postgres, context.run.run_id)
    with postgres.connect() as conn:
        rows = states(conn, clickhouse, state_time)
        store.ensure_partition(conn, state_time, mode)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO portfolio.portfolio_states (ts, portfolio_id, instrument_id, position, avg_cost, "
                "realized_pnl, unrealized_pnl, fees, mark_price, mark_source, cash, nav, run_id) VALUES "
                "(%(ts)s, %(portfolio_id)s, %(instrument_id)s, %(position)s, %(avg_cost)s, %(realized_pnl)s, "
                "%(unrealized_pnl)s, %(fees)s, %(mark_price)s, %(mark_source)s, %(cash)s, %(nav)s, %(run_id)s) "
                "ON CONFLICT DO NOTHING", [{**r, "run_id": context.run.run_id} for r in rows])
        conn.commit()
        meta = {**stats, "partitioning": mode, "state_time": state_time.isoformat(), "rows": len(rows),
                "dagster/column_lineage": LINEAGE}
        chart = nav_plot(conn)
        if chart:
            meta["nav_curve"] = chart
        yield dg.MaterializeResult(metadata=meta)
        bad = []
        for pf in {r["portfolio_id"] for r in rows}:
            pr = [r for r in rows if r["portfolio_id"] == pf]
            pnl = sum(r["realized_pnl"] + r["unrealized_pnl"] - r["fees"] for r in pr)
            if abs(pr[0]["nav"] - PORTFOLIOS.get(pf, 1_000_000.0) - pnl) > 1e-6 * max(1.0, abs(pr[0]["nav"])):
                bad.append(pf)
        yield dg.AssetCheckResult(check_name="nav_reconciles", passed=not bad, metadata={"portfolios_off": len(bad)})
        sums = dict(((p, i), q) for p, i, q in conn.execute(
            "SELECT portfolio_id, instrument_id, sum(quantity) FROM portfolio.fills WHERE ts_event <= %s "
            "GROUP BY 1, 2", (int(state_time.timestamp() * 1e9),)).fetchall())
        off = sum(1 for r in rows if abs(sums.get((r["portfolio_id"], r["instrument_id"]), 0) - r["position"]) > 1e-6)
        yield dg.AssetCheckResult(check_name="positions_match_fills", passed=off == 0, metadata={"positions_off": off})
    PRODUCT.announce(pulsar, KEY, context.run.run_id, state_time=state_time.isoformat(), **stats)


ASSETS = [FILLS_SPEC, portfolio_states]
