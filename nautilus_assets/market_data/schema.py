"""Topics, message fields and the stored tables of the market-data product (one source of truth)."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
import pyarrow as pa

from resources.topics import MARKET_DATA

SCHEMA_VERSION = 1  # what the simulator's messages say; each feed reads every version up to its `version`
SUBSCRIPTION = "nautilus-ingest"
MAX_MESSAGE_BYTES = 64 * 1024
REPLAY_PROPERTY = "nautilus-replay"  # message property marking a historical replay (exempt from lateness)

# Columns every stored row carries: where it came from and which micro-batch wrote it.
PROVENANCE = [
    ("topic", pa.string(), "String", "Source Pulsar topic"),
    ("message_id", pa.string(), "String", "Pulsar message id ledger:entry:batch_index"),
    ("ledger_id", pa.int64(), "Int64", "Pulsar ledger id"),
    ("entry_id", pa.int64(), "Int64", "Pulsar entry id"),
    ("batch_id", pa.string(), "String", "Micro-batch (Dagster run) that wrote the row"),
]
TIMES = [
    ("ts_event", pa.int64(), "Int64", "Event time, UTC nanoseconds"),
    ("ts_init", pa.int64(), "Int64", "Time the event was created by the feed, UTC nanoseconds"),
    ("ts", pa.timestamp("us", tz="UTC"), "DateTime64(9, 'UTC')", "ts_event as a timestamp (Delta keeps µs)"),
    ("date", pa.date32(), "Date", "UTC date of ts_event (Delta partition)"),
    ("ingested_at", pa.timestamp("us", tz="UTC"), "DateTime64(6, 'UTC')", "When the batch decoded the row"),
]


@dataclass(frozen=True)
class Feed:
    name: str  # asset/table name
    topic_name: str  # Pulsar topic under nautilus/market-data
    fields: list  # (name, arrow type, ClickHouse type, description, python check)
    order_by: str
    # What the ingest does besides storing the rows, declared per feed, so a new feed is a declaration, not branches:
    unique_key: tuple[str, ...] = ()  # fields naming one event (a venue's trade id per instrument): a message that
    # reuses a key, in its batch or stored earlier, is quarantined as duplicate_<last>
    key_table: str = ""  # ClickHouse side table of the stored keys, for that look-up (TRADE_IDS_DDL)
    bid_ask: tuple[str, str] = ()  # a row whose bid is above its ask is crossed: quarantined
    bars: bool = False  # its rows make the 1-minute bars (recomputed, checked and announced per batch)
    cached: bool = False  # the latest row per instrument goes to the current-state cache (current.KINDS)
    book: bool = False  # order-book deltas: each batch rebuilds the books it touches (books.py) into depth-10 rows
    # Schema evolution: the message versions this feed reads (1..version), and the fields a later version added.
    # Those are optional (absent or null in an older message, null in its stored row; Nullable in ClickHouse),
    # added to a store that predates them by ALTER TABLE ... ADD COLUMN and to the Delta table by a schema merge,
    # and registered with Pulsar as unions with null (resources/schemas.py): a compatible new schema version.
    version: int = 1
    optional: tuple[str, ...] = ()

    @property
    def topic(self) -> str:
        return MARKET_DATA.topic(self.topic_name)

    @property
    def columns(self) -> list[tuple]:
        return (
            [(n, a, c, d) for n, a, c, d, _ in self.fields]
            + TIMES
            + PROVENANCE
            + [("schema_version", pa.int32(), "Int32", "Message schema version")]
        )

    @property
    def content_columns(self) -> list[str]:
        """What a message says: a stored row with the same message id and other values here is not a redelivery."""
        return [n for n, *_ in self.fields] + ["ts_event", "ts_init"]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(n, a) for n, a, _, _ in self.columns])

    @property
    def table_schema(self) -> dg.TableSchema:
        return dg.TableSchema(columns=[dg.TableColumn(n, c, description=d) for n, _, c, d in self.columns])

    @property
    def required(self) -> list[tuple]:
        return [f for f in self.fields if f[0] not in self.optional]

    def migrations(self, db: str) -> list[str]:
        """A store made before a version added fields gets their columns (no-ops on a new one)."""
        return [
            f"ALTER TABLE {db}.{self.name} ADD COLUMN IF NOT EXISTS `{n}` {c}"
            for n, _, c, *_ in self.fields
            if n in self.optional
        ]

    def key_table_ddl(self, db: str) -> str:
        """The side table of stored keys (`key_table`): ordered by the first key field (the instrument), the date,
        then the others, so a batch's look-up reads the few granules around its keys whatever the day holds."""
        types = {n: c for n, _, c, *_ in self.fields}
        first, *rest = self.unique_key
        cols = ", ".join(
            f"{n} {t}" for n, t in [(first, types[first]), ("date", "Date")] + [(k, types[k]) for k in rest]
        )
        order = ", ".join([first, "date", *rest, "message_id"])
        return (
            f"CREATE TABLE IF NOT EXISTS {db}.{self.key_table} (\n  {cols}, message_id String\n"
            f") ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(date) ORDER BY ({order})"
        )

    def clickhouse_ddl(self, db: str) -> str:
        cols = ",\n  ".join(f"`{n}` {c}" for n, _, c, _ in self.columns)
        return (
            f"CREATE TABLE IF NOT EXISTS {db}.{self.name} (\n  {cols},\n"
            f"  INDEX msg (ledger_id, entry_id) TYPE minmax GRANULARITY 1\n"
            f") ENGINE = MergeTree PARTITION BY toYYYYMM(date) ORDER BY ({self.order_by})"
        )


