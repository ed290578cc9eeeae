"""The lineage report: for every data product, its upstream graph down to the Pulsar topics, column lineage,
owners, SLA, freshness history and last materializations (run, trigger, code version, data version).

Reads the code location's definitions (the static graph, owners, policies) and the Dagster instance (runs,
materializations, freshness state changes). Read-only."""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime

import dagster as dg

PRODUCTS = (
    "market_data_feed",
    "market_analytics",
    "market_microstructure",
    "portfolio_states",
    "risk_metrics",
    "ml_predictions",
)
TOPIC_PREFIX = "pulsar"


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def is_topic(node) -> bool:
    return node.key.path[0] == TOPIC_PREFIX or ("pulsar" in node.kinds and not node.is_materializable)


def trigger_of(tags: dict) -> dict:
    """What launched a run, from the tags Dagster's daemons and the webserver put on it."""
    if "dagster/backfill" in tags:
        return {"kind": "backfill", "name": tags["dagster/backfill"]}
    if "dagster/schedule_name" in tags:
        return {"kind": "schedule", "name": tags["dagster/schedule_name"]}
    if "dagster/sensor_name" in tags:
        auto = tags.get("dagster/from_automation_condition") == "true" or tags.get("dagster/auto_materialize") == "true"
        return {"kind": "sensor", "name": tags["dagster/sensor_name"], "automation": auto}
    if tags.get("dagster/from_automation_condition") == "true":
        return {"kind": "sensor", "name": "automation", "automation": True}
    # No daemon tag: launched by hand, from the UI's Materialize/Launchpad or through the API.
    return {"kind": "ui", "name": tags.get("user") or tags.get("dagster/reporting_user") or "manual launch"}


def _policy(node) -> dict | None:
    p = node.freshness_policy
    if p is None:
        return None
    if hasattr(p, "fail_window"):
        warn = p.warn_window.to_timedelta().total_seconds() if p.warn_window else None
        return {
            "type": "time_window",
            "fail_after_s": p.fail_window.to_timedelta().total_seconds(),
            "warn_after_s": warn,
        }
    return {
        "type": "cron",
        "deadline_cron": p.deadline_cron,
        "timezone": p.timezone,
        "lower_bound_s": p.lower_bound_delta.total_seconds(),
    }


def upstream(ag, key: dg.AssetKey) -> tuple[list[str], list[list[str]]]:
    """(every upstream asset key, edges parent -> child) by breadth-first walk to the roots."""
    seen, edges, todo = set(), [], deque([key])
    while todo:
        k = todo.popleft()
        for p in sorted(ag.get(k).parent_keys):
            edges.append([p.to_user_string(), k.to_user_string()])
            if p not in seen:
                seen.add(p)
                todo.append(p)
    return sorted(k.to_user_string() for k in seen), edges


def stale_intervals(times: list[float], policy: dict | None, since: float, now: float) -> dict:
    """How often and how long the asset was stale, from its materialization times and its policy.

    Time window: stale from t + fail_after until the next materialization (warn likewise). Cron: at each
    deadline D in [since, now], stale unless materialized in [D - lower_bound, D], until the next one after D."""
    if not policy:
        return {"evaluated": False}
    times = sorted(t for t in times)
    out: dict = {"evaluated": True, "window_start": iso(since), "window_end": iso(now)}
    if policy["type"] == "time_window":
        for level, lag in (("fail", policy["fail_after_s"]), ("warn", policy["warn_after_s"])):
            if lag is None:
                continue
            spans = []
            for a, b in zip(times, times[1:] + [now]):
                if b - a > lag and a + lag < now:
                    spans.append((max(a + lag, since), b))
            spans = [(a, b) for a, b in spans if b > since]
            out[level] = {
                "episodes": len(spans),
                "stale_seconds": round(sum(b - a for a, b in spans), 1),
                "longest_seconds": round(max((b - a for a, b in spans), default=0.0), 1),
                "spans": [[iso(a), iso(b)] for a, b in spans[-20:]],
            }
        if not times:
            out["never_materialized"] = True
        return out
    # private, as Dagster 1.13 has no public cron iterator (nor is croniter installed): its schedules' own, DST-aware
    from dagster._utils.schedules import cron_string_iterator

    spans = []
    it = cron_string_iterator(since, policy["deadline_cron"], policy["timezone"])
    for d in it:
        dl = d.timestamp()
        if dl > now:
            break
        if not any(dl - policy["lower_bound_s"] <= t <= dl for t in times):
            nxt = next((t for t in times if t > dl), now)
            spans.append((dl, nxt))
    out["fail"] = {
        "episodes": len(spans),
        "stale_seconds": round(sum(b - a for a, b in spans), 1),
        "longest_seconds": round(max((b - a for a, b in spans), default=0.0), 1),
        "spans": [[iso(a), iso(b)] for a, b in spans[-20:]],
    }
    return out


