"""Serve the product APIs: one uvicorn server per product, each on its own port, in one process (one event loop;
the store queries on its threadpool). `nautilus api` and `nautilus up` start it.

    python -m nautilus_assets.api.serve [--product P ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

import uvicorn

from resources.clickhouse import lower_query_priority
from resources.settings import API_PORTS, Settings, build_resources, load

from .app import Backends, create_app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # several servers share the process: main() handles the signals for all
        yield


def backends(s: Settings) -> Backends:
    r = build_resources(s)
    return Backends(clickhouse=r["clickhouse"], postgres=r["postgres"], lake=r["lake"], redis=r["redis"], env=s.env)


async def serve(s: Settings, products: list[str]) -> None:
    b = backends(s)
    servers = [
        _Server(
            uvicorn.Config(
                create_app(p, b),
                host=s["NAUTILUS_API_HOST"],
                port=s.api_port(p),
                log_level="warning",
                access_log=False,
                loop="uvloop",
                http="httptools",
                lifespan="on",
            )
        )
        for p in products
    ]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: [setattr(srv, "should_exit", True) for srv in servers])
    for p in products:
        print(f"[api] {p}: {s.api_url(p)}  (docs: {s.api_url(p).split('/api/')[0]}/docs)", flush=True)
    await asyncio.gather(*(srv.serve() for srv in servers))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="nautilus-api", description=__doc__)
    ap.add_argument("--product", action="append", choices=list(API_PORTS), help="default: every product")
    a = ap.parse_args(argv)
    s = load()
    nice = int(s["NAUTILUS_API_NICE"])  # 0-19, checked by the settings
    if nice:  # readers wait a little longer on saturated cores; publish -> queryable is the tighter SLA
        os.nice(nice)
        lower_query_priority(nice)
    import uvloop

    uvloop.run(serve(s, a.product or list(API_PORTS)))


if __name__ == "__main__":
    main()