# What a message field must hold (decode.py checks each kind; a tuple is the field's allowed values)
POSITIVE = "positive"  # a finite number > 0
NONNEG = "nonneg"  # a finite number >= 0
TEXT = "text"  # a non-empty string
TEXT_LIST = "text_list"  # a non-empty list of non-empty strings
COUNT = "count"  # an integer >= 0 (sequence numbers, flags, ids)
NS = "ns"  # a positive int64 of UTC nanoseconds
SIDE = ("BUYER", "SELLER", "NO_AGGRESSOR")  # a trade's aggressor (NautilusTrader AggressorSide)
BOOK_ACTION = ("ADD", "UPDATE", "DELETE", "CLEAR")  # NautilusTrader BookAction
BOOK_SIDE = ("BUY", "SELL", "NO_ORDER_SIDE")  # bid, ask; NO_ORDER_SIDE for CLEAR (NautilusTrader OrderSide)

TRADES = Feed(
    "trades",
    "trades",
    [
        ("instrument_id", pa.string(), "LowCardinality(String)", "Instrument, SYMBOL.VENUE", TEXT),
        ("price", pa.float64(), "Float64", "Trade price", POSITIVE),
        ("size", pa.float64(), "Float64", "Trade size", POSITIVE),
        ("aggressor_side", pa.string(), "LowCardinality(String)", "BUYER, SELLER or NO_AGGRESSOR", SIDE),
        ("trade_id", pa.string(), "String", "Venue trade id, unique per instrument", TEXT),
        ("condition", pa.string(), "Nullable(String)", "Venue trade condition code (version 2; null before)", TEXT),
    ],
    order_by="instrument_id, ts_event, message_id",
    unique_key=("instrument_id", "trade_id"),
    key_table="trade_ids",
    bars=True,
    version=2,
    optional=("condition",),
)

QUOTES = Feed(
    "quotes",
    "level1-quotes",
    [
        ("instrument_id", pa.string(), "LowCardinality(String)", "Instrument, SYMBOL.VENUE", TEXT),
        ("bid_price", pa.float64(), "Float64", "Best bid price", POSITIVE),
        ("ask_price", pa.float64(), "Float64", "Best ask price", POSITIVE),
        ("bid_size", pa.float64(), "Float64", "Size at the best bid", POSITIVE),
        ("ask_size", pa.float64(), "Float64", "Size at the best ask", POSITIVE),
    ],
    order_by="instrument_id, ts_event, message_id",
    bid_ask=("bid_price", "ask_price"),
    cached=True,
)

ORDERBOOK_DELTAS = Feed(
    "orderbook_deltas",
    "level2-orderbook",
    [
        ("instrument_id", pa.string(), "LowCardinality(String)", "Instrument, SYMBOL.VENUE", TEXT),
        (
            "action",
            pa.string(),
            "LowCardinality(String)",
            "ADD, UPDATE, DELETE or CLEAR (NautilusTrader BookAction)",
            BOOK_ACTION,
        ),
        ("side", pa.string(), "LowCardinality(String)", "BUY (bid), SELL (ask); NO_ORDER_SIDE for CLEAR", BOOK_SIDE),
        ("price", pa.float64(), "Float64", "Price level (0 for CLEAR)", NONNEG),
        ("size", pa.float64(), "Float64", "Size at the level after the delta (0 for DELETE and CLEAR)", NONNEG),
        ("order_id", pa.int64(), "Int64", "Order id; 0 in a market-by-price book", COUNT),
        (
            "flags",
            pa.int32(),
            "Int32",
            "NautilusTrader RecordFlag bits: F_LAST 128, F_TOB 64, F_SNAPSHOT 32, F_MBP 16",
            COUNT,
        ),
        ("sequence", pa.int64(), "Int64", "The instrument's sequence number, +1 per delta", COUNT),
    ],
    order_by="instrument_id, sequence, message_id",
    unique_key=("instrument_id", "sequence"),
    key_table="orderbook_sequences",
    book=True,
)

