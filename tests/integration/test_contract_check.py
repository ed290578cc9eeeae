"""Issue 12 item 6: the `data_contracts` job compares every stored table (ClickHouse and PostgreSQL) with the
columns and types its committed ODCS contract promises, and fails the check of a table that drifted."""

import dagster as dg

from nautilus_assets.contracts import CHECK_NAME
from nautilus_assets.definitions import defs


def _run(instance) -> dict[str, dg.AssetCheckEvaluation]:
    result = defs.resolve_job_def("data_contracts").execute_in_process(instance=instance, raise_on_error=False)
    assert result.success
    return {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}


def test_stored_tables_match_their_contracts_and_a_drifted_one_fails(res, instance):
    evaluations = _run(instance)
    assert len(evaluations) >= 12 and all(e.check_name == CHECK_NAME for e in evaluations.values())
    assert all(e.passed for e in evaluations.values()), {k: e.metadata for k, e in evaluations.items() if not e.passed}

    ch, pg = res["clickhouse"], res["postgres"]  # the portfolio role owns its schema
    with ch.session() as c:
        c.command("ALTER TABLE market_data.bars_1m ADD COLUMN drift_probe Int8")
    with pg.connect() as conn:
        conn.execute("ALTER TABLE portfolio.daily_nav ALTER COLUMN nav TYPE numeric")
    try:
        evaluations = _run(instance)
    finally:
        with ch.session() as c:
            c.command("ALTER TABLE market_data.bars_1m DROP COLUMN drift_probe")
        with pg.connect() as conn:
            conn.execute("ALTER TABLE portfolio.daily_nav ALTER COLUMN nav TYPE double precision")
    failed = {k: e for k, e in evaluations.items() if not e.passed}
    assert set(failed) == {"market_data_feed/bars_1m", "portfolio_states/daily_nav"}
    assert failed["market_data_feed/bars_1m"].metadata["unexpected"].value == ["drift_probe"]
    assert failed["portfolio_states/daily_nav"].metadata["retyped"].value == ["nav: double precision -> numeric"]
    assert _run(instance)["market_data_feed/bars_1m"].passed  # put back
