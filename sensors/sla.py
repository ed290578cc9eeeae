"""SLAs watched: the read APIs' latency and availability (nautilus_assets/api/sla.py) and every product's freshness,
with an alert on persistent://nautilus/system/alerts when one starts failing (and when it recovers).

Both sensors launch no runs. Each alert is also recorded as a runless observation of the asset
(metadata `nautilus/alert`), so the lineage audit's SLA history holds it. A failing SLA alerts again every
REPEAT_S while it lasts.

- sla_probe_sensor (every 30 s): per product, one /latest probe and a scrape of /metrics; the window's p99 and
  availability become the `latency_within_target` / `availability_within_target` check evaluations.
- freshness_alerts_sensor (every 10 s): a time-window freshness policy fails when the asset's last
  materialization is older than its fail window (computed here, so the alert does not wait for the freshness
  daemon's 30-s pass); a cron policy's state is the daemon's.
"""

from __future__ import annotations

import time

import dagster as dg
import orjson

from nautilus_assets.api import sla
from nautilus_assets.api.products import PRODUCTS
from resources import access
from resources.pulsar import PulsarResource
from resources.system_topics import ALERT_SCHEMA, publish
from resources.topics import SYSTEM_ALERTS

REPEAT_S = 900


def _now() -> float:  # the sensors' clock (a test moves it)
    return time.time()


def alert(kind: str, severity: str, product: str, asset: dg.AssetKey, figure: str, value, target, **more) -> dict:
    return {
        "schema": ALERT_SCHEMA,
        "type": kind,
        "severity": severity,
        "product": product,
        "asset": asset.to_user_string(),
        "figure": figure,
        "value": value,
        "target": target,
        **more,
        "ts": time.time_ns(),
    }


def observation(a: dict) -> dg.AssetObservation:
    return dg.AssetObservation(
        dg.AssetKey.from_user_string(a["asset"]),
        metadata={
            "nautilus/alert": a["type"],
            "severity": a["severity"],
            "figure": a["figure"],
            "value": a["value"] if a["value"] is not None else "n/a",
            "target": a["target"],
            "alert": dg.MetadataValue.json(a),
        },
    )


def transitions(state: dict, key: str, failing: bool, now: float) -> str | None:
    """'fail' when `key` starts failing (or fails REPEAT_S after its last alert), 'recover' when it stops."""
    prev = state.get(key)
    if failing:
        if prev is None or now - prev >= REPEAT_S:
            state[key] = now
            return "fail"
        return None
    if prev is not None:
        del state[key]
        return "recover"
    return None


def _publish(pulsar: PulsarResource, alerts: list[dict], log) -> None:
    if alerts:
        publish(pulsar, SYSTEM_ALERTS, [(a, a["product"]) for a in alerts])
        for a in alerts:
            log.warning(f"alert {a['type']} {a['asset']}: {a['figure']}={a['value']} (target {a['target']})")


