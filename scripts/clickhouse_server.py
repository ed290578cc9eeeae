"""ClickHouse's HTTP interface over embedded chDB: the one process of an instance that opens its chDB path.

chDB is the ClickHouse engine as a library, and only one process at a time may open a data path. Before this
server every Dagster process (daemon, webserver, code server, each run) opened, used and closed the path under
an flock: their turns serialized the whole platform (the lock was busy all the time at 8,000 msg/s), every
open + close cost 0.05-0.5 s, and each open leaked ~0.2 MB a table (chdb-io/chdb#298). This process keeps the
engine open for the instance's life and answers the part of ClickHouse's HTTP protocol that clickhouse-connect
and curl use, so every other process is an ordinary ClickHouse HTTP client: the code path of a production server.

Each HTTP session (clickhouse-connect sends a session_id per client) gets its own chDB connection, so its
settings, current database and temporary tables stay its own, and the queries of different clients run at the
same time (chDB releases the GIL while it works). Bound to 127.0.0.1; the password comes from the environment.

    CLICKHOUSE_PASSWORD=... python -m scripts.clickhouse_server --path DIR --port N [--user default]
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb

# URL parameters that steer the HTTP exchange; any other (but param_*) is a setting for the query.
TRANSPORT = {
    "query",
    "database",
    "session_id",
    "session_timeout",
    "session_check",
    "query_id",
    "wait_end_of_query",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
    "enable_http_compression",
    "client_protocol_version",
    "default_format",
    "user",
    "password",
    "compress",
    "decompress",
    "buffer_size",
    "quota_key",
}
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
# An INSERT whose data follows it in the body: "INSERT INTO t (a, b) FORMAT Native\n<data>"
_INSERT_WITH_DATA = re.compile(rb"^\s*(INSERT\s.*?)\bFORMAT\s+(\w+)[ \t]*\r?\n", re.IGNORECASE | re.DOTALL)
_ERROR_CODE = re.compile(r"Code: (\d+)")
AUTHENTICATION_FAILED, SESSION_IS_LOCKED, SESSION_NOT_FOUND, BAD_ARGUMENTS = 516, 373, 372, 36


class QueryError(Exception):
    def __init__(self, code: int, message: str, status: int = 500):
        super().__init__(message)
        self.code, self.status = code, status


class Session:
    """One chDB connection, with the URL settings last applied to it and its current database."""

    def __init__(self, path: str, timeout_s: float):
        self.conn = chdb.connect(path)
        self.lock = threading.Lock()
        self.url_settings: dict[str, str] = {}
        self.database = "default"
        self.timeout_s, self.last_used = timeout_s, time.monotonic()

    def run(self, sql: str, fmt: str, params: dict):
        try:
            return self.conn.query(sql, fmt, params=params) if params else self.conn.query(sql, fmt)
        except Exception as e:  # noqa: BLE001  (chDB raises its errors with ClickHouse's "Code: N. DB::Exception" text)
            msg = str(e)
            m = _ERROR_CODE.search(msg)
            raise QueryError(int(m.group(1)) if m else 1000, msg[msg.find("Code: ") :] if m else msg) from None

    def prepare(self, database: str | None, settings: dict[str, str]) -> None:
        """This request's settings (URL settings hold for one request: the ones it no longer sends are reset)."""
        for k in [k for k in self.url_settings if k not in settings]:
            self.run(f"SET {_name(k)} = DEFAULT", "TabSeparated", {})
            del self.url_settings[k]
        for k, v in settings.items():
            if self.url_settings.get(k) != v:
                self.run(f"SET {_name(k)} = {_literal(v)}", "TabSeparated", {})
                self.url_settings[k] = v
        if database and database != self.database:
            self.run(f"USE `{database.replace('`', '')}`", "TabSeparated", {})
            self.database = database

    def close(self) -> None:
        self.conn.close()