_LEVELS = pa.list_(pa.float64())
# Rebuilt from the deltas, never published: one row per event group (a delta with F_LAST) of a synced book, with the
# provenance of that last delta (books.py). A Feed so the sinks store it as they store the feeds (exactly once).
ORDERBOOK_DEPTH10 = Feed(
    "orderbook_depth10",
    "level2-orderbook",
    [
        ("instrument_id", pa.string(), "LowCardinality(String)", "Instrument, SYMBOL.VENUE", TEXT),
        ("sequence", pa.int64(), "Int64", "Sequence of the delta that completed the update", COUNT),
        ("flags", pa.int32(), "Int32", "That delta's RecordFlag bits", COUNT),
        ("bid_prices", _LEVELS, "Array(Float64)", "Bid prices, best first (up to 10 levels)", None),
        ("bid_sizes", _LEVELS, "Array(Float64)", "Sizes at bid_prices", None),
        ("ask_prices", _LEVELS, "Array(Float64)", "Ask prices, best first (up to 10 levels)", None),
        ("ask_sizes", _LEVELS, "Array(Float64)", "Sizes at ask_prices", None),
    ],
    order_by="instrument_id, ts_event, sequence",
)

NEWS = Feed(
    "news",
    "news-feeds",
    [
        ("news_id", pa.string(), "String", "The provider's story id, unique", TEXT),
        ("headline", pa.string(), "String", "Headline", TEXT),
        ("instruments", pa.list_(pa.string()), "Array(String)", "Instruments the story is about", TEXT_LIST),
        ("source", pa.string(), "LowCardinality(String)", "Provider", TEXT),
    ],
    order_by="ts_event, news_id, message_id",
    unique_key=("news_id",),
    key_table="news_ids",
)

FEEDS = {f.name: f for f in (TRADES, QUOTES, ORDERBOOK_DELTAS, NEWS)}

QUARANTINE_DDL = """CREATE TABLE IF NOT EXISTS {db}.quarantine (
  topic String, message_id String, batch_id String, reason String, payload String,
  publish_time DateTime64(3, 'UTC'), quarantined_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree ORDER BY (topic, message_id)"""

# One row per message a `nautilus quarantine replay` took up and what became of it (market_data/quarantine.py).
QUARANTINE_REPLAYS_DDL = """CREATE TABLE IF NOT EXISTS {db}.quarantine_replays (
  topic String, message_id String, replay_id String, outcome String, replayed_at DateTime64(6, 'UTC')
) ENGINE = MergeTree ORDER BY (topic, message_id, replayed_at)"""

BARS_COLUMNS = [
    ("instrument_id", "LowCardinality(String)", "Instrument", ["instrument_id"]),
    ("minute", "DateTime('UTC')", "Start of the UTC minute", ["ts"]),
    ("open", "Float64", "First trade price", ["price", "ts_event"]),
    ("high", "Float64", "Highest trade price", ["price"]),
    ("low", "Float64", "Lowest trade price", ["price"]),
    ("close", "Float64", "Last trade price", ["price", "ts_event"]),
    ("volume", "Float64", "Sum of sizes", ["size"]),
    ("vwap", "Float64", "Σ price·size / Σ size", ["price", "size"]),
    ("trade_count", "UInt64", "Number of trades", ["trade_id"]),
    ("buy_volume", "Float64", "Volume of buyer-initiated trades", ["size", "aggressor_side"]),
    ("sell_volume", "Float64", "Volume of seller-initiated trades", ["size", "aggressor_side"]),
    ("version", "UInt64", "Recompute version; the latest wins (ReplacingMergeTree)", []),
    ("batch_id", "String", "Micro-batch that last recomputed the bar", []),
]

BARS_DDL = (
    "CREATE TABLE IF NOT EXISTS {db}.bars_1m ("
    + ", ".join(f"`{n}` {t}" for n, t, _, _ in BARS_COLUMNS)
    + ") ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(minute) ORDER BY (instrument_id, minute)"
)

BARS_SCHEMA = dg.TableSchema(columns=[dg.TableColumn(n, t, description=d) for n, t, d, _ in BARS_COLUMNS])


# Which message holds each (instrument, date, trade id) (Feed.key_table_ddl): venue trade ids rise, so a batch's
# look-up of reused trade ids reads the few granules around its ids.
TRADE_IDS_BACKFILL = """INSERT INTO {db}.trade_ids SELECT instrument_id, date, trade_id, message_id FROM {db}.trades
WHERE (SELECT count() FROM {db}.trade_ids) = 0"""  # a store from before the table existed: once


def ddl(db: str) -> list[str]:
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        *(f.clickhouse_ddl(db) for f in (*FEEDS.values(), ORDERBOOK_DEPTH10)),
        *(m for f in FEEDS.values() for m in f.migrations(db)),
        *(f.key_table_ddl(db) for f in FEEDS.values() if f.key_table),
        QUARANTINE_DDL.format(db=db),
        QUARANTINE_REPLAYS_DDL.format(db=db),
        BARS_DDL.format(db=db),
        TRADE_IDS_BACKFILL.format(db=db),
    ]
