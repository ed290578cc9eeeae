"""ClickHouse through clickhouse-connect's HTTP client: a production server, or locally the project's own server
over embedded chDB (scripts/clickhouse_server.py), so both are reached the same way.

Each thread keeps one client per server and reuses it: its pooled keep-alive connections, and its own ClickHouse
session (settings, temporary tables). A client is not shared between threads, as clickhouse-connect requires.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import clickhouse_connect
import dagster as dg
from clickhouse_connect.driver.client import Client
from pydantic import Field

_local = threading.local()  # this thread's clients, by server, its open sessions and its counters
_query_settings: dict = {}  # sent with every query of the clients this process opens from now on


def lower_query_priority(nice: int) -> None:
    """This process's queries run on the server's threads at this nice value (ClickHouse's `os_thread_priority`):
    a process that yields the CPU to others (a streaming-product run) also yields the server's CPU. Clients opened
    earlier keep their settings."""
    _query_settings["os_thread_priority"] = int(nice)


def session_counters() -> dict:
    """This thread's ClickHouse sessions so far: how many, seconds inside them, seconds spent connecting (a batch's
    profile is the difference of two snapshots)."""
    return dict(getattr(_local, "counters", None) or {"sessions": 0, "seconds": 0.0, "connect": 0.0})


def _count(**add: float) -> None:
    c = session_counters()
    _local.counters = {k: c[k] + add.get(k, 0) for k in c}


class _Waits:
    """This process's open ClickHouse sessions, reported every `every` seconds while they last: a run waiting on
    the server (a long query, a busy server) keeps logging, so the ingest sensor's watchdog, which fails a run that
    logged nothing for NAUTILUS_WATCHDOG_SILENT_SECONDS, never takes a waiting run for a dead one."""

    def __init__(self):
        self.open: dict[int, list] = {}  # thread id -> [started, last reported, thread name] (monotonic seconds)
        self.log: Callable[[str], None] | None = None
        self.every, self.thread, self.lock, self.wake = 60.0, None, threading.Lock(), threading.Event()

    def watch(self, log: Callable[[str], None] | None, every: float = 60.0) -> None:
        """Report to `log` (this process's run; None: stop reporting) every `every` seconds from now."""
        self.log, self.every = log, every
        self.wake.set()  # a new interval holds at once, not after the current wait
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, daemon=True, name="clickhouse-waits")
            self.thread.start()

    def enter(self) -> None:
        now = time.monotonic()
        with self.lock:
            self.open[threading.get_ident()] = [now, now, threading.current_thread().name]

    def exit(self) -> None:
        with self.lock:
            self.open.pop(threading.get_ident(), None)

    def _run(self) -> None:
        while True:
            self.wake.wait(max(0.2, self.every / 4))
            self.wake.clear()
            now = time.monotonic()
            with self.lock:
                due = [e for e in self.open.values() if now - e[1] >= self.every]
                for e in due:
                    e[1] = now
            for started, _, name in due:
                if self.log is not None:
                    self.log(
                        f"in a ClickHouse session for {now - started:.0f}s on thread {name} (waiting on the "
                        "server; the run is alive)"
                    )


WAITS = _Waits()


class ClickHouseResource(dg.ConfigurableResource):
    host: str = Field("127.0.0.1", description="ClickHouse server host (locally the project's chDB server)")
    port: int = Field(8123, description="HTTP(S) port of the server")
    username: str = Field("default", description="Server user")
    password: str = Field("", description="Server password (from CLICKHOUSE_PASSWORD)")
    secure: bool = Field(False, description="Use HTTPS")
    compress: bool = Field(False, description="Compress inserts and results (on loopback it only costs CPU)")
    heartbeat_s: float = Field(
        60.0,
        description="A run logs every this many seconds while a ClickHouse session of "
        "it stays open (0: never); below the watchdog's silence bound",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.heartbeat_s > 0 and context.log is not None:
            WAITS.watch(context.log.info, self.heartbeat_s)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self.heartbeat_s > 0:
            WAITS.watch(None)  # the run is over: its log takes no more lines

    @contextmanager
    def session(self) -> Iterator[Client]:
        """This thread's client. Re-entrant: a session opened inside another is the same one. A failure inside
        the outermost session drops the client (its server session may be gone); the next session reconnects."""
        key = (self.host, self.port, self.username)
        open_ = getattr(_local, "open", set())
        clients = getattr(_local, "clients", None)
        if clients is None:
            clients = _local.clients = {}
        if key in open_:
            yield clients[key]
            return
        if key not in clients:
            t = time.perf_counter()
            clients[key] = clickhouse_connect.get_client(
                host=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                secure=self.secure,
                compress=self.compress,
                settings=dict(_query_settings),
            )
            _count(connect=time.perf_counter() - t)
        _local.open = open_ | {key}
        t = time.perf_counter()
        WAITS.enter()
        try:
            yield clients[key]
        except BaseException:
            clients.pop(key).close()
            raise
        finally:
            WAITS.exit()
            _local.open = _local.open - {key}
            _count(sessions=1, seconds=time.perf_counter() - t)

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
