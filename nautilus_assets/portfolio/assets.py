"""The `portfolio_states` product: fills from the engines topic -> PostgreSQL fills -> per portfolio and instrument
position, average cost, realized/unrealized P&L (marked to the latest 1-minute close at or before the state time),
fees, cash and NAV in `portfolio.portfolio_states`."""

import math
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import orjson

from nautilus_assets import current
from nautilus_assets.market_data.assets import BARS_KEY
from nautilus_assets.product import Product, png_markdown
from nautilus_assets.streaming import Changes, FollowConfig, follow, follow_job, log_batch
from resources.clickhouse import ClickHouseResource
from resources.postgres import PostgresResource
from resources.pulsar import PulsarResource
from resources.redis import RedisResource
from resources.topics import BARS_CHANGES

from . import store
from .accounting import Portfolio
from .models import FILLS_TOPIC, PORTFOLIOS

PRODUCT = Product(
    "portfolio_states",
    "portfolio",
    ("team:portfolio",),
    "portfolio-positions",
    fail_after=timedelta(minutes=2),
    warn_after=timedelta(minutes=1),
    latency_target_ms=1,
    availability_target=0.9999,
)
KEY = dg.AssetKey(["portfolio_states", "positions"])
FILLS_SPEC = dg.AssetSpec(
    store.FILLS_KEY,
    group_name="pulsar_topics",
    kinds={"pulsar"},
    owners=list(PRODUCT.owners),
    description=f"Pulsar topic {FILLS_TOPIC}: model portfolios' fills",
    metadata={"pulsar/topic": FILLS_TOPIC},
)
SUBSCRIPTION = "nautilus-portfolio"
FIELDS = {
    "fill_id": str,
    "portfolio_id": str,
    "instrument_id": str,
    "quantity": (int, float),
    "price": (int, float),
    "fee": (int, float),
    "ts_event": int,
}


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


def store_fills(conn, msgs: list, batch_id: str) -> tuple[list[tuple], int]:
    """The batch's fill messages -> portfolio.fills (idempotent on fill_id) or the quarantine, in the caller's
    transaction. Returns the fills new to the store as (ts_event, fill_id, portfolio, instrument, qty, price, fee),
    and how many were quarantined: a redelivered fill is stored once and applied once."""
    new, quarantined = [], 0
    for m in msgs:
        mid = str(m.message_id())
        rec, why = validate_fill(m.data())
        if rec is None:
            store.quarantine_fill(conn, mid, why, m.data(), batch_id)
            quarantined += 1
            continue
        if store.insert_fill(conn, {**{k: rec[k] for k in FIELDS}, "message_id": mid, "batch_id": batch_id}):
            new.append(
                (
                    rec["ts_event"],
                    rec["fill_id"],
                    rec["portfolio_id"],
                    rec["instrument_id"],
                    rec["quantity"],
                    rec["price"],
                    rec["fee"],
                )
            )
    return new, quarantined


class Books:
    """The model portfolios carried from batch to batch: every stored fill applied once, in (ts_event, fill_id)
    order. New fills are applied to the carried books; a fill older than the last one applied (late) makes the
    books replay from the store, since average-cost accounting depends on the order of fills."""

    def __init__(self):
        self.books: dict[str, Portfolio] = {}
        self.last_price: dict[str, float] = {}
        self.last_key: tuple | None = None
        self.replays = 0

    def _apply(self, fills) -> None:
        for ts, fid, pf, inst, qty, price, fee in fills:
            self.books.setdefault(pf, Portfolio(PORTFOLIOS.get(pf, 1_000_000.0))).fill(inst, qty, price, fee)
            self.last_price[inst] = price
            self.last_key = (ts, fid)

    def replay(self, conn) -> None:
        self.__init__()
        self.replays = 1
        self._apply(store.all_fills(conn))

    def add(self, conn, fills: list[tuple]) -> str:
        """Apply new fills; returns how ('incremental', 'replay' or 'none')."""
        if not fills:
            return "none"
        fills = sorted(fills)
        if self.last_key is not None and fills[0][:2] < self.last_key:
            self.replay(conn)
            return "replay"
        self._apply(fills)
        return "incremental"

    def rows(self, bar_marks: dict, state_time: datetime) -> list[dict]:
        """Each position marked to its bar close, else (no bar yet) to its last fill price."""
        marks = {**self.last_price, **bar_marks}
        return [
            {
                "ts": state_time,
                "portfolio_id": pf,
                **r,
                "mark_source": "bar" if r["instrument_id"] in bar_marks else "fill",
            }
            for pf, book in sorted(self.books.items())
            for r in book.rows(marks)
        ]


def nav_plot(data: list[tuple]) -> dg.MetadataValue | None:
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


def nav_off(rows: list[dict]) -> list[str]:
    """Portfolios whose NAV − initial cash differs from realized + unrealized − fees."""
    bad = []
    for pf in {r["portfolio_id"] for r in rows}:
        pr = [r for r in rows if r["portfolio_id"] == pf]
        pnl = sum(r["realized_pnl"] + r["unrealized_pnl"] - r["fees"] for r in pr)
        if abs(pr[0]["nav"] - PORTFOLIOS.get(pf, 1_000_000.0) - pnl) > 1e-6 * max(1.0, abs(pr[0]["nav"])):
            bad.append(pf)
    return bad


