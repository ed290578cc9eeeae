"""SLAs measured, not just declared: each product API's p99 latency and availability over a rolling window, from
its Prometheus metrics, against the product's `nautilus/latency_target_ms` and `nautilus/availability_target`.

Latency is the server time of `/latest` (the point read the targets are about; a bulk read's time follows its
size). Availability is the share of requests (every route) that did not fail on the server's side (5xx), with a
probe that could not reach the API counted as a failed request. A window's figures come from the difference of
two scrapes of the cumulative counters (a restarted API resets them: the window starts again there).

The probe sensor (sensors/sla.py) keeps the scrapes in its cursor, sends one `/latest` a tick (so a product is
measured even when nobody reads it), records the two checks per product as runless asset check evaluations, and
alerts on persistent://nautilus/system/alerts when a check starts failing. The asset checks here evaluate the
same figures on demand (from the UI): a burst of probes, measured by the API's own metrics.
"""

import time
from dataclasses import dataclass

import dagster as dg
import requests
from prometheus_client.parser import text_string_to_metric_families

from resources import access

from .products import PRODUCTS

LATENCY, AVAILABILITY = "latency_within_target", "availability_within_target"
WINDOW_S = 600


@dataclass
class Scrape:
    t: float
    buckets: dict[str, float]  # le -> cumulative count of /latest requests
    requests: float  # every route
    errors: float  # 5xx, every route

    def to_json(self) -> list:
        return [self.t, self.buckets, self.requests, self.errors]

    @classmethod
    def from_json(cls, v: list) -> "Scrape":
        return cls(*v)


def latest_route(product: str) -> str:
    return f"/api/v1/{product}/latest"


def parse(text: str, product: str, t: float | None = None) -> Scrape:
    buckets, total, errors = {}, 0.0, 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("product") != product:
                continue
            if s.name == "nautilus_api_request_duration_seconds_bucket" and s.labels["route"] == latest_route(product):
                buckets[s.labels["le"]] = s.value
            elif s.name == "nautilus_api_requests_total":
                total += s.value
                errors += s.value if s.labels["code"].startswith("5") else 0
    return Scrape(time.time() if t is None else t, buckets, total, errors)


def scrape(base_url: str, product: str, timeout: float = 5) -> Scrape | None:
    """The API's counters now, or None when it cannot be reached."""
    try:
        r = requests.get(f"{base_url}/metrics", timeout=timeout)
        r.raise_for_status()
    except requests.RequestException:
        return None
    return parse(r.text, product)


def probe(api_url: str, token: str, timeout: float = 5) -> bool:
    """One /latest: True unless the API cannot be reached or fails on its side."""
    try:
        return (
            requests.get(f"{api_url}/latest", headers={"Authorization": f"Bearer {token}"}, timeout=timeout).status_code
            < 500
        )
    except requests.RequestException:
        return False


def quantile(q: float, buckets: dict[str, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets (le -> count): linear within the bucket; seconds."""
    pts = sorted((float(le), c) for le, c in buckets.items())
    if not pts or pts[-1][1] <= 0:
        return None
    rank, prev_le, prev_c = q * pts[-1][1], 0.0, 0.0
    for le, c in pts:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0)
        prev_le, prev_c = le, c
    return prev_le


def figures(first: Scrape, last: Scrape, failed_probes: int) -> dict:
    """The window between two scrapes of the same API process."""
    delta = {le: last.buckets.get(le, 0.0) - first.buckets.get(le, 0.0) for le in last.buckets}
    p99 = quantile(0.99, delta)
    requests_ = last.requests - first.requests + failed_probes
    failed = last.errors - first.errors + failed_probes
    return {
        "window_s": round(last.t - first.t, 1),
        "latest_requests": int(max(delta.values(), default=0)),
        "p99_latency_ms": None if p99 is None else round(p99 * 1000, 3),
        "requests": int(requests_),
        "failed_requests": int(failed),
        "failed_probes": failed_probes,
        "availability": 1.0 if requests_ <= 0 else round(1 - failed / requests_, 6),
    }


def evaluate(product: str, fig: dict) -> dict[str, tuple[bool, dict]]:
    """{check: (passed, metadata)} for a window's figures against the product's targets."""
    p = PRODUCTS[product]
    lat = fig["p99_latency_ms"]
    return {
        LATENCY: (lat is not None and lat <= p.latency_target_ms, {**fig, "latency_target_ms": p.latency_target_ms}),
        AVAILABILITY: (
            fig["availability"] >= p.availability_target,
            {**fig, "availability_target": p.availability_target},
        ),
    }


def check_evaluations(product: str, results: dict[str, tuple[bool, dict]]) -> list[dg.AssetCheckEvaluation]:
    key = PRODUCTS[product].asset
    return [
        dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=name,
            passed=passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={k: v for k, v in meta.items() if v is not None},
        )
        for name, (passed, meta) in results.items()
    ]


def burst(settings, product: str, n: int = 50) -> dict:
    """Figures of `n` probes sent now, measured by the API itself (the on-demand check)."""
    base, url = settings.api_url(product).split("/api/")[0], settings.api_url(product)
    first = scrape(base, product)
    failed = sum(not probe(url, settings.env[access.token_var(access.GOVERNANCE)]) for _ in range(n))
    last = scrape(base, product)
    if first is None or last is None:
        return {
            "window_s": 0.0,
            "latest_requests": 0,
            "p99_latency_ms": None,
            "requests": n,
            "failed_requests": n,
            "failed_probes": n,
            "availability": 0.0,
        }
    return figures(first, last, failed)


def _check_specs() -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=p.asset, blocking=False, description=doc.format(p=p))
        for p in PRODUCTS.values()
        for name, doc in (
            (
                LATENCY,
                "p99 server time of the read API's /latest over the last 10 minutes ≤ {p.latency_target_ms} ms "
                "(nautilus/latency_target_ms); evaluated by sla_probe_sensor every 30 s",
            ),
            (
                AVAILABILITY,
                "Share of read-API requests without a server-side failure over the last 10 minutes ≥ "
                "{p.availability_target} (nautilus/availability_target); unreachable counts as failed",
            ),
        )
    ]


@dg.multi_asset_check(
    specs=_check_specs(),
    name="api_sla",
    can_subset=True,
    description="The read APIs' SLAs, measured now from a burst of 50 /latest probes",
)
def api_sla(context: dg.AssetCheckExecutionContext):
    from resources.settings import load

    s = load()
    for product, p in PRODUCTS.items():
        wanted = {k.name for k in context.selected_asset_check_keys if k.asset_key == p.asset}
        if wanted:
            for name, (passed, meta) in evaluate(product, burst(s, product)).items():
                if name in wanted:
                    yield dg.AssetCheckResult(
                        asset_key=p.asset,
                        check_name=name,
                        passed=passed,
                        severity=dg.AssetCheckSeverity.WARN,
                        metadata={k: v for k, v in meta.items() if v is not None},
                    )