def state_changes(instance: dg.DagsterInstance, key: dg.AssetKey, limit: int = 200) -> list[dict]:
    """Freshness state changes the daemon recorded (runless FRESHNESS_STATE_CHANGE events)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recs = instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.FRESHNESS_STATE_CHANGE, asset_key=key),
            limit=limit,
            ascending=False,
        )
    out = []
    for r in recs:
        d = r.event_log_entry.dagster_event.event_specific_data
        out.append(
            {
                "at": iso(getattr(d, "state_change_timestamp", None) or r.timestamp),
                "from": getattr(getattr(d, "previous_state", None), "value", None),
                "to": getattr(getattr(d, "new_state", None), "value", None),
            }
        )
    return out[::-1]


SLA_CHECKS = ("latency_within_target", "availability_within_target")


def alerts(instance: dg.DagsterInstance, key: dg.AssetKey, since: float, limit: int = 200) -> list[dict]:
    """The SLA and freshness alerts published for the asset (sensors/sla.py records each as an observation)."""
    recs = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=key, after_timestamp=float(since)), limit=limit, ascending=False
    ).records
    out = []
    for r in recs:
        meta = r.asset_observation.metadata or {}
        if "nautilus/alert" in meta:
            out.append(
                {
                    "at": iso(r.timestamp),
                    **{k: _plain(meta.get(k)) for k in ("nautilus/alert", "severity", "figure", "value", "target")},
                }
            )
    return out[::-1]


def sla_checks(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict:
    """The latest evaluation of each measured SLA check of the asset (passed, with its figures)."""
    out = {}
    for name in SLA_CHECKS:
        ck = dg.AssetCheckKey(key, name)
        entry = getattr(instance.event_log_storage.get_latest_asset_check_execution_by_key([ck]).get(ck), "event", None)
        d = entry.dagster_event.event_specific_data if entry is not None and entry.dagster_event else None
        if isinstance(d, dg.AssetCheckEvaluation):
            out[name] = {
                "passed": d.passed,
                "at": iso(entry.timestamp),
                **{
                    k: _plain(v)
                    for k, v in (d.metadata or {}).items()
                    if k in ("p99_latency_ms", "availability", "requests", "window_s")
                },
            }
    return out


def _lineage_value(meta: dict) -> dict | None:
    v = meta.get("dagster/column_lineage")
    if v is None:
        return None
    v = getattr(v, "value", v)
    return {
        col: [{"asset": d.asset_key.to_user_string(), "column": d.column_name} for d in deps]
        for col, deps in v.deps_by_column.items()
    }


def _plain(v):
    v = getattr(v, "value", v)
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)[:200]


def materializations(instance: dg.DagsterInstance, key: dg.AssetKey, limit: int) -> tuple[list, dict | None]:
    """The asset's last `limit` materializations, newest first, and the column lineage of the newest that has one."""
    recs = instance.fetch_materializations(key, limit=limit, ascending=False).records
    runs = (
        {
            r.dagster_run.run_id: r
            for r in instance.get_run_records(dg.RunsFilter(run_ids=list({x.run_id for x in recs})))
        }
        if recs
        else {}
    )
    out, lineage = [], None
    for rec in recs:
        m = rec.asset_materialization
        meta = m.metadata or {}
        if lineage is None:
            lineage = _lineage_value(meta)
        rr = runs.get(rec.run_id)
        tags = rr.dagster_run.tags if rr else {}
        out.append(
            {
                "run_id": rec.run_id,
                "timestamp": iso(rec.timestamp),
                "partition": m.partition,
                "job": rr.dagster_run.job_name if rr else None,
                "status": rr.dagster_run.status.value if rr else None,
                "trigger": trigger_of(tags),
                "batch_id": tags.get("nautilus/batch_id"),
                "code_version": (m.tags or {}).get("dagster/code_version"),
                "data_version": (m.tags or {}).get("dagster/data_version"),
                "metadata": {
                    k: _plain(v)
                    for k, v in meta.items()
                    if k
                    in (
                        "first_message_id",
                        "last_message_id",
                        "delta_version",
                        "dagster/row_count",
                        "lake/trades_version",
                        "consumed",
                        "model_version",
                        "rows",
                    )
                },
            }
        )
    return out, lineage