@dg.sensor(
    name="sla_probe_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Probes each product's read API, evaluates p99 latency and availability over 10 minutes "
    "against the product's targets (asset checks), alerts on system/alerts",
)
def sla_probe_sensor(context: dg.SensorEvaluationContext, pulsar: PulsarResource):
    from resources.settings import load

    s, now = load(), _now()
    cur = orjson.loads(context.cursor) if context.cursor else {}
    alerts, events = [], []
    for product, p in PRODUCTS.items():
        c = cur.setdefault(product, {"scrapes": [], "probes": [], "alerting": {}})
        ok = sla.probe(s.api_url(product), s.env[access.token_var(access.GOVERNANCE)])
        c["probes"] = [x for x in c["probes"] if now - x[0] <= sla.WINDOW_S] + [[now, ok]]
        got = sla.scrape(s.api_url(product).split("/api/")[0], product)
        scrapes = [sla.Scrape.from_json(x) for x in c["scrapes"] if now - x[0] <= sla.WINDOW_S]
        if got is not None:
            if scrapes and got.requests < scrapes[-1].requests:  # the API restarted: its counters too
                scrapes = []
            scrapes.append(got)
        c["scrapes"] = [x.to_json() for x in scrapes]
        failed = sum(1 for t, good in c["probes"] if not good and (not scrapes or t >= scrapes[0].t))
        if len(scrapes) >= 2:
            fig = sla.figures(scrapes[0], scrapes[-1], failed)
        elif failed:  # unreachable: no pair of scrapes, only the failed probes
            none = sla.Scrape(now, {}, 0, 0)
            fig = sla.figures(none, none, failed)
        else:
            continue  # one scrape so far: no window yet
        results = sla.evaluate(product, fig)
        events += sla.check_evaluations(product, results)
        for check, figure, target in (
            (sla.LATENCY, "p99_latency_ms", p.latency_target_ms),
            (sla.AVAILABILITY, "availability", p.availability_target),
        ):
            if fig["latest_requests"] == 0 and check == sla.LATENCY:
                continue  # no /latest answered in the window: availability speaks for it
            what = transitions(c["alerting"], check, not results[check][0], now)
            if what:
                a = alert(
                    "sla_breach" if what == "fail" else "sla_recovered",
                    "error" if what == "fail" else "info",
                    product,
                    p.asset,
                    figure,
                    fig[figure],
                    target,
                    window_s=fig["window_s"],
                    requests=fig["requests"],
                )
                alerts.append(a)
                events.append(observation(a))
    _publish(pulsar, alerts, context.log)
    return dg.SensorResult(asset_events=events, cursor=orjson.dumps(cur).decode())


def freshness_failing(context: dg.SensorEvaluationContext, now: float) -> dict[dg.AssetKey, tuple[bool, dict]]:
    """Per asset with a freshness policy that has materialized: (failing, figures)."""
    ag = context.repository_def.asset_graph
    keys = [k for k in ag.get_all_asset_keys() if ag.get(k).freshness_policy is not None]
    records = {r.asset_entry.asset_key: r for r in context.instance.get_asset_records(keys)}
    daemon = {}
    out = {}
    for key in keys:
        rec = records.get(key)
        last = rec.asset_entry.last_materialization_record if rec else None
        if last is None:
            continue
        policy = ag.get(key).freshness_policy
        age = now - last.timestamp
        fail_window = getattr(policy, "fail_window", None)  # time-window policies (cron ones have none)
        if fail_window is not None:
            limit = fail_window.to_timedelta().total_seconds()
            out[key] = (age > limit, {"seconds_since_materialization": round(age, 1), "fail_after_s": limit})
        else:
            if not daemon:
                daemon = context.instance.get_freshness_state_records(keys)
            state = getattr(daemon.get(key), "freshness_state", None)
            out[key] = (
                getattr(state, "value", None) == "FAIL",
                {"seconds_since_materialization": round(age, 1), "fail_after_s": "cron deadline"},
            )
    return out


@dg.sensor(
    name="freshness_alerts_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Publishes an alert on system/alerts when an asset's freshness policy starts failing",
)
def freshness_alerts_sensor(context: dg.SensorEvaluationContext, pulsar: PulsarResource):
    now = _now()
    cur = orjson.loads(context.cursor) if context.cursor else {}
    alerts = []
    for key, (failing, fig) in freshness_failing(context, now).items():
        what = transitions(cur, key.to_user_string(), failing, now)
        if what:
            alerts.append(
                alert(
                    "freshness_failure" if what == "fail" else "freshness_recovered",
                    "error" if what == "fail" else "info",
                    key.path[0],
                    key,  # products own their keys' prefix
                    "seconds_since_materialization",
                    fig["seconds_since_materialization"],
                    fig["fail_after_s"],
                )
            )
    _publish(pulsar, alerts, context.log)
    return dg.SensorResult(asset_events=[observation(a) for a in alerts], cursor=orjson.dumps(cur).decode())


SLA_SENSORS = [sla_probe_sensor, freshness_alerts_sensor]
