"""Idempotent creation of what the market-data product stores into: ClickHouse tables, buckets, subscriptions."""

from __future__ import annotations

from resources.clickhouse import ClickHouseResource
from resources.pulsar import PulsarResource

from .ingest import subscribe
from .schema import FEEDS, ddl
from .sinks import DB


def ensure_clickhouse(ch: ClickHouseResource) -> None:
    from .books import STATES
    from .daily import BARS_1D  # the day-level bars, made here like the feed's own tables

    ch.ensure([*ddl(DB), *STATES.ddl(), *BARS_1D.ddl()])


def ensure_subscriptions(pulsar_res: PulsarResource) -> None:
    """Create the durable ingest subscriptions before anything is published, so nothing is missed."""
    with pulsar_res.client() as client:
        for feed in FEEDS.values():
            subscribe(client, feed).close()
