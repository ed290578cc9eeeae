"""ClickHouse through clickhouse-connect: a server by host (production) or embedded chDB (default).

chDB is single-process, so every embedded access opens the path, works and closes it under an
inter-process flock. Keep each `session()` short; nothing holds a chDB client between calls.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import clickhouse_connect
import dagster as dg
from clickhouse_connect.driver.client import Client
from pydantic import Field

_local = threading.local()   # this thread's open sessions, by backend, and its lock counters


def lock_counters() -> dict:
    """This thread's chDB sessions so far: how many, seconds waited for the lock, seconds held (a batch's profile
    is the difference of two snapshots)."""
    return dict(getattr(_local, "counters", None) or {"sessions": 0, "wait": 0.0, "held": 0.0, "open": 0.0})


def _count(key: str, seconds: float) -> None:
    _local.counters = {**lock_counters(), key: lock_counters()[key] + seconds}


@contextmanager
def _flock(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    c = lock_counters()
    with open(path, "a") as fh:
        t0 = time.perf_counter()
        fcntl.flock(fh, fcntl.LOCK_EX)
        t1 = time.perf_counter()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            _local.counters = {**lock_counters(), "sessions": c["sessions"] + 1, "wait": c["wait"] + t1 - t0,
                               "held": c["held"] + time.perf_counter() - t1}


def drop_outdated_parts(client: Client) -> int:
    """Remove the parts that merges replaced, now. Embedded chDB removes them only from a background task that
    first runs ~30 s after an open (short sessions never get there) and, unlike a server, not at shutdown: they
    piled up and every open loaded them all (0.05 s grew to 0.2-0.5 s within minutes). Dropping a partition that
    does not exist clears a table's outdated parts synchronously (StorageMergeTree::dropPartition). Returns
    the tables cleared."""
    tables = client.query("SELECT DISTINCT database, table FROM system.parts WHERE NOT active").result_rows
    for db, table in tables:
        client.command(f"ALTER TABLE `{db}`.`{table}` DROP PARTITION ID 'nautilusnone'")
    return len(tables)


class ClickHouseResource(dg.ConfigurableResource):
    host: str = Field("", description="ClickHouse server host; empty selects embedded chDB")
    port: int = Field(8123, description="HTTP(S) port of the server")
    username: str = Field("default", description="Server user")
    password: str = Field("", description="Server password (from CLICKHOUSE_PASSWORD)")
    secure: bool = Field(False, description="Use HTTPS")
    chdb_path: str = Field("", description="Data directory of embedded chDB")

    @contextmanager
    def session(self) -> Iterator[Client]:
        """A short-lived client; for chDB, exclusive across processes while open. Re-entrant within a thread: a
        session opened inside another reuses it (one open, and one turn of the lock, for a batch's queries)."""
        key = (self.host, self.port, self.chdb_path)
        open_ = getattr(_local, "open", {})
        if key in open_:
            yield open_[key]
            return
        with self._new_session() as client:
            _local.open = {**open_, key: client}
            try:
                yield client
            finally:
                _local.open = {k: v for k, v in _local.open.items() if k != key}

    @contextmanager
    def _new_session(self) -> Iterator[Client]:
        if self.host:
            client = clickhouse_connect.get_client(host=self.host, port=self.port, username=self.username,
                                                   password=self.password, secure=self.secure)
            try:
                yield client
            finally:
                client.close()
            return
        with _flock(self.chdb_path.rstrip("/") + ".lock"):
            t = time.perf_counter()
            client = clickhouse_connect.get_client(interface="chdb", path=self.chdb_path)
            _count("open", time.perf_counter() - t)   # open + close: the fixed cost of a session, apart
            try:
                yield client
                drop_outdated_parts(client)
            finally:
                t = time.perf_counter()
                client.close()
                _count("open", time.perf_counter() - t)

    def ensure(self, statements: list[str]) -> None:
        """Run idempotent DDL (CREATE ... IF NOT EXISTS) in one session."""
        with self.session() as c:
            for stmt in statements:
                c.command(stmt)

    def command(self, sql: str, parameters: dict | None = None):
        with self.session() as c:
            return c.command(sql, parameters=parameters)

    def query_df(self, sql: str, parameters: dict | None = None):
        with self.session() as c:
            return c.query_df(sql, parameters=parameters)

    def scalar(self, sql: str, parameters: dict | None = None):
        with self.session() as c:
            return c.query(sql, parameters=parameters).first_row[0]