def _name(setting: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", setting):
        raise QueryError(BAD_ARGUMENTS, f"Code: {BAD_ARGUMENTS}. DB::Exception: invalid setting name {setting!r}", 400)
    return setting


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Engine:
    """The open chDB path and its sessions; idle sessions are closed after their timeout."""

    def __init__(self, path: str, tmp_dir: str):
        self.path, self.tmp_dir = path, tmp_dir
        self.sessions: dict[str, Session] = {}
        self.spare: list[Session] = []  # connections for requests without a session
        self.guard = threading.Lock()
        self.anchor = Session(path, float("inf"))  # keeps the engine open while no client is
        threading.Thread(target=self._reap, daemon=True, name="session-reaper").start()

    def session(self, session_id: str | None, timeout_s: float) -> tuple[Session, bool]:
        with self.guard:
            if not session_id:
                return (self.spare.pop() if self.spare else Session(self.path, 0)), False
            s = self.sessions.get(session_id)
            if s is None:
                s = self.sessions[session_id] = Session(self.path, timeout_s)
            return s, True

    def release(self, s: Session, named: bool) -> None:
        s.last_used = time.monotonic()
        if not named:
            with self.guard:
                self.spare.append(s)

    def _reap(self) -> None:
        while True:
            time.sleep(5)
            now = time.monotonic()
            with self.guard:
                idle = [k for k, s in self.sessions.items() if now - s.last_used > s.timeout_s and not s.lock.locked()]
                closing = [self.sessions.pop(k) for k in idle]
            for s in closing:
                s.close()

    def close(self) -> None:
        with self.guard:
            for s in [*self.sessions.values(), *self.spare]:
                s.close()
            self.sessions.clear()
            self.spare.clear()
        self.anchor.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clickhouse-connect pools its connections
    # TCP_NODELAY: a reply is written as headers, then body; with Nagle the body waited for the client's delayed
    # ACK of the headers: 40 ms on every query that returns rows (SELECT 1 took 48 ms over HTTP, 2.1 ms without)
    disable_nagle_algorithm = True
    server_version = "nautilus-chdb"
    timeout = 600  # an idle keep-alive connection's thread ends after this long
    engine: Engine
    user: str
    password: str

    def log_message(self, *args) -> None:  # one line per request would drown the log
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path in ("/ping", "/") and "query" not in dict(parse_qsl(url.query)):
            return self._reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
        self._handle(url)

    def do_POST(self) -> None:
        self._handle(urlsplit(self.path))

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _authorized(self, params: dict) -> bool:
        user, key = self.headers.get("X-ClickHouse-User"), self.headers.get("X-ClickHouse-Key")
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
        user, key = user or params.get("user") or "default", key or params.get("password") or ""
        return hmac.compare_digest(user.encode(), self.user.encode()) and hmac.compare_digest(
            key.encode(), self.password.encode()
        )

    def _handle(self, url) -> None:
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        body = self._body()
        query_id = params.get("query_id") or str(uuid.uuid4())
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Server-Display-Name": "nautilus-chdb",
        }
        try:
            if not self._authorized(params):
                raise QueryError(
                    AUTHENTICATION_FAILED,
                    f"Code: {AUTHENTICATION_FAILED}. DB::Exception: "
                    "default: Authentication failed: password is incorrect, or there is no user with "
                    "such name. (AUTHENTICATION_FAILED)",
                    401,
                )
            body = _decoded(body, self.headers.get("Content-Encoding"))
            out, fmt, summary = self._execute(params, body)
        except QueryError as e:
            return self._reply(
                e.status,
                (str(e).rstrip() + "\n").encode(),
                {**headers, "X-ClickHouse-Exception-Code": str(e.code), "Content-Type": "text/plain; charset=UTF-8"},
            )
        if fmt:
            headers["X-ClickHouse-Format"] = fmt
        headers["X-ClickHouse-Summary"] = json.dumps(summary)
        self._reply(200, out, {**headers, "Content-Type": "application/octet-stream"})

    def _execute(self, params: dict, body: bytes) -> tuple[bytes, str | None, dict]:
        settings = {k: v for k, v in params.items() if k not in TRANSPORT and not k.startswith("param_")}
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        sql, data, data_fmt = params.get("query"), None, None
        if sql is not None and body:
            m = _TRAILING_FORMAT.search(sql)
            if re.match(r"\s*INSERT\s", sql, re.IGNORECASE) and m:
                sql, data, data_fmt = sql[: m.start()], body, m.group(1)
            else:
                sql = sql + "\n" + body.decode()
        elif sql is None:
            m = _INSERT_WITH_DATA.match(body)
            if m:
                sql, data, data_fmt = m.group(1).decode(), body[m.end() :], m.group(2).decode()
            else:
                sql = body.decode()
        if not sql.strip():
            raise QueryError(62, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)", 400)
        timeout = float(params.get("session_timeout") or 60)
        session, named = self.engine.session(params.get("session_id"), timeout)
        if not session.lock.acquire(blocking=False):
            raise QueryError(
                SESSION_IS_LOCKED,
                f"Code: {SESSION_IS_LOCKED}. DB::Exception: Session "
                f"{params.get('session_id')} is locked by a concurrent client. (SESSION_IS_LOCKED)",
            )
        try:
            session.prepare(params.get("database"), settings)
            if data is not None:
                return b"", None, self._insert(session, sql, data, data_fmt)
            explicit = _TRAILING_FORMAT.search(sql)
            fmt = explicit.group(1) if explicit else params.get("default_format")
            if fmt:
                r = session.run(sql, fmt, binds)
                return r.bytes() or b"", fmt, _summary(r)
            # Like a server, say "TabSeparated" only for a statement that produces a result set: one that does
            # prints at least its names line, a DDL statement prints nothing.
            r = session.run(sql, "TabSeparatedWithNames", binds)
            out = r.bytes() or b""
            if not out:
                return b"", None, _summary(r)
            return out[out.find(b"\n") + 1 :], "TabSeparated", _summary(r)
        finally:
            session.lock.release()
            self.engine.release(session, named)

    def _insert(self, session: Session, statement: str, data: bytes, fmt: str) -> dict:
        """chDB reads insert data from a file: the body goes to one in the instance's temporary directory."""
        fd, path = tempfile.mkstemp(dir=self.engine.tmp_dir, suffix=f".{fmt.lower()}")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            r = session.run(f"{statement.rstrip()} FROM INFILE {_literal(path)} FORMAT {fmt}", "TabSeparated", {})
            return {
                "written_rows": str(r.rows_read()),
                "written_bytes": str(r.bytes_read()),
                "elapsed_ns": str(int(r.elapsed() * 1e9)),
            }
        finally:
            os.unlink(path)

    def _reply(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _summary(r) -> dict:
    return {
        "read_rows": str(r.rows_read()),
        "read_bytes": str(r.bytes_read()),
        "written_rows": "0",
        "written_bytes": "0",
        "elapsed_ns": str(int(r.elapsed() * 1e9)),
    }


def _decoded(body: bytes, encoding: str | None) -> bytes:
    if not body or not encoding or encoding == "identity":
        return body
    if encoding in ("gzip", "deflate"):
        import zlib

        return zlib.decompress(body, 47 if encoding == "gzip" else 15)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(body)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(body)
    raise QueryError(
        BAD_ARGUMENTS, f"Code: {BAD_ARGUMENTS}. DB::Exception: unsupported Content-Encoding {encoding}", 415
    )


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # a client killed mid-request (a failed run)
            return
        super().handle_error(request, client_address)


def serve(path: str, port: int, user: str, password: str) -> None:
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(os.path.dirname(path.rstrip("/")), "chdb-tmp")
    os.makedirs(tmp, exist_ok=True)
    engine = Engine(path, tmp)
    Handler.engine, Handler.user, Handler.password = engine, user, password
    server = Server(("127.0.0.1", port), Handler)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"chDB {chdb.__version__} at {path}: ClickHouse HTTP on 127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        engine.close()  # flushes and releases the path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", required=True, help="chDB data directory")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="default")
    a = ap.parse_args()
    serve(a.path, a.port, a.user, os.environ.get("CLICKHOUSE_PASSWORD", ""))


if __name__ == "__main__":
    main()
