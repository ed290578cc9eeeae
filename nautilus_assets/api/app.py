"""The read API of one data product (FastAPI): its datasets, its `/latest` view, Prometheus metrics.

    GET /api/v1/<product>                 the product: datasets, SLA, owners
    GET /api/v1/<product>/latest          current state (Redis; the store when the cache cannot answer)
    GET /api/v1/<product>/<dataset>       rows: instrument / portfolio, start / end, as_of, limit, cursor, format
    GET /metrics, /health, /docs, /openapi.json

Every /api/v1 route takes `Authorization: Bearer <token>`: the token names a role (resources/access.py), and the
role must be the product's owner, a declared reader or governance (else 403; no or an unknown token: 401).
Store queries run on the threadpool (blocking clients): fixed SQL templates per dataset with bound parameters;
PostgreSQL in a read-only transaction.
"""

import asyncio
import contextlib
import io
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import parse_qs

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from nautilus_assets import current
from resources import access

from . import datasets as D
from .products import PRODUCTS, ApiProduct

log = logging.getLogger("nautilus.api")
FORMATS = {
    "json": "application/json",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
# sub-millisecond buckets: the /latest target is 1 ms at p99
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Backends:
    """What an API process reads: the resources of resources/settings.py (one set for all its products)."""

    clickhouse: object
    postgres: object  # the portfolio store, connected as the portfolio role
    lake: object
    redis: object | None
    env: dict  # settings (tokens, cache max age)

    @property
    def max_age_s(self) -> float:
        return float(self.env.get("NAUTILUS_CACHE_MAX_AGE_SECONDS") or 60)


class Metrics:
    """Pure ASGI middleware: per-request latency and outcome by route template, and a Server-Timing header."""

    def __init__(self, app, product: str, registry: CollectorRegistry):
        self.app, self.product = app, product
        self.seconds = Histogram(
            "nautilus_api_request_duration_seconds",
            "Server time per request",
            ["product", "route"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "nautilus_api_requests", "Requests by outcome", ["product", "route", "code"], registry=registry
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def timed(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                ms = (time.perf_counter() - t0) * 1000
                message["headers"] = [*message.get("headers", []), (b"server-timing", f"app;dur={ms:.3f}".encode())]
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if path not in ("/metrics", "/health"):
                self.seconds.labels(self.product, path).observe(time.perf_counter() - t0)
                self.requests.labels(self.product, path, str(status[0])).inc()


def create_app(product: str, backends: Backends) -> FastAPI:
    spec: ApiProduct = PRODUCTS[product]
    sets = D.DATASETS[product]
    prefix = f"/api/v1/{product}"

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        task = asyncio.create_task(refresh_ahead()) if backends.redis is not None else None
        yield
        if task is not None:
            task.cancel()

    app = FastAPI(
        lifespan=lifespan,
        title=f"{product} API",
        version="1",
        description=f"Read API of the `{product}` data product (owner: {', '.join(spec.owners)}). "
        f"Datasets: {', '.join(sets)}. Bearer token per role; readers as declared in "
        "resources/access.py.",
    )
    registry = CollectorRegistry()
    fallbacks = Counter(
        "nautilus_api_cache_fallbacks",
        "/latest answered from the store, by reason",
        ["product", "reason"],
        registry=registry,
    )
    bearer = HTTPBearer(auto_error=False, description="The role's token (NAUTILUS_API_<ROLE>_TOKEN)")

    async def reader(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        role = access.role_of_token(backends.env, creds.credentials if creds else None)
        if role is None:
            raise HTTPException(401, "no or unknown bearer token", headers={"WWW-Authenticate": "Bearer"})
        if access.access(role, spec.domain) == "none":
            raise HTTPException(403, f"role {role} may not read {product} (readers: resources/access.py)")
        return role

    Reader = Annotated[str, Depends(reader)]

    @app.exception_handler(D.BadQuery)
    async def bad_query(_: Request, e: D.BadQuery):
        return Response(orjson.dumps({"detail": str(e)}), status_code=400, media_type="application/json")

    @app.get("/health", include_in_schema=False)
    async def health():
        return {"status": "ok", "product": product}

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(prefix, summary="The product: datasets, SLA, owners")
    async def describe(role: Reader):
        return {
            "product": product,
            "domain": spec.domain,
            "owners": list(spec.owners),
            "role": role,
            "sla": {"latency_target_ms": spec.latency_target_ms, "availability_target": spec.availability_target},
            "datasets": [d.info() for d in sets.values()],
            "latest": f"{prefix}/latest",
        }

    kind = current.BY_PRODUCT[product]

    @app.get(prefix + "/latest", summary="Current state: the latest row per instrument (or portfolio)")
    async def latest(
        role: Reader,
        instrument: Annotated[list[str] | None, Query()] = None,
        portfolio: Annotated[list[str] | None, Query()] = None,
        format: Literal["json", "arrow", "parquet"] = "json",
    ):
        wanted = _wanted(D.split(instrument), D.split(portfolio))
        raw, reason = await _from_cache() if backends.redis is not None else (None, "none")
        if raw is not None:  # (a plain JSON read of a usable cache rarely gets here: fast_latest answers it)
            rows, source = [orjson.loads(v) for f, v in raw.items() if wanted(f)], "redis"
        else:
            fallbacks.labels(product, reason).inc()
            source = f"store; cache={reason}"
            try:
                rows = [r for r in await run_in_threadpool(_rebuild) if wanted(kind.field(r))]
            except Exception as e:
                if not _missing_table(e):
                    raise
                rows, source = [], "store; no data yet"  # before the product's first materialization
        if format == "json":
            return Response(
                orjson.dumps({"product": product, "source": source, "count": len(rows), "rows": rows}),
                media_type=FORMATS["json"],
                headers={"x-nautilus-source": source},
            )
        return _render(pa.Table.from_pylist(rows), format, {"x-nautilus-source": source}, extra={})

    def _wanted(instruments: list[str], portfolios: list[str]):
        """A filter on cache fields ("instrument" or "portfolio|instrument" ...; current.Kind.keys)."""
        pos = {k: kind.keys.index(k) for k in ("instrument_id", "portfolio_id") if k in kind.keys}
        if (instruments and "instrument_id" not in pos) or (portfolios and "portfolio_id" not in pos):
            raise D.BadQuery(f"{product}/latest is per {', '.join(kind.keys)}")

        def wanted(field: str) -> bool:
            parts = field.split("|")
            return (not instruments or parts[pos["instrument_id"]] in instruments) and (
                not portfolios or parts[pos["portfolio_id"]] in portfolios
            )

        return wanted

    def _redis():
        if not hasattr(app.state, "redis"):
            app.state.redis = backends.redis.async_client()
        return app.state.redis

    async def _from_cache() -> tuple[dict[str, bytes] | None, str]:
        try:
            raw, meta = await backends.redis.aget_raw(_redis(), kind.name)
        except Exception:  # noqa: BLE001 - an unreachable cache is a miss, never an error
            return None, "unavailable"
        if meta.get("complete") != "1":
            return None, "missing" if not meta else "incomplete"
        if time.time() - float(meta.get("updated_at") or 0) > backends.max_age_s:
            return None, "stale"
        return raw, "hit"

    def _rebuild() -> list[dict]:
        """The store's answer, which also rebuilds the cache (best effort: the answer stands without it)."""
        rows = current.from_store(kind, backends.clickhouse, backends.postgres)
        if backends.redis is not None:
            try:
                current.rebuild(backends.redis, kind, rows)
            except Exception as e:  # noqa: BLE001 - the answer stands; the next request tries again
                log.warning(f"{product}: cache not rebuilt ({type(e).__name__}: {e})")
        return rows

    async def refresh_ahead() -> None:
        """Rebuild the kind from the store when nobody wrote it for half its max age (module doc of current.py)."""
        every = float(backends.env.get("NAUTILUS_CACHE_REFRESH_SECONDS") or 0)
        while every > 0:
            try:
                meta = (await backends.redis.aget_raw(_redis(), kind.name))[1]
                age = time.time() - float(meta.get("updated_at") or 0)
                if meta.get("complete") != "1" or age > backends.max_age_s / 2:
                    await run_in_threadpool(_rebuild)
            except Exception as e:  # noqa: BLE001 - the store or the cache is down: requests fall back meanwhile
                log.warning(f"{product}: refresh-ahead failed ({type(e).__name__}: {e})")
            await asyncio.sleep(every)

    @app.get(
        prefix + "/{dataset}",
        summary="Rows of a dataset, a page at a time",
        responses={200: {"content": {m: {} for m in FORMATS.values()}}},
    )
    def rows(
        role: Reader,
        dataset: str,
        instrument: Annotated[list[str] | None, Query(description="Instrument id(s); repeat or comma-separate")] = None,
        portfolio: Annotated[list[str] | None, Query(description="Portfolio id(s)")] = None,
        start: Annotated[str | None, Query(description="From (inclusive): ISO 8601 or int64 UTC ns")] = None,
        end: Annotated[str | None, Query(description="To (exclusive): ISO 8601 or int64 UTC ns")] = None,
        as_of: Annotated[str | None, Query(description="Lake-backed datasets: Delta version or timestamp")] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
        format: Literal["json", "arrow", "parquet"] = "json",
    ):
        ds = sets.get(dataset)
        if ds is None:
            raise HTTPException(404, f"{product} has no dataset {dataset!r}; it has {', '.join(sets)}")
        q = D.Query(
            D.split(instrument),
            D.split(portfolio),
            D.parse_time(start, "start"),
            D.parse_time(end, "end"),
            limit,
            D.decode_cursor(cursor, ds),
        )
        if q.instruments and not ds.instrument:
            raise D.BadQuery(f"{dataset} is not per instrument")
        if q.portfolios and not ds.portfolio:
            raise D.BadQuery(f"{dataset} is not per portfolio")
        if q.start is not None and q.end is not None and q.start >= q.end:
            raise D.BadQuery("start must be before end")
        version = D.parse_as_of(as_of)
        if version is not None and not ds.lake:
            raise D.BadQuery(f"as_of: {dataset} is not lake-backed (as_of applies to {_lake_sets()})")
        try:
            table, source, headers = _query(ds, q, version)
        except Exception as e:
            if _missing_table(e):
                raise HTTPException(404, f"{product}/{dataset} holds no data yet ({ds.table} does not exist)") from None
            raise
        nxt = D.encode_cursor(table.slice(table.num_rows - 1).to_pylist()[0], ds) if table.num_rows == q.limit else None
        if nxt:
            headers["x-next-cursor"] = nxt
        return _render(
            table,
            format,
            {"x-nautilus-source": source, **headers},
            extra={"product": product, "dataset": dataset, "source": source, "next_cursor": nxt},
        )

    def _query(ds: D.Dataset, q: D.Query, version) -> tuple[pa.Table, str, dict]:
        if version is not None:
            dt = backends.lake.table(ds.lake)
            if dt is None:
                raise HTTPException(404, f"no Delta table {ds.lake} on the lake yet")
            try:
                dt.load_as_version(version)
            except Exception as e:  # noqa: BLE001 - deltalake raises several types for a version it lacks
                raise D.BadQuery(f"as_of={version}: not a version of {ds.lake} ({str(e).splitlines()[0]})") from None
            return D.lake_scan(dt, ds, q), "lake", {"x-delta-version": str(dt.version())}
        if ds.store == "clickhouse":
            sql, params = D.clickhouse_sql(ds, q)
            with backends.clickhouse.session() as c:
                return D.clickhouse_arrow(c, ds, sql, params), "clickhouse", {}
        sql, params = D.postgres_sql(ds, q)
        with backends.postgres.connect() as conn:
            conn.read_only = True
            cur = conn.execute(sql, params)
            names = [d.name for d in cur.description]
            data = cur.fetchall()
        return (
            pa.Table.from_pylist([dict(zip(names, r)) for r in data])
            if data
            else pa.table({n: pa.array([], pa.null()) for n in names}),
            "postgres",
            {},
        )

    def _lake_sets() -> str:
        return ", ".join(f"{p}/{d.name}" for p, ds in D.DATASETS.items() for d in ds.values() if d.lake)

    async def fast_latest(scope, receive, send, asgi) -> None:
        """GET /latest answered from the cache without FastAPI's request machinery (dependencies, validation: 60%
        of a request's CPU). Only the plain case: a reader's token, JSON, a usable cache; anything else (an error
        to explain, another format, a miss) goes to the documented route, which answers it the same way."""
        q = parse_qs(scope["query_string"].decode())
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode()
        role = access.role_of_token(backends.env, auth[7:] if auth[:7].lower() == "bearer " else None)
        if (
            q.get("format", ["json"]) != ["json"]
            or role is None
            or access.access(role, spec.domain) == "none"
            or backends.redis is None
        ):
            return await asgi(scope, receive, send)
        try:
            wanted = _wanted(D.split(q.get("instrument")), D.split(q.get("portfolio")))
        except D.BadQuery:
            return await asgi(scope, receive, send)
        raw, _ = await _from_cache()
        if raw is None:
            return await asgi(scope, receive, send)
        rows = [v for f, v in raw.items() if wanted(f)]
        body = b'{"product":"%s","source":"redis","count":%d,"rows":[%s]}' % (
            product.encode(),
            len(rows),
            b",".join(rows),
        )
        scope["route"] = latest_route
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-nautilus-source", b"redis"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    latest_route = next(r for r in app.routes if getattr(r, "path", None) == prefix + "/latest")
    app.add_middleware(FastPath, path=prefix + "/latest", handler=fast_latest)
    app.add_middleware(Metrics, product=product, registry=registry)
    return app


class FastPath:
    """Pure ASGI: GET `path` goes to `handler(scope, receive, send, app)`, which may hand it on to the app."""

    def __init__(self, app, path: str, handler):
        self.app, self.path, self.handler = app, path, handler

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == self.path:
            return await self.handler(scope, receive, send, self.app)
        return await self.app(scope, receive, send)


def _missing_table(e: Exception) -> bool:
    """A table that the product's first materialization has not created yet (PostgreSQL or ClickHouse)."""
    import psycopg

    return isinstance(e, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)) or any(
        code in str(e) for code in ("UNKNOWN_TABLE", "UNKNOWN_DATABASE", "Code: 60.", "Code: 81.")
    )


def _render(table: pa.Table, fmt: str, headers: dict, extra: dict) -> Response:
    if fmt == "json":
        body = orjson.dumps(
            {**extra, "count": table.num_rows, "rows": table.to_pylist()},
            option=orjson.OPT_SERIALIZE_NUMPY,
            default=_iso,
        )
    elif fmt == "arrow":
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        body = sink.getvalue().to_pybytes()
    else:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        body = buf.getvalue()
    return Response(body, media_type=FORMATS[fmt], headers=headers)


def _iso(v):
    return v.isoformat() if hasattr(v, "isoformat") else str(v)
