"""Issue 13 item 3: a late trade reaches the day-level products. A trade for D-3 arriving today recomputes its minute
bar in the ingest batch; the late-trades sensor then re-runs D-3's daily bars, NAV and risk (and only D-3's)."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import orjson

from nautilus_assets.definitions import defs
from nautilus_assets.market_data.assets import BARS_KEY
from nautilus_assets.market_data.daily import bars_1d
from nautilus_assets.market_data.schema import TRADES
from nautilus_assets.portfolio.daily import daily_nav
from nautilus_assets.risk.assets import risk_metrics
from resources import schemas
from scripts.history import write_history
from tests.helpers import evaluate, product_resources

INSTR = ["AAPL.XNAS", "SPY.ARCX"]
RISK_SQL = (
    "SELECT portfolio_id, nav, hist_var_99_1d, param_var_99_1d FROM risk.risk_metrics FINAL "
    "WHERE date = %(d)s ORDER BY portfolio_id"
)


def _day_ns(day) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**9


def state(res, day) -> dict:
    ch = res["clickhouse"]
    with res["postgres"].connect() as conn:
        nav = conn.execute(
            "SELECT portfolio_id, nav FROM portfolio.daily_nav WHERE date = %s ORDER BY 1", (day,)
        ).fetchall()
    return {
        "close": ch.query_df(
            "SELECT instrument_id, close, trade_count FROM market_data.bars_1d FINAL WHERE date = %(d)s ORDER BY 1",
            parameters={"d": day},
        ).values.tolist(),
        "nav": nav,
        "risk": ch.query_df(RISK_SQL, parameters={"d": day}).values.tolist(),
    }


def test_a_late_trade_reruns_its_days_bars_nav_and_risk(clean, instance):
    res = clean
    today = datetime.now(UTC).date()
    days = 262  # risk's window: 250 daily returns before D-3
    d3, first, yesterday = today - timedelta(days=3), today - timedelta(days=days), today - timedelta(days=1)
    write_history(
        res["lake"],
        INSTR,
        days=days,
        events_per_day=1000,
        postgres=res["postgres"],
        clickhouse=res["clickhouse"],
        clickhouse_days=5,
    )
    resources = product_resources(res)
    for asset, start in ((bars_1d, first), (daily_nav, first), (risk_metrics, d3 - timedelta(days=1))):
        assert dg.materialize(
            [asset],
            instance=instance,
            resources=resources,
            tags={
                "dagster/asset_partition_range_start": start.isoformat(),
                "dagster/asset_partition_range_end": yesterday.isoformat(),
            },
        ).success
    before, other = state(res, d3), state(res, d3 - timedelta(days=1))
    assert before["close"] and before["nav"] and before["risk"]

    latest = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=BARS_KEY), limit=1).records
    cursor = str(latest[0].storage_id) if latest else "0"
    close = {i: c for i, c, _ in before["close"]}["AAPL.XNAS"]
    end_of_d3 = _day_ns(d3 + timedelta(days=1)) - 10**8  # 23:59:59.9 on D-3
    late = {
        "schema_version": 1,
        "instrument_id": "AAPL.XNAS",
        "price": round(close * 1.5, 2),
        "size": 10.0,
        "aggressor_side": "BUYER",
        "trade_id": "late-1",
        "ts_event": end_of_d3,
        "ts_init": end_of_d3,
    }
    fresh = {
        **late,
        "trade_id": "now-1",
        "price": close,
        "ts_event": _day_ns(today) + 10**9,
        "ts_init": _day_ns(today) + 10**9,
    }
    with res["pulsar"].client() as client:
        p = schemas.create_producer(client, TRADES.topic)
        for m in (late, fresh):
            p.send(orjson.dumps(m))
        p.close()
    tick, job_name = evaluate("trades_ingest_sensor", instance, res)
    for rr in tick.run_requests:  # the ingest run its sensor launches
        assert defs.resolve_job_def(rr.job_name or job_name).execute_in_process(instance=instance, tags=rr.tags).success

    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("late_trades_sensor")
    result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=repo))
    assert [rr.partition_key for rr in result.run_requests] == [d3.isoformat()]  # today's trade asks for nothing
    job = defs.resolve_job_def("late_trades_replay")
    for rr in result.run_requests:
        assert job.execute_in_process(instance=instance, partition_key=rr.partition_key, tags=rr.tags).success
    after = state(res, d3)
    aapl = {i: (c, n) for i, c, n in after["close"]}["AAPL.XNAS"]
    assert aapl[0] == late["price"] and aapl[1] == {i: n for i, _, n in before["close"]}["AAPL.XNAS"] + 1
    assert after["nav"] != before["nav"] and after["risk"] != before["risk"]
    assert state(res, d3 - timedelta(days=1)) == other  # the day before is left as it was
    again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=result.cursor, repository_def=repo))
    assert not again.run_requests  # the cursor moved past them: asked once
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo))
    assert not first.run_requests and int(first.cursor) >= int(result.cursor)  # a new sensor watches from now on
