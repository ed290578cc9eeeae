"""Scheduled lake maintenance: compaction bounds the files per bronze date partition, checkpoints and vacuum keep
time travel for the retention, and de-duplication on the id columns still holds after compaction."""

import dagster as dg

from nautilus_assets.definitions import defs
from nautilus_assets.market_data import sinks
from nautilus_assets.market_data.ingest import Stream, run_batch
from nautilus_assets.market_data.maintenance import files_per_partition, maintain
from nautilus_assets.market_data.schema import TRADES
from tests.helpers import WEEK, counts, publish


def test_compaction_checkpoint_vacuum(clean):
    res = clean
    publish(res, 2000, seed=41)
    with Stream(TRADES, res["pulsar"], res["lake"], res["clickhouse"], WEEK, log=lambda m: None) as stream:
        batches = []
        while sum(b.consumed for b in batches) < 2000 and len(batches) < 200:
            batches.append(stream.commit(f"m.{len(batches) + 1}", stream.receive(100, 0.5)))
    assert sum(b.written_delta for b in batches) == 2000 and len(batches) >= 20
    table = sinks.bronze_table(TRADES)
    dt = res["lake"].table(table)
    old_version = dt.version()
    assert max(files_per_partition(dt).values()) >= 10  # one file per batch and date
    first = maintain(res["lake"], table, max_files=4, retention_days=7)
    assert first["compacted"] and first["max_files_per_partition"] <= 4
    assert counts(res, TRADES) == (2000, 2000)
    # time travel within the retention still reads the pre-compaction version
    again = res["lake"].table(table)
    again.load_as_version(old_version)
    assert again.to_pyarrow_table(columns=["message_id"]).num_rows == 2000
    # the compacted files still de-duplicate a redelivered batch (file statistics on the id columns)
    added, _, _ = sinks.write_delta(res["lake"], TRADES, batches[3].rows, "redelivered")
    assert added == 0
    # a retention of 0 removes the files only old versions referenced
    second = maintain(res["lake"], table, max_files=4, retention_days=0)
    assert second["files_vacuumed"] >= 10 and counts(res, TRADES) == (2000, 2000)


def test_maintenance_job_and_integrity_checks_run(clean):
    res = clean
    publish(res, 500, seed=42)
    run_batch(TRADES, res["pulsar"], res["lake"], res["clickhouse"], "i-1", 10_000, 5, WEEK, log=lambda m: None)
    job = defs.resolve_job_def("lake_maintenance_job")
    r = job.execute_in_process(resources={"lake": res["lake"]})
    assert r.success and r.output_for_node("compact_checkpoint_vacuum")["trades"]["partitions"] >= 1
    integrity = defs.resolve_job_def("market_data_integrity")
    r = integrity.execute_in_process(resources={"clickhouse": res["clickhouse"]})
    evals = r.get_asset_check_evaluations()
    assert len(evals) == 4 and all(e.passed for e in evals)  # trades, quotes, order-book deltas, news
    assert {e.metadata["rows"].value for e in evals if e.asset_key == dg.AssetKey(["market_data_feed", "trades"])} == {
        500
    }