def positions_off(conn, rows: list[dict], pairs: set | None) -> int:
    """Positions that differ from the sum of their stored fills' quantities: every position when `pairs` is None
    (the run's first batch, and after a replay), else only the (portfolio, instrument) pairs the batch's fills hit."""
    todo = [r for r in rows if pairs is None or (r["portfolio_id"], r["instrument_id"]) in pairs]
    if not todo:
        return 0
    sums = store.fill_quantities(conn, sorted({(r["portfolio_id"], r["instrument_id"]) for r in todo}))
    return sum(1 for r in todo if abs(sums.get((r["portfolio_id"], r["instrument_id"]), 0) - r["position"]) > 1e-6)


PLOT_EVERY_S = 60


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            KEY,
            deps=[BARS_KEY, FILLS_SPEC],
            group_name=PRODUCT.group,
            owners=list(PRODUCT.owners),
            kinds={"postgres", "pulsar", "python"},
            code_version="1",
            freshness_policy=PRODUCT.freshness,
            skippable=True,
            description="Per model portfolio and instrument: position, average cost, realized and unrealized P&L "
            "(marked to the latest 1-minute close at or before the state time), fees, cash and NAV, in "
            "PostgreSQL portfolio.portfolio_states (TimescaleDB hypertable or native daily partitions). "
            f"A long-lived run consumes {FILLS_TOPIC} and the bars' change feed ({BARS_CHANGES}); each "
            "batch stores its new fills, applies them to the books carried from the previous batch and "
            "writes a state marked to the latest closes.",
            metadata=PRODUCT.stored_in(store.STATES),
        )
    ],
    name="portfolio_states__positions",
    pool="postgres",
    can_subset=True,  # each batch is logged as it commits
    check_specs=[
        dg.AssetCheckSpec(
            "nav_reconciles", asset=KEY, description="NAV − initial cash = realized + unrealized − fees, per portfolio"
        ),
        dg.AssetCheckSpec(
            "positions_match_fills",
            asset=KEY,
            description="Each position the batch changed equals the sum of its stored fills' "
            "signed quantities (every position on a run's first batch)",
        ),
    ],
)
def portfolio_states(
    context: dg.AssetExecutionContext,
    config: FollowConfig,
    clickhouse: ClickHouseResource,
    postgres: PostgresResource,
    pulsar: PulsarResource,
    redis: RedisResource,
):
    books, last_plot = Books(), [0.0]
    with postgres.connect() as conn:  # the set-up made the tables; a store it never reached gets them here
        mode = store.partitioning(conn)
        conn.commit()

    def apply(batch: Changes) -> None:
        if not (batch.first or batch.since or batch.others):
            return
        state_time = datetime.now(UTC)
        with postgres.connect() as conn:
            new, quarantined = store_fills(conn, batch.others, batch.batch_id)
            if batch.first:
                books.replay(conn)
                how = "replay"
            else:
                how = books.add(conn, new)
            bar_marks = store.marks_at(clickhouse, state_time, sorted(books.last_price))
            rows = books.rows(bar_marks, state_time)
            store.write_states(conn, rows, batch.batch_id, mode, state_time)
            conn.commit()  # fills and the state they produce commit together, before the messages are acked
            current.publish(
                redis, "positions", [{**r, "run_id": batch.batch_id} for r in rows], log=context.log.warning
            )  # the latest position and mark, with the commit
            meta = {
                "fills_consumed": len(batch.others),
                "fills_new": len(new),
                "fills_quarantined": quarantined,
                "books": how,
                "partitioning": mode,
                "state_time": state_time.isoformat(),
                "rows": len(rows),
                "upstream_batches": len(batch.upstream),
                "dagster/column_lineage": store.STATES.lineage,
            }
            later = None
            if time.monotonic() - last_plot[0] >= PLOT_EVERY_S:
                last_plot[0] = time.monotonic()
                points = store.nav_points(conn, state_time - timedelta(days=1))

                def later() -> dict:  # the chart is drawn on the recorder thread
                    chart = nav_plot(points)
                    return {"nav_curve": chart} if chart else {}

            bad = nav_off(rows)
            off = positions_off(conn, rows, None if how == "replay" else {(f[2], f[3]) for f in new})
            log_batch(
                context,
                KEY,
                batch,
                meta,
                {
                    "nav_reconciles": (not bad, {"portfolios_off": len(bad)}),
                    "positions_match_fills": (off == 0, {"positions_off": off}),
                },
                later,
            )
        batch.record(
            lambda: PRODUCT.announce(
                batch.client,
                KEY,
                batch.batch_id,
                state_time=state_time.isoformat(),
                fills_new=len(new),
                fills_quarantined=quarantined,
            )
        )

    follow(
        context,
        config,
        pulsar,
        SUBSCRIPTION,
        apply,
        topics=(FILLS_TOPIC,),
        warm=lambda: __import__("matplotlib.pyplot"),
    )  # the first plot's import, before the hand-over
    yield from ()


JOB = follow_job("portfolio_states", portfolio_states)
ASSETS = [FILLS_SPEC, portfolio_states]
