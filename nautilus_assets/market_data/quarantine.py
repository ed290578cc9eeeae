"""The quarantine as a way back, not a dead end: list what was quarantined, and replay it through the ingest path
once the cause is fixed (`nautilus quarantine list|replay`).

The quarantine keeps each message as it arrived (payload, message id, publish time), so a replay hands exactly that
to `Stream.commit` as a RawBatch: the same validation (event times judged against the original publish time), the
same de-duplication on the message id in both sinks, the same bar recompute and change announcement. A message
already stored counts as stored and is not written again, so a replay, a repeated replay or an interrupted one
stores each message once. Each replayed message gets a row in `quarantine_replays` with its outcome; one still
invalid stays in the quarantine with its new reason."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource
from resources.pulsar import PulsarResource

from .decode import RawBatch
from .ingest import Stream
from .schema import FEEDS
from .sinks import DB

STORED = "stored"
CHUNK = 20_000  # messages per replay batch (the ingest's batch bound)

SELECT_SQL = f"""
SELECT q.topic AS topic, q.message_id AS message_id, q.batch_id AS batch_id, q.reason AS reason,
       q.payload AS payload, toUnixTimestamp64Milli(q.publish_time) AS publish_ms, q.quarantined_at AS quarantined_at,
       r.outcome AS replay_outcome, r.replay_id AS replay_id
FROM {DB}.quarantine AS q FINAL
LEFT JOIN (SELECT topic, message_id, argMax(outcome, replayed_at) AS outcome,
                  argMax(replay_id, replayed_at) AS replay_id
           FROM {DB}.quarantine_replays GROUP BY topic, message_id) AS r USING (topic, message_id)
WHERE q.topic IN {{topics:Array(String)}} AND startsWith(q.reason, {{reason:String}})
  AND q.quarantined_at >= fromUnixTimestamp64Micro({{since_us:Int64}}, 'UTC')
ORDER BY q.quarantined_at, q.message_id"""


def topics_of(feed: str | None) -> list[str]:
    if feed is not None and feed not in FEEDS:
        raise ValueError(f"unknown feed {feed!r}: expected one of {', '.join(FEEDS)}")
    return [FEEDS[feed].topic] if feed else [f.topic for f in FEEDS.values()]


def select(
    ch: ClickHouseResource,
    *,
    feed: str | None = None,
    reason: str = "",
    since: datetime | None = None,
    pending_only: bool = False,
) -> list[dict]:
    """Quarantine rows matching the filters (reason: a prefix such as "too_late"), oldest first, each with the
    outcome of its latest replay ("" if never replayed)."""
    since_us = int((since or datetime(1970, 1, 1, tzinfo=UTC)).timestamp() * 1e6)
    with ch.session() as c:
        res = c.query(
            SELECT_SQL,
            parameters={"topics": topics_of(feed), "reason": reason, "since_us": since_us},
            column_formats={"payload": "bytes"},
        )  # as it arrived, even when not UTF-8
        rows = [dict(zip(res.column_names, r)) for r in res.result_rows]
    return [r for r in rows if not (pending_only and r["replay_outcome"] == STORED)]


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO date or time (UTC unless it says otherwise), or an age such as 90s, 30m, 2h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in units:
        return (now or datetime.now(UTC)) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected an ISO date/time (2026-12-05T10:00) or an age (30m, 2h, 7d)"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _ids(message_id: str) -> tuple[int, int]:
    """(ledger, entry) of a Pulsar message id "ledger:entry:batch_index"."""
    try:
        ledger, entry, *_ = message_id.split(":")
        return int(ledger), int(entry)
    except ValueError:
        return -1, 0


def as_batch(rows: list[dict], accept_late: bool) -> RawBatch:
    payloads = [bytes(r["payload"]) for r in rows]
    ids = [_ids(r["message_id"]) for r in rows]
    return RawBatch(
        payloads=payloads,
        message_ids=[r["message_id"] for r in rows],
        ledger_ids=[i[0] for i in ids],
        entry_ids=[i[1] for i in ids],
        publish_ms=[int(r["publish_ms"]) for r in rows],
        is_replay=lambda i: accept_late,
    )


@contextmanager
def _exclusive(lock_path: Path):
    """One replay at a time per instance: two would race between their look-ups and writes of the same ids."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another quarantine replay holds {lock_path}") from None
        yield


def replay(
    pulsar: PulsarResource,
    lake: LakeResource,
    ch: ClickHouseResource,
    lateness_s: float,
    lock_path: Path,
    *,
    feed: str | None = None,
    reason: str = "",
    since: datetime | None = None,
    accept_late: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Re-ingest the matching quarantined messages not stored by an earlier replay. accept_late exempts them from
    the lateness bound (as a marked historical replay is). Returns counts: taken, stored, still quarantined, and the
    earlier days whose trades it added to (their day-level products are stale: `closed_dates`)."""
    replay_id = f"replay-{datetime.now(UTC):%Y%m%dT%H%M%S}-{time.time_ns() % 10**6}"
    out = {"replay_id": replay_id, "taken": 0, STORED: 0, "quarantined": 0, "reasons": {}, "closed_dates": set()}
    with _exclusive(lock_path):
        rows = select(ch, feed=feed, reason=reason, since=since, pending_only=True)
        for name, f in FEEDS.items():
            mine = sorted((r for r in rows if r["topic"] == f.topic), key=lambda r: _ids(r["message_id"]))
            if not mine:
                continue
            with Stream(f, pulsar, lake, ch, lateness_s, log=log, consume=False) as stream:
                for k in range(0, len(mine), CHUNK):
                    chunk = mine[k : k + CHUNK]
                    res = stream.commit(f"{replay_id}-{name}-{k // CHUNK}", as_batch(chunk, accept_late))
                    outcomes = [
                        f"quarantined: {res.quarantine[r['message_id']]}"
                        if r["message_id"] in res.quarantine
                        else STORED
                        for r in chunk
                    ]
                    record(ch, f.topic, replay_id, [r["message_id"] for r in chunk], outcomes)
                    out["taken"] += len(chunk)
                    out[STORED] += outcomes.count(STORED)
                    out["quarantined"] += len(chunk) - outcomes.count(STORED)
                    out["closed_dates"] |= set(res.closed_dates)
                    for why in res.quarantine.values():
                        key = why.split(":", 1)[0]
                        out["reasons"][key] = out["reasons"].get(key, 0) + 1
    return out


def record(ch: ClickHouseResource, topic: str, replay_id: str, message_ids: list[str], outcomes: list[str]) -> None:
    n, now = len(message_ids), time.time_ns() // 1000
    t = pa.table(
        {
            "topic": pa.array([topic] * n, pa.string()),
            "message_id": pa.array(message_ids, pa.string()),
            "replay_id": pa.array([replay_id] * n, pa.string()),
            "outcome": pa.array(outcomes, pa.string()),
            "replayed_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    with ch.session() as c:
        c.insert_arrow(f"{DB}.quarantine_replays", t)
