"""The code location loads, carries its governance metadata, and matches its reviewed snapshot."""

import difflib
import json
import os
from pathlib import Path

import dagster as dg

from nautilus_assets.api.sla import api_sla
from nautilus_assets.definitions import CONTRACTS, defs
from nautilus_assets.market_data.assets import BARS_KEY, QUOTES_KEY, TRADES_KEY
from nautilus_assets.market_data.maintenance import INTEGRITY_CHECKS


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_market_data_assets_have_metadata_lineage_and_sla():
    ag = defs.resolve_asset_graph()
    specs = {s.key: s for s in defs.resolve_all_asset_specs()}
    for key in (TRADES_KEY, QUOTES_KEY, BARS_KEY):
        node = ag.get(key)
        assert node.group_name == "market_data" and node.owners == ["team:market-data"]
        assert node.freshness_policy.fail_window.to_timedelta().total_seconds() == 120
        assert node.freshness_policy.warn_window.to_timedelta().total_seconds() == 60
        assert "clickhouse" in node.kinds and node.code_version
        assert specs[key].description and specs[key].metadata["dagster/column_schema"].columns
    assert ag.get(TRADES_KEY).parent_keys == {dg.AssetKey(["pulsar", "market_data", "trades"])}
    assert ag.get(QUOTES_KEY).parent_keys == {dg.AssetKey(["pulsar", "market_data", "level1_quotes"])}
    assert ag.get(BARS_KEY).parent_keys == {TRADES_KEY}
    checks = {(c.asset_key, c.name) for c in ag.asset_check_keys}
    assert {
        (TRADES_KEY, "reconciles_with_consumed"),
        (TRADES_KEY, "no_duplicate_ids"),
        (QUOTES_KEY, "reconciles_with_consumed"),
        (BARS_KEY, "bars_agree_with_trades"),
    } <= checks


def test_sensors_start_running_and_target_one_job_each():
    repo = defs.get_repository_def()
    for name in ("trades_ingest_sensor", "quotes_ingest_sensor"):
        sensor = repo.get_sensor_def(name)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert sensor.job_name == "ingest_" + name.split("_")[0]


def test_every_product_declares_its_sla_owners_schema_and_engine_topic():
    ag = defs.resolve_asset_graph()
    specs = {s.key: s for s in defs.resolve_all_asset_specs()}
    expected = {
        "market_analytics": ("analytics", 300, 120, "analytics-signals"),
        "market_microstructure": ("microstructure", 120, 60, "vpin-microstructure"),
        "portfolio_states": ("portfolio", 120, 60, "portfolio-positions"),
        "risk_metrics": ("risk", 300, 120, "risk-metrics"),
        "ml_predictions": ("ml", 300, 120, "ml-predictions"),
    }
    seen = set()
    for key in ag.get_all_asset_keys():
        product = key.path[0]
        node = ag.get(key)
        if product not in expected or not node.is_materializable:
            continue
        group, fail_s, warn_s, topic = expected[product]
        meta = specs[key].metadata
        assert node.group_name == group and node.owners and specs[key].description, key
        assert "dagster/column_schema" in meta and meta["nautilus/engine_topic"].endswith(topic), key
        assert {"nautilus/latency_target_ms", "nautilus/availability_target"} <= set(meta), key
        assert node.freshness_policy is not None, key
        if not node.partitions_def:
            assert node.freshness_policy.fail_window.to_timedelta().total_seconds() == fail_s, key
            assert node.freshness_policy.warn_window.to_timedelta().total_seconds() == warn_s, key
        seen.add(product)
    assert seen == set(expected)


SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


