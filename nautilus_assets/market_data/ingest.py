"""Micro-batches: consume from the durable Shared subscription, decode and validate, write both sinks,
then acknowledge. A message is acknowledged only after both sinks (and the quarantine) committed it."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields

import pulsar
import pyarrow as pa

from nautilus_assets import current
from resources import schemas, system_topics
from resources.clickhouse import ClickHouseResource, session_counters
from resources.lake import LakeResource
from resources.pulsar import PulsarResource
from resources.redis import RedisResource
from resources.topics import BARS_CHANGES, BOOK_CHANGES

from . import books, changes, checks, faults, sinks
from .decode import RawBatch, decode, reject_reused_keys
from .schema import ORDERBOOK_DEPTH10, REPLAY_PROPERTY, SUBSCRIPTION, Feed


@dataclass
class BatchResult:
    batch_id: str
    consumed: int = 0
    written_delta: int = 0
    written_clickhouse: int = 0
    valid: int = 0
    quarantined: int = 0
    duplicates_in_batch: int = 0
    bars_recomputed: int = 0
    delta_version: int | None = None
    first_message_id: str = ""
    last_message_id: str = ""
    seconds: dict = field(default_factory=dict)
    rows: pa.Table | None = field(default=None, repr=False)  # the batch's valid rows
    quarantine: dict = field(default_factory=dict, repr=False)  # message id -> reason, of the quarantined
    bar_keys: list = field(default_factory=list, repr=False)  # (instrument, minute) the batch touched
    book: books.BookBatch | None = field(default=None, repr=False)  # what an order-book batch did to the books
    # read for the batch's checks after its acknowledgement, before the next batch writes (Stream(inspect=True))
    stored_span: pa.Table | None = field(default=None, repr=False)  # ClickHouse rows of its message-id span
    bars_check: dict | None = field(default=None, repr=False)
    table_rows: int = -1
    inspected: Future | None = field(default=None, repr=False)  # done when the three above are read

    @property
    def closed_dates(self) -> list[str]:
        """UTC dates before today whose trades the batch added to (late trades): their day-level products are stale."""
        today = time.time() // 86400
        return sorted({time.strftime("%Y-%m-%d", time.gmtime(m)) for _, m in self.bar_keys if m // 86400 < today})

    @property
    def already_stored(self) -> int:
        """Valid messages both sinks had already (redelivered or re-run)."""
        return self.valid - self.written_clickhouse

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in DETAIL_FIELDS}
        return {**out, "already_stored": self.already_stored}


DETAIL_FIELDS = ("rows", "quarantine", "bar_keys", "book", "stored_span", "bars_check", "table_rows", "inspected")


def subscribe(client: pulsar.Client, feed: Feed, receiver_queue_size: int = 20_000) -> pulsar.Consumer:
    return schemas.subscribe(  # declares the feed's registered schema (resources/schemas.py); data() stays the bytes
        client,
        feed.topic,
        SUBSCRIPTION,
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
        receiver_queue_size=receiver_queue_size,
    )


# A fresh consumer on Apache Pulsar may wait well over 300 ms for its first dispatch (a burst test saw a run
# receive nothing from a 45,000-message backlog): wait longer for the first message than between messages.
FIRST_MESSAGE_WAIT_MS = 5000


def receive(
    consumer: pulsar.Consumer, max_messages: int, max_wait_s: float, idle_ms: int = 300, first_ms: int = 0
) -> list:
    """What was pending when the batch started: stops at max_messages, after max_wait_s, when the
    subscription is idle for idle_ms (first_ms, if longer, before the first message), or at the first
    message published after the batch started."""
    out = []
    started_ms = time.time() * 1000
    deadline = time.monotonic() + max_wait_s
    while len(out) < max_messages and time.monotonic() < deadline:
        try:
            wait_ms = idle_ms if out else max(idle_ms, min(first_ms, int((deadline - time.monotonic()) * 1000)))
            msg = consumer.receive(timeout_millis=wait_ms)
        except pulsar.Timeout:
            break
        out.append(msg)
        if msg.publish_timestamp() > started_ms:
            break
    return out


def to_raw(msgs: list) -> RawBatch:
    """Columns of a received batch; message ids as 'ledger:entry:batch_index'. pulsar.Message and the C++ messages
    receive_window(raw=True) gives have the same public methods (the wrapper's delegate to the C++ object's)."""
    ids = [x.message_id() for x in msgs]
    ledgers, entries = [i.ledger_id() for i in ids], [i.entry_id() for i in ids]  # 2x faster than parsing str(id)
    return RawBatch(
        payloads=[x.data() for x in msgs],
        message_ids=[f"{ledger}:{entry}:{i.batch_index()}" for ledger, entry, i in zip(ledgers, entries, ids)],
        ledger_ids=ledgers,
        entry_ids=entries,
        publish_ms=[x.publish_timestamp() for x in msgs],
        is_replay=lambda i: msgs[i].properties().get(REPLAY_PROPERTY) == "historical",
    )


def receive_window(
    consumer: pulsar.Consumer,
    max_messages: int,
    window_s: float,
    poll_ms: int = 1000,
    opened: float | None = None,
    raw: bool = False,
) -> list:
    """One batch of a long-lived consumer: waits up to poll_ms for a first message, then takes what arrives until
    window_s after `opened` (the previous batch's start; default: the first message), at most max_messages.
    A commit that took longer than the window leaves only what is already queued to take: a batch starts at most
    once a window, yet never waits when messages are waiting. raw=True returns pulsar-client's C++ message objects
    (no Python wrapper per message: a third of the receive cost); consumer.acknowledge takes them as they are."""
    # private, as none is public: pulsar-client 3.13's receive and batch_receive always wrap each message
    recv = consumer._consumer.receive if raw else consumer.receive
    try:
        out = [recv(poll_ms)]
    except pulsar.Timeout:
        return []
    deadline = max(time.monotonic(), (opened or 0.0) + window_s) if opened else time.monotonic() + window_s
    while len(out) < max_messages:
        try:
            out.append(recv(max(0, int((deadline - time.monotonic()) * 1000))))
        except pulsar.Timeout:
            break
    return out


class Stream:
    """One feed's consumer on the durable Shared subscription, committing micro-batches back to back.

    Each `commit` decodes and validates a batch, writes Delta and ClickHouse (each de-duplicating on the message
    id within the batch's (ledger, entry) span), recomputes the touched bars, then acknowledges: a message is
    acknowledged only after both sinks (and the quarantine) committed it. The Delta table handle is kept and
    updated incrementally, so a batch never re-reads the table's log from the start.

    inspect=True reads what the batch's ClickHouse checks need (`BatchResult.inspected`) on a thread of its own
    once the batch is acknowledged, while the next batch is received and decoded; the next batch writes ClickHouse
    only after those reads, so a check sees exactly its batch's writes (the bars check recomputes the batch's
    minutes from the stored trades: another batch's trades without its bars would read as a mismatch)."""

    def __init__(
        self,
        feed: Feed,
        pulsar_res: PulsarResource,
        lake: LakeResource,
        ch: ClickHouseResource,
        lateness_s: float,
        log: Callable[[str], None] = print,
        inspect: bool = False,
        cache: RedisResource | None = None,
        consume: bool = True,
    ):
        """consume=False: no consumer on the subscription (commits of RawBatches from elsewhere, such as a
        quarantine replay, which must not take the live messages it would never acknowledge)."""
        self.feed, self.pulsar_res, self.lake, self.ch, self.cache = feed, pulsar_res, lake, ch, cache
        self.consume = consume
        self.lateness_ns, self.log = int(lateness_s * 1e9), log
        self._client_cm = self.client = self.consumer = self.delta = self.announcer = self._opened = None
        self.depth_delta = None  # the depth-10 table's handle (order-book feed)
        self._inspector = ThreadPoolExecutor(1, thread_name_prefix="batch-checks") if inspect else None
        self._inspecting: Future | None = None

    def __enter__(self) -> Stream:
        if self.feed.optional:  # a store older than the feed's latest version gets its columns (idempotent)
            self.ch.ensure(self.feed.migrations(sinks.DB))
        self._client_cm = self.pulsar_res.client()
        self.client = self._client_cm.__enter__()
        if self.consume:
            self.consumer = subscribe(self.client, self.feed)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._inspector is not None:
                self._inspector.shutdown(wait=True)
            if self.announcer is not None:
                self.announcer.close()
            if self.consumer is not None:
                self.consumer.close()
        finally:
            self._client_cm.__exit__(*exc)

    def receive(self, max_messages: int, max_wait_s: float, first: bool = False) -> list:
        """A long-lived batch window, or (first=True) what is pending when a one-shot batch starts."""
        if first:
            return receive(self.consumer, max_messages, max_wait_s, first_ms=FIRST_MESSAGE_WAIT_MS)
        opened = time.monotonic()
        msgs = receive_window(self.consumer, max_messages, max_wait_s, opened=self._opened, raw=True)
        if msgs:
            self._opened = opened
        return msgs

    def commit(self, batch_id: str, msgs: list | RawBatch, ack: bool = True) -> BatchResult:
        """One micro-batch: Pulsar messages (acknowledged once stored unless ack=False), or a RawBatch."""
        feed, ch, res = self.feed, self.ch, BatchResult(batch_id)
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            res.seconds[name] = round(now - clock, 3)
            clock = now

        given = isinstance(msgs, RawBatch)  # messages from elsewhere (a quarantine replay): nothing to acknowledge
        res.consumed = len(msgs.message_ids) if given else len(msgs)
        if not res.consumed:
            return res
        ch0 = session_counters()
        raw = msgs if given else to_raw(msgs)
        res.first_message_id, res.last_message_id = raw.message_ids[0], raw.message_ids[-1]
        lap("unpack")
        dec = decode(feed, raw, feed.topic, batch_id, time.time_ns(), self.lateness_ns)
        lap("decode")
        version = time.time_ns()
        # ClickHouse and Delta are written at the same time (Delta in a thread): the two sinks are independent and
        # both release the GIL. The batch's ClickHouse queries share one session (`c`), passed down.
        with ThreadPoolExecutor(2 if feed.book else 1) as pool:
            with ch.session() as c:
                in_delta = pool.submit(sinks.stored_in_delta, self.lake, feed, dec.table, self.delta)
                if feed.unique_key:  # a new message reusing a key (trade id) an earlier batch stored
                    reject_reused_keys(feed, dec, raw, sinks.stored_keys(c, feed, dec.table, batch_id))
                    lap("trade_ids")
                in_ch = sinks.stored_in_clickhouse(c, feed, dec.table)
                self.delta, in_delta = in_delta.result()
                # a stored message id with other content is another message, never a redelivery to drop
                dec.move_to_quarantine(raw, sinks.changed_content(feed, dec.table, [in_ch, in_delta]))
                lap("stored_ids")
                if feed.book:  # what cannot be applied to the books (a gap, a crossing group) is not stored
                    res.book, unapplied = books.rebuild_batch(c, dec.table, feed.topic, batch_id, time.time_ns())
                    dec.move_to_quarantine(raw, unapplied)
                    lap("book")
                res.rows, res.quarantine = dec.table, {q["message_id"]: q["reason"] for q in dec.quarantine}
                res.valid, res.quarantined = dec.table.num_rows, len(dec.quarantine)
                res.duplicates_in_batch = dec.duplicates
                delta = pool.submit(
                    sinks.write_delta,
                    self.lake,
                    feed,
                    dec.table,
                    batch_id,
                    self.delta,
                    set(in_delta["message_id"].to_pylist()),
                )
                if self._inspecting is not None:  # the previous batch's check reads come first (class doc)
                    self._inspecting.result()
                    lap("checks_wait")
                res.written_clickhouse = sinks.write_clickhouse(
                    c, feed, dec.table, set(in_ch["message_id"].to_pylist())
                )
                faults.point("between_sinks", feed.name, batch_id)
                sinks.write_quarantine(c, feed.topic, batch_id, dec.quarantine)
                lap("clickhouse")
                if feed.bars:
                    res.bar_keys = sinks.touched_minutes(dec.table)
                    res.bars_recomputed = sinks.recompute_bars(c, res.bar_keys, batch_id, version)
                    lap("bars")
                if res.book is not None:  # depth rows in both sinks (Delta beside ClickHouse), then the states
                    depth_delta = pool.submit(self._write_depth_delta, res.book.depth, batch_id)  # (books.py)
                    res.book.written_clickhouse = sinks.write_clickhouse(c, ORDERBOOK_DEPTH10, res.book.depth)
                    res.book.written_delta = depth_delta.result()
                    books.write_states(c, res.book.states, batch_id, version)
                    lap("book_write")
            res.written_delta, res.delta_version, self.delta = delta.result()
            lap("delta_wait")
        system_topics.publish_quarantine_alert(
            self.client, feed.topic, batch_id, res.consumed, dec.table.num_rows, dec.quarantine
        )
        if feed.cached and self.cache is not None:  # the latest row per instrument (top of book), before the ack
            current.publish(
                self.cache,
                feed.name,
                current.latest_arrow(current.KINDS[feed.name], dec.table, "ts_event", feed.content_columns),
                log=self.log,
            )
            lap("cache")
        if feed.bars or feed.book:  # the minutes that changed, on the feed's change topic, before the ack (changes.py)
            keys = res.bar_keys if feed.bars else sinks.touched_minutes(res.book.depth) if res.book else []
            if self.announcer is None:
                self.announcer = changes.Announcer(self.client, BOOK_CHANGES if feed.book else BARS_CHANGES)
            self.announcer.announce(batch_id, version, keys)
            lap("announce")
        ch1 = session_counters()
        res.seconds.update(
            clickhouse_session=round(ch1["seconds"] - ch0["seconds"], 3),
            clickhouse_connect=round(ch1["connect"] - ch0["connect"], 3),
        )
        if ack and not given:
            faults.point("before_ack", feed.name, batch_id)
            half = len(msgs) // 2
            for i, m in enumerate(msgs):
                if i == half:
                    faults.point("mid_ack", feed.name, batch_id)
                self.consumer.acknowledge(m)
            lap("ack")
            faults.completed(feed.name)
        self.log(
            f"{batch_id}: {res.valid} valid ({res.written_delta} new in Delta v{res.delta_version}, "
            f"{res.written_clickhouse} new in ClickHouse), {res.quarantined} quarantined; {res.seconds}"
        )
        if self._inspector is not None:
            res.inspected = self._inspecting = self._inspector.submit(self._inspect, res)
        return res

    def _write_depth_delta(self, depth: pa.Table, batch_id: str) -> int:
        """The depth-10 rows the Delta table does not hold yet (the order-book feed's second table)."""
        self.depth_delta, held = sinks.stored_in_delta(self.lake, ORDERBOOK_DEPTH10, depth, self.depth_delta)
        written, _, self.depth_delta = sinks.write_delta(
            self.lake, ORDERBOOK_DEPTH10, depth, batch_id, self.depth_delta, set(held["message_id"].to_pylist())
        )
        return written

    def _inspect(self, res: BatchResult) -> float:
        """The ClickHouse reads of the batch's checks (on the inspector thread); returns their seconds. A session
        of this thread's own: it overlaps the next batch's look-ups in the commit thread's session."""
        t, feed = time.perf_counter(), self.feed
        with self.ch.session() as c:
            res.stored_span = checks.clickhouse_span(c, feed, res.rows)
            res.table_rows = int(c.query(f"SELECT count() FROM {sinks.DB}.{feed.name}").first_row[0])  # part metadata
            res.bars_check = checks.bars_mismatches(c, res.bar_keys) if feed.bars else None
            if res.book is not None:
                res.book.crossed_stored = books.crossed_in_span(c, res.book.depth)
        return round(time.perf_counter() - t, 3)


def run_batch(
    feed: Feed,
    pulsar_res: PulsarResource,
    lake: LakeResource,
    ch: ClickHouseResource,
    batch_id: str,
    max_messages: int,
    max_wait_s: float,
    lateness_s: float,
    log: Callable[[str], None] = print,
    ack: bool = True,
) -> BatchResult:
    """One batch of what is pending, on a consumer of its own (tests, benchmarks, one-shot tools)."""
    with Stream(feed, pulsar_res, lake, ch, lateness_s, log) as stream:
        t = time.perf_counter()
        msgs = stream.receive(max_messages, max_wait_s, first=True)
        received_s = round(time.perf_counter() - t, 3)
        log(f"{batch_id}: received {len(msgs)} messages from {feed.topic}")
        res = stream.commit(batch_id, msgs, ack=ack)
        res.seconds = {"receive": received_s, **res.seconds}
        return res
