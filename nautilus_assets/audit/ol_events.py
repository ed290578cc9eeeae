"""OpenLineage run events (START and COMPLETE/FAIL/ABORT) for Dagster runs, built and sent with the
`openlineage-python` client (the community dagster integration pins dagster<=1.6.9). One job per Dagster job,
the Dagster run id as the OpenLineage run id; outputs are the assets the run materialized (with schema, column
lineage, owners and data version facets), inputs their upstream assets (Pulsar topics included)."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    column_lineage_dataset,
    dataset_version_dataset,
    error_message_run,
    ownership_dataset,
    schema_dataset,
    tags_run,
)
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import HttpConfig, HttpTransport

NAMESPACE = "nautilus"
PRODUCER = "https://github.com/nautilus/nautilus/audit"
FINISHED = {
    dg.DagsterRunStatus.SUCCESS: RunState.COMPLETE,
    dg.DagsterRunStatus.FAILURE: RunState.FAIL,
    dg.DagsterRunStatus.CANCELED: RunState.ABORT,
}


def client_for(url: str | None = None, path: str | None = None, endpoint: str = "api/v1/lineage") -> OpenLineageClient:
    """An HTTP transport (Marquez-style endpoint) or a file transport (one JSON event per line)."""
    if url:
        return OpenLineageClient(transport=HttpTransport(HttpConfig(url=url, endpoint=endpoint, timeout=10.0)))
    return OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=path, append=True)))


def dataset_namespace(ag, key: dg.AssetKey) -> tuple[str, str]:
    """(namespace, name): Pulsar topics by topic URL, stored tables by backend, else the asset key."""
    node = ag.get(key)
    meta = dict(node.metadata or {})
    topic = meta.get("pulsar/topic")
    if topic is not None and not node.is_materializable:
        t = str(getattr(topic, "value", topic))
        return "pulsar://nautilus", t.split("://", 1)[-1]
    table = meta.get("dagster/table_name")
    if table is not None:
        backend = "postgres" if key.path[0] == "portfolio_states" else "clickhouse"
        return f"{backend}://nautilus", str(getattr(table, "value", table))
    return f"dagster://{NAMESPACE}", key.to_user_string()


def _dataset_facets(ag, key, materialization=None) -> dict:
    node = ag.get(key)
    meta = dict(node.metadata or {})
    facets: dict = {}
    schema = meta.get("dagster/column_schema")
    schema = getattr(schema, "value", schema)
    if schema is not None:
        facets["schema"] = schema_dataset.SchemaDatasetFacet(
            fields=[schema_dataset.SchemaDatasetFacetFields(name=c.name, type=c.type) for c in schema.columns]
        )
    if node.owners:
        facets["ownership"] = ownership_dataset.OwnershipDatasetFacet(
            owners=[ownership_dataset.Owner(name=o) for o in node.owners]
        )
    if materialization is not None:
        m = materialization.asset_materialization
        dv = (m.tags or {}).get("dagster/data_version")
        if dv:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=dv)
        lin = (m.metadata or {}).get("dagster/column_lineage")
        lin = getattr(lin, "value", lin)
        if lin is not None:
            fields = {}
            for col, deps in lin.deps_by_column.items():
                inputs = []
                for d in deps:
                    ns, name = dataset_namespace(ag, d.asset_key)
                    inputs.append(column_lineage_dataset.InputField(namespace=ns, name=name, field=d.column_name))
                fields[col] = column_lineage_dataset.Fields(inputFields=inputs)
            facets["columnLineage"] = column_lineage_dataset.ColumnLineageDatasetFacet(fields=fields)
    return facets


def events_for_run(instance: dg.DagsterInstance, ag, record) -> list[RunEvent]:
    """START and the terminal event (if the run finished) of one Dagster run record."""
    run = record.dagster_run
    mats = list(
        instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=10_000
        ).records
    )
    latest = {}
    for r in mats:
        latest[r.asset_key] = r
    known = set(ag.get_all_asset_keys())
    out_keys = set(latest) | {k for k in (run.asset_selection or set()) if k in known}
    in_keys = {p for k in out_keys if k in known for p in ag.get(k).parent_keys} - out_keys
    outputs = []
    for k in sorted(out_keys, key=lambda k: k.to_user_string()):
        ns, name = dataset_namespace(ag, k)
        outputs.append(OutputDataset(namespace=ns, name=name, facets=_dataset_facets(ag, k, latest.get(k))))
    inputs = []
    for k in sorted(in_keys, key=lambda k: k.to_user_string()):
        ns, name = dataset_namespace(ag, k)
        inputs.append(InputDataset(namespace=ns, name=name, facets=_dataset_facets(ag, k)))
    run_facets = {
        "tags": tags_run.TagsRunFacet(
            tags=[
                tags_run.TagsRunFacetFields(key=k, value=str(v), source="DAGSTER") for k, v in sorted(run.tags.items())
            ]
        )
    }
    job = Job(namespace=NAMESPACE, name=run.job_name)
    start_ts = record.start_time or record.create_timestamp.timestamp()
    events = [
        RunEvent(
            eventType=RunState.START,
            eventTime=_t(start_ts),
            run=Run(runId=run.run_id, facets=run_facets),
            job=job,
            inputs=inputs,
            outputs=outputs,
            producer=PRODUCER,
        )
    ]
    state = FINISHED.get(run.status)
    if state is not None:
        facets = dict(run_facets)
        if state is RunState.FAIL:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=_failure(instance, run.run_id), programmingLanguage="python"
            )
        events.append(
            RunEvent(
                eventType=state,
                eventTime=_t(record.end_time or start_ts),
                run=Run(runId=run.run_id, facets=facets),
                job=job,
                inputs=inputs,
                outputs=outputs,
                producer=PRODUCER,
            )
        )
    return events


def _failure(instance, run_id: str) -> str:
    recs = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE, limit=1).records
    return (recs[0].event_log_entry.dagster_event.message or "run failed") if recs else "run failed"


def _t(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def emit(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    client: OpenLineageClient,
    limit: int = 500,
    run_ids: list[str] | None = None,
) -> dict:
    """Emit the events of the latest `limit` runs (or of `run_ids`), oldest first. Returns counts by type."""
    ag = defs.resolve_asset_graph()
    flt = dg.RunsFilter(run_ids=run_ids) if run_ids else None
    records = instance.get_run_records(flt, limit=limit)
    counts: dict[str, int] = {}
    for rec in reversed(records):
        for ev in events_for_run(instance, ag, rec):
            client.emit(ev)
            counts[ev.eventType.value] = counts.get(ev.eventType.value, 0) + 1
    counts["runs"] = len(records)
    return counts