def snapshot(defs: dg.Definitions) -> dict:
    """What a reviewer of the code location cares about, as plain data."""
    ag = defs.resolve_asset_graph()
    specs = {s.key: s for s in defs.resolve_all_asset_specs()}
    assets = {}
    for key in sorted(ag.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node, meta = ag.get(key), specs[key].metadata if key in specs else {}
        fp = node.freshness_policy
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "owners": sorted(node.owners),
            "kinds": sorted(node.kinds),
            "materializable": node.is_materializable,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": type(node.partitions_def).__name__ if node.partitions_def else None,
            "freshness": None
            if fp is None
            else {
                w: getattr(fp, w).to_timedelta().total_seconds() if getattr(fp, w, None) else None
                for w in ("fail_window", "warn_window")
            },
            "automation": node.automation_condition.get_label() if node.automation_condition else None,
            "code_version": node.code_version,
            "columns": [c.name for c in meta["dagster/column_schema"].columns]
            if "dagster/column_schema" in meta
            else None,
            "checks": sorted(c.name for c in ag.asset_check_keys if c.asset_key == key),
            "tags": {k: v for k, v in sorted((node.tags or {}).items()) if not k.startswith("dagster/kind/")},
        }
    repo = defs.get_repository_def()
    return {
        "assets": assets,
        "sensors": {
            s.name: {
                "interval_s": s.minimum_interval_seconds,
                "status": s.default_status.value,
                "jobs": sorted(j.name for j in s.jobs) if s.has_jobs else [],
            }
            for s in sorted(repo.sensor_defs, key=lambda s: s.name)
        },
        "schedules": {
            s.name: {"cron": s.cron_schedule, "job": s.job_name, "status": s.default_status.value}
            for s in sorted(repo.schedule_defs, key=lambda s: s.name)
        },
        "jobs": {
            name: job_checks(name)
            for name in sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__"))
        },
    }


def job_checks(name: str) -> list[str]:
    """The checks a job runs (its selection resolved against the whole code location)."""
    job = defs.resolve_job_def(name)
    return sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in job.asset_layer.asset_graph.asset_check_keys)


def test_product_runs_evaluate_only_their_own_checks():
    """A check defined apart from its asset (the API SLA's, reported by a sensor; the whole-table uniqueness and the
    contract checks, each on its schedule) runs in its own job, never inside an ingest, streaming or replay run:
    `checks_for_assets` would put every one of them into every run of the product."""
    apart = {
        f"{k.asset_key.to_user_string()}:{k.name}"
        for c in (api_sla, CONTRACTS, *INTEGRITY_CHECKS)
        for k in c.check_keys
    }
    assert {n.split(":")[1] for n in apart} >= {
        "matches_contract",
        "latency_within_target",
        "no_duplicate_ids_in_table",
    }
    for job in defs.get_repository_def().get_all_jobs():
        if job.name.startswith("__"):
            continue
        runs = set(job_checks(job.name))
        if job.name == "data_contracts":
            assert runs == {k for k in apart if k.endswith(":matches_contract")}
        elif job.name == "market_data_integrity":
            assert runs == {k for k in apart if k.endswith(":no_duplicate_ids_in_table")}
        else:
            assert not runs & apart, f"{job.name} would run {sorted(runs & apart)}"
    assert job_checks("ingest_trades") == [
        "market_data_feed/bars_1m:bars_agree_with_trades",
        "market_data_feed/trades:no_duplicate_ids",
        "market_data_feed/trades:reconciles_with_consumed",
    ]


def test_definitions_match_the_reviewed_snapshot():
    """Asset keys, groups, owners, kinds, dependencies, partitions, freshness, automation, code versions, columns,
    checks, sensors, schedules and jobs: any change is a reviewed diff of tests/snapshots/definitions.json
    (NAUTILUS_UPDATE_SNAPSHOT=1 rewrites it)."""
    current = json.dumps(snapshot(defs), indent=1) + "\n"
    if os.environ.get("NAUTILUS_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(current)
    diff = "".join(
        difflib.unified_diff(SNAPSHOT.read_text().splitlines(True), current.splitlines(True), "snapshot", "definitions")
    )
    assert not diff, f"the definitions changed (NAUTILUS_UPDATE_SNAPSHOT=1 accepts it):\n{diff}"
