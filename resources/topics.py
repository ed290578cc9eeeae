"""The Pulsar topic map of the platform (one source of truth): tenant, namespaces with their retention, topics.

`ensure(admin_url)` creates them through Apache Pulsar's admin REST API (idempotent), with each namespace's
retention and schema policies, and registers every produced topic's schema (resources/schemas.py). pulsar-lite has
no admin API, creates topics on first use and ignores schemas, so there it is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests

TENANT = "nautilus"

# Schema policy of every namespace. FULL_TRANSITIVE: each new version must read, and be read by, every earlier one,
# so a version may add or drop only fields with a default (optional ones), never retype a field or drop a required
# one. BACKWARD_TRANSITIVE (new reads old) lets a producer drop a required field (verified on Pulsar 4.0.7), which
# would break every consumer written against the earlier versions, and the ingest, which reads all of them.
SCHEMA_COMPATIBILITY = "FULL_TRANSITIVE"
# True: a producer that declares no schema is refused on a topic that has one (pulsar.IncompatibleSchema), so
# nothing can publish to a platform topic without the broker's compatibility check. Every producer goes through
# resources.schemas.create_producer (the publisher, the change feeds, the system topics, the tests and benches);
# consumers without a schema are still let in (the tests' and benches' raw ones).
SCHEMA_VALIDATION_ENFORCED = True


@dataclass(frozen=True)
class Namespace:
    name: str
    retention_minutes: int  # keep acknowledged messages this long ...
    retention_mb: int  # ... up to this size (-1: no size bound)
    topics: tuple[str, ...]
    description: str

    @property
    def path(self) -> str:
        return f"{TENANT}/{self.name}"

    def topic(self, name: str) -> str:
        return f"persistent://{self.path}/{name}"


DAY = 24 * 60
NAMESPACES = {
    ns.name: ns
    for ns in (
        Namespace(
            "market-data",
            7 * DAY,
            10 * 1024,
            ("level1-quotes", "level2-orderbook", "trades", "news-feeds", "bars-changes", "book-changes"),
            "Market data feeds in (quotes, order book, trades, news); out: the bars and the order-book minutes each "
            "committed batch changed",
        ),
        Namespace(
            "engines",
            1 * DAY,
            2 * 1024,
            (
                "risk-metrics",
                "analytics-signals",
                "ml-predictions",
                "portfolio-positions",
                "vpin-microstructure",
                "portfolio-fills",
            ),
            "Each data product announces its materializations here; the model portfolios publish their fills",
        ),
        Namespace(
            "system",
            7 * DAY,
            1024,
            # no `commands` topic: operators act through Dagster and the CLI (README, Pulsar topics)
            ("alerts", "events"),
            "Platform alerts (quarantined messages) and one event per materialization",
        ),
    )
}

MARKET_DATA = NAMESPACES["market-data"]
ENGINES = NAMESPACES["engines"]
SYSTEM = NAMESPACES["system"]

# The topics code publishes to, by role.
TRADES = MARKET_DATA.topic("trades")
LEVEL1_QUOTES = MARKET_DATA.topic("level1-quotes")
BARS_CHANGES = MARKET_DATA.topic("bars-changes")  # the instrument-minutes each trades batch (re)wrote
BOOK_CHANGES = MARKET_DATA.topic("book-changes")  # the instrument-minutes each order-book batch added book updates to
PORTFOLIO_FILLS = ENGINES.topic("portfolio-fills")
SYSTEM_EVENTS = SYSTEM.topic("events")
SYSTEM_ALERTS = SYSTEM.topic("alerts")


def all_topics() -> list[str]:
    return [ns.topic(t) for ns in NAMESPACES.values() for t in ns.topics]


def ensure(admin_url: str, cluster: str | None = None, timeout: float = 30) -> dict:
    """Tenant, namespaces (with retention and schema policies), every topic and its schema, through the admin REST
    API. Idempotent. Raises if the broker refuses a declared schema (incompatible with the topic's history)."""
    s = requests.Session()
    base = f"{admin_url.rstrip('/')}/admin/v2"

    def call(method: str, path: str, ok=(200, 204), **kw) -> requests.Response:
        r = s.request(method, f"{base}{path}", timeout=timeout, **kw)
        if r.status_code not in (*ok, 409):  # 409: already exists
            raise RuntimeError(f"Pulsar admin {method} {path}: {r.status_code} {r.text[:300]}")
        return r

    clusters = cluster and [cluster] or call("GET", "/clusters").json()
    call("PUT", f"/tenants/{TENANT}", json={"adminRoles": [], "allowedClusters": clusters})
    existing = set(call("GET", f"/namespaces/{TENANT}").json())
    created = []
    for ns in NAMESPACES.values():
        if ns.path not in existing:
            call("PUT", f"/namespaces/{ns.path}")
        call(
            "POST",
            f"/namespaces/{ns.path}/retention",
            json={"retentionTimeInMinutes": ns.retention_minutes, "retentionSizeInMB": ns.retention_mb},
        )
        # PUT for the strategy, POST for the flag: the verbs Pulsar 4.0.7 answers (the other gives 405)
        call("PUT", f"/namespaces/{ns.path}/schemaCompatibilityStrategy", json=SCHEMA_COMPATIBILITY)
        call("POST", f"/namespaces/{ns.path}/schemaValidationEnforced", json=SCHEMA_VALIDATION_ENFORCED)
        have = set(call("GET", f"/namespaces/{ns.path}/topics").json())
        for t in ns.topics:
            if ns.topic(t) not in have:
                call("PUT", f"/persistent/{ns.path}/{t}")
                created.append(ns.topic(t))
    from . import schemas  # it reads the feed declarations; registered before any client can attach

    versions = schemas.register(admin_url, timeout=timeout)
    return {"tenant": TENANT, "namespaces": list(NAMESPACES), "created": created, "schemas": versions}


def retention(admin_url: str, namespace: str) -> dict:
    r = requests.get(f"{admin_url.rstrip('/')}/admin/v2/namespaces/{TENANT}/{namespace}/retention", timeout=10)
    r.raise_for_status()
    return r.json()
