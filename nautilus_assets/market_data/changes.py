"""The bars' change feed (persistent://nautilus/market-data/bars-changes): after each committed trades batch, the
instrument-minutes whose 1-minute bars it (re)wrote, with the bars' version and the batch id.

Downstream streaming products consume it on a subscription of their own, so they learn what changed without
scanning the bars table or waiting for a run of the market-data product to end (the data-mesh contract: a
product announces what it changed; its consumers decide what to recompute). Published before the batch is
acknowledged: a crash in between re-runs the batch, which re-announces the same minutes (consumers recompute
them from the stored bars, which changes nothing)."""

from __future__ import annotations

import orjson
import pandas as pd
import pulsar

from resources.topics import BARS_CHANGES

SCHEMA = "nautilus.bars.changes/1"


def message(
    batch_id: str,
    version: int,
    keys: list[tuple[str, int]] | None = None,
    spans: dict[str, tuple[int, int]] | None = None,
) -> dict:
    """The announcement of one batch: its touched (instrument, minute start in epoch s) keys, or, for bulk loads,
    a (first, last) minute span per instrument."""
    if spans is None:
        spans = {}
        for inst, m in keys or []:
            lo, hi = spans.get(inst, (m, m))
            spans[inst] = (min(lo, m), max(hi, m))
    out = {
        "schema": SCHEMA,
        "batch_id": batch_id,
        "version": version,
        "instruments": {i: [int(lo), int(hi)] for i, (lo, hi) in sorted(spans.items())},
    }
    if keys is not None:
        out["keys"] = [[i, int(m)] for i, m in keys]
    return out


class Announcer:
    """A producer of the change feed on an open client; `announce` returns once the broker stored the message."""

    def __init__(self, client: pulsar.Client):
        self.producer = client.create_producer(BARS_CHANGES, block_if_queue_full=True, batching_enabled=False)

    def announce(self, batch_id: str, version: int, keys=None, spans=None) -> None:
        if keys or spans:
            self.producer.send(orjson.dumps(message(batch_id, version, keys, spans)), partition_key=batch_id)

    def close(self) -> None:
        self.producer.close()


def announce_once(client: pulsar.Client, batch_id: str, version: int, keys=None, spans=None) -> None:
    a = Announcer(client)
    try:
        a.announce(batch_id, version, keys, spans)
    finally:
        a.close()


def subscribe(client: pulsar.Client, subscription: str, topics: list[str] | None = None) -> pulsar.Consumer:
    """A product's durable Shared subscription to the change feed (and any further topics it consumes)."""
    return client.subscribe(
        [BARS_CHANGES, *(topics or [])],
        subscription,
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
        receiver_queue_size=1000,
    )


def since_by_instrument(payloads: list[bytes]) -> tuple[dict[str, pd.Timestamp], list[str], int]:
    """Per instrument, the first minute any of the announcements touched; the announcing batch ids; and how many
    payloads were not announcements (only this platform produces here: those are counted, logged and skipped)."""
    first: dict[str, int] = {}
    batches, bad = [], 0
    for p in payloads:
        try:
            msg = orjson.loads(p)
            spans = msg["instruments"] if isinstance(msg, dict) and msg.get("schema") == SCHEMA else None
            parsed = {str(i): int(lo) for i, (lo, _hi) in spans.items()}
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            bad += 1
            continue
        batches.append(str(msg.get("batch_id")))
        for inst, lo in parsed.items():
            first[inst] = min(first.get(inst, lo), lo)
    return {i: pd.Timestamp(m, unit="s") for i, m in first.items()}, batches, bad
