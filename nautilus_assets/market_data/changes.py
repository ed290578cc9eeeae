"""The bars' change feed (persistent://nautilus/market-data/bars-changes): after each committed trades batch, the
instrument-minutes whose 1-minute bars it (re)wrote, with the bars' version and the batch id. The order book's
(book-changes) is the same message for the minutes an order-book batch added depth-10 rows to.

Downstream streaming products consume it on a subscription of their own, so they learn what changed without
scanning the bars table or waiting for a run of the market-data product to end (the data-mesh contract: a
product announces what it changed; its consumers decide what to recompute). Published before the batch is
acknowledged: a crash in between re-runs the batch, which re-announces the same minutes (consumers recompute
them from the stored bars, which changes nothing)."""

from __future__ import annotations

import orjson
import pandas as pd
import pulsar

from resources import schemas
from resources.topics import BARS_CHANGES, BOOK_CHANGES

SCHEMA = "nautilus.bars.changes/1"
BOOK_SCHEMA = "nautilus.book.changes/1"


def message(
    batch_id: str,
    version: int,
    keys: list[tuple[str, int]] | None = None,
    spans: dict[str, tuple[int, int]] | None = None,
    schema: str = SCHEMA,
) -> dict:
    """The announcement of one batch: its touched (instrument, minute start in epoch s) keys, or, for bulk loads,
    a (first, last) minute span per instrument."""
    if spans is None:
        spans = {}
        for inst, m in keys or []:
            lo, hi = spans.get(inst, (m, m))
            spans[inst] = (min(lo, m), max(hi, m))
    out = {
        "schema": schema,
        "batch_id": batch_id,
        "version": version,
        "instruments": {i: [int(lo), int(hi)] for i, (lo, hi) in sorted(spans.items())},
    }
    if keys is not None:
        out["keys"] = [[i, int(m)] for i, m in keys]
    return out


class Announcer:
    """A producer of a change feed (the bars', or the book's) on an open client; `announce` returns once the broker
    stored the message."""

    def __init__(self, client: pulsar.Client, topic: str = BARS_CHANGES):
        self.schema = BOOK_SCHEMA if topic == BOOK_CHANGES else SCHEMA
        self.producer = schemas.create_producer(client, topic, block_if_queue_full=True, batching_enabled=False)

    def announce(self, batch_id: str, version: int, keys=None, spans=None) -> None:
        if keys or spans:
            msg = message(batch_id, version, keys, spans, self.schema)
            self.producer.send(orjson.dumps(msg), partition_key=batch_id)

    def close(self) -> None:
        self.producer.close()


def announce_once(client: pulsar.Client, batch_id: str, version: int, keys=None, spans=None) -> None:
    a = Announcer(client)
    try:
        a.announce(batch_id, version, keys, spans)
    finally:
        a.close()


def subscribe(client: pulsar.Client, subscription: str, topics: list[str] | None = None) -> pulsar.Consumer:
    """A product's durable Shared subscription to the change feed (and any further topics it consumes), declaring
    the schemas it reads (resources/schemas.py: AUTO_CONSUME across topics of different schemas)."""
    return schemas.subscribe(
        client,
        [BARS_CHANGES, *(topics or [])],
        subscription,
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
        receiver_queue_size=1000,
    )


def since_by_instrument(payloads: list[bytes], schema: str = SCHEMA) -> tuple[dict[str, pd.Timestamp], list[str], int]:
    """Per instrument, the first minute any of the announcements touched; the announcing batch ids; and how many
    payloads were not announcements (only this platform produces here: those are counted, logged and skipped)."""
    first: dict[str, int] = {}
    batches, bad = [], 0
    for p in payloads:
        try:
            msg = orjson.loads(p)
            spans = msg["instruments"] if isinstance(msg, dict) and msg.get("schema") == schema else None
            parsed = {str(i): int(lo) for i, (lo, _hi) in spans.items()}
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            bad += 1
            continue
        batches.append(str(msg.get("batch_id")))
        for inst, lo in parsed.items():
            first[inst] = min(first.get(inst, lo), lo)
    return {i: pd.Timestamp(m, unit="s") for i, m in first.items()}, batches, bad
