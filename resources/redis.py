"""Redis (or Valkey): the platform's current-state cache. Locally Debian's redis-server, started by the services
command on 127.0.0.1 with a password and no persistence (the cache is derived from the stores and rebuilt when
empty); in production a server by URL (NAUTILUS_REDIS_URL, redis:// or rediss://).

A kind of current state (quotes, indicators, ...) is two hashes under `<prefix>:current:<kind>`: `values`
(field -> JSON, plus the meta fields `__updated_at` and `__complete`, so one HGETALL reads a kind) and `versions`
(field -> a fixed-width version string). Writes are version-guarded in one Lua script: an entry only replaces an
older one, so a rebuild from the store racing a streaming run's write never puts an older value back.
`__complete` says the hash holds every entry (written by a rebuild); `__updated_at` when it was last written.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import dagster as dg
import orjson
import redis
from pydantic import Field

# KEYS: values, versions. ARGV: updated_at, complete ("1" / ""), then field, version, value triples.
_PUT = """
local n = 0
for i = 3, #ARGV, 3 do
  local old = redis.call('HGET', KEYS[2], ARGV[i])
  if (not old) or old <= ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
redis.call('HSET', KEYS[1], '__updated_at', ARGV[1])
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], '__complete', '1') end
return n
"""
VERSION_WIDTH = 40  # versions are compared as strings: every one is zero-padded to this width
META = (b"__updated_at", b"__complete")


def version(*parts: int) -> str:
    """A version string that orders as the tuple of non-negative integers it is made of."""
    return "".join(f"{int(p):020d}" for p in parts).rjust(VERSION_WIDTH, "0")


class RedisResource(dg.ConfigurableResource):
    url: str = Field(description="redis:// or rediss:// URL of the server, without the password")
    password: str = Field("", description="From NAUTILUS_REDIS_PASSWORD")
    prefix: str = Field("nautilus", description="Key prefix (the instance's name locally)")
    timeout_s: float = Field(1.0, description="Socket timeout: a slow cache must not stall a batch")

    def client(self) -> redis.Redis:
        """A client with its own connection pool, cached per process (resources are rebuilt; pools are not)."""
        key = (self.url, self.password, self.timeout_s)
        c = _clients.get(key)
        if c is None:
            c = _clients[key] = redis.Redis.from_url(
                self.url,
                password=self.password or None,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
            )
        return c

    def key_names(self, kind: str) -> tuple[str, str]:
        base = f"{self.prefix}:current:{kind}"
        return f"{base}:values", f"{base}:versions"

    def put(self, kind: str, entries: Iterable[tuple[str, str, dict]], complete: bool = False) -> int:
        """Write (field, version, value) entries that are newer than what the cache holds; returns how many."""
        argv: list = [repr(time.time()), "1" if complete else ""]
        for field, ver, value in entries:
            argv += [field, ver, orjson.dumps(value, default=str)]
        return int(self.client().eval(_PUT, 2, *self.key_names(kind), *argv))

    def invalidate(self, kind: str) -> None:
        """Forget a kind's state (a writer whose write failed): readers go to the store until it is rebuilt."""
        self.client().delete(*self.key_names(kind))

    def set_meta(self, kind: str, **meta: str) -> None:
        self.client().hset(self.key_names(kind)[0], mapping={f"__{k}": v for k, v in meta.items()})

    def meta(self, kind: str) -> dict:
        return split(self.client().hgetall(self.key_names(kind)[0]))[1]

    def get(self, kind: str) -> tuple[dict[str, dict], dict]:
        """(entries by field, meta) in one HGETALL."""
        raw, meta = split(self.client().hgetall(self.key_names(kind)[0]))
        return {k: orjson.loads(v) for k, v in raw.items()}, meta

    def async_client(self):
        """An asyncio client (for the product APIs), bound to the event loop that first uses it."""
        import redis.asyncio

        return redis.asyncio.Redis.from_url(
            self.url,
            password=self.password or None,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
        )

    async def aget_raw(self, client, kind: str) -> tuple[dict[str, bytes], dict]:
        """(entries by field as their JSON bytes, meta) in one HGETALL on an asyncio client."""
        return split(await client.hgetall(self.key_names(kind)[0]))

    def ping(self) -> bool:
        return bool(self.client().ping())


_clients: dict[tuple, redis.Redis] = {}


def split(h: dict[bytes, bytes]) -> tuple[dict[str, bytes], dict[str, str]]:
    """A values hash as (entries, meta): {"updated_at": ..., "complete": ...}."""
    meta = {k[2:].decode(): h.pop(k).decode() for k in META if k in h}
    return {k.decode(): v for k, v in h.items()}, meta