def materialization_times(
    instance: dg.DagsterInstance, key: dg.AssetKey, since: float, cap: int = 200_000
) -> tuple[list[float], float]:
    """Materialization times after `since`, paged; past `cap` records the window starts at the first one kept."""
    out, cursor = [], None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_timestamp=float(since)),
            limit=10_000,
            cursor=cursor,
            ascending=False,
        )
        out.extend(r.timestamp for r in page.records)
        if not page.has_more or len(out) >= cap:
            break
        cursor = page.cursor
    out.reverse()
    truncated = len(out) >= cap
    return out, (out[0] if truncated and out else since)


def build_report(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    limit: int = 10,
    history_days: float = 7.0,
    now: float | None = None,
) -> dict:
    now = now or time.time()
    since = now - history_days * 86400
    ag = defs.resolve_asset_graph()
    keys = sorted(ag.get_all_asset_keys(), key=lambda k: k.to_user_string())
    products: dict[str, dict] = {}
    for key in keys:
        node = ag.get(key)
        if key.path[0] not in PRODUCTS or not node.is_materializable:
            continue
        prod = products.setdefault(key.path[0], {"product": key.path[0], "group": node.group_name, "assets": {}})
        ups, edges = upstream(ag, key)
        mats, lineage = materializations(instance, key, limit)
        times, window_start = materialization_times(instance, key, since)
        policy = _policy(node)
        static_lineage = _lineage_value(dict(node.metadata or {}))
        meta = dict(node.metadata or {})
        schema = meta.get("dagster/column_schema")
        schema = getattr(schema, "value", schema)
        prod["assets"][key.to_user_string()] = {
            "owners": list(node.owners),
            "kinds": sorted(node.kinds),
            "group": node.group_name,
            "description": (getattr(ag.get(key), "description", None) or "")[:300],
            "table": _plain(meta.get("dagster/table_name")),
            "columns": [{"name": c.name, "type": c.type} for c in schema.columns] if schema else [],
            "code_version": node.code_version,
            "partitioned": node.partitions_def is not None,
            "upstream": ups,
            "edges": edges,
            "topics": [u for u in ups if is_topic(ag.get(dg.AssetKey.from_user_string(u)))],
            "column_lineage": lineage or static_lineage,
            "sla": {
                "freshness": policy,
                "latency_target_ms": _plain(meta.get("nautilus/latency_target_ms")),
                "availability_target": _plain(meta.get("nautilus/availability_target")),
            },
            "freshness": {
                "current": _current_state(instance, key),
                "history": stale_intervals(times, policy, window_start, now),
                "materializations_in_window": len(times),
                "state_changes": state_changes(instance, key),
                "alerts": alerts(instance, key, since),
                "sla_checks": sla_checks(instance, key),
            },
            "last_materializations": mats,
        }
    for prod in products.values():
        a = prod["assets"].values()
        prod["owners"] = sorted({o for x in a for o in x["owners"]})
        prod["topics"] = sorted({t for x in a for t in x["topics"]})
    return {
        "generated_at": iso(now),
        "instance": _instance_name(instance),
        "history_days": history_days,
        "products": [products[p] for p in PRODUCTS if p in products],
        "topics": [k.to_user_string() for k in keys if is_topic(ag.get(k))],
    }


def _current_state(instance, key) -> str | None:
    try:
        rec = instance.get_freshness_state_records([key]).get(key)
    except Exception:  # noqa: BLE001  (an older storage without the table)
        return None
    return rec.freshness_state.value if rec else None


def _instance_name(instance) -> str:
    from resources.settings import load

    return load().instance or str(instance.root_directory)
