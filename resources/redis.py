"""Redis (or Valkey): the platform's current-state cache. Locally Debian's redis-server, started by the services
command on 127.0.0.1 with a password and no persistence (the cache is derived from the stores and rebuilt when
empty); in production a server by URL (NAUTILUS_REDIS_URL, redis:// or rediss://).

A kind of current state (quotes, indicators, ...) is two hashes and a meta hash under `<prefix>:current:<kind>`:
`values` (field -> JSON), `versions` (field -> a fixed-width version string) and `meta` (updated_at, complete).
Writes are version-guarded in one Lua script: an entry only replaces an older one, so a rebuild from the store
racing a streaming run's write never puts an older value back. `meta.complete` says the hash holds every entry
(written by a rebuild); `meta.updated_at` when a writer last committed to it.
"""
from __future__ import annotations

import time
from typing import Iterable

import dagster as dg
import orjson
import redis
from pydantic import Field

# KEYS: values, versions, meta. ARGV: updated_at, complete ("1" / ""), then field, version, value triples.
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
redis.call('HSET', KEYS[3], 'updated_at', ARGV[1])
if ARGV[2] == '1' then redis.call('HSET', KEYS[3], 'complete', '1') end
return n
"""
VERSION_WIDTH = 40   # versions are compared as strings: every one is zero-padded to this width


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
            c = _clients[key] = redis.Redis.from_url(self.url, password=self.password or None,
                                                     socket_timeout=self.timeout_s,
                                                     socket_connect_timeout=self.timeout_s)
        return c

    def key_names(self, kind: str) -> tuple[str, str, str]:
        base = f"{self.prefix}:current:{kind}"
        return f"{base}:values", f"{base}:versions", f"{base}:meta"

    def put(self, kind: str, entries: Iterable[tuple[str, str, dict]], complete: bool = False) -> int:
        """Write (field, version, value) entries that are newer than what the cache holds; returns how many."""
        argv: list = [repr(time.time()), "1" if complete else ""]
        for field, ver, value in entries:
            argv += [field, ver, orjson.dumps(value, default=str)]
        c = self.client()
        return int(c.eval(_PUT, 3, *self.key_names(kind), *argv))

    def invalidate(self, kind: str) -> None:
        """Forget a kind's state (a writer whose write failed): readers go to the store until it is rebuilt."""
        self.client().delete(*self.key_names(kind))

    def meta(self, kind: str) -> dict:
        m = self.client().hgetall(self.key_names(kind)[2])
        return {k.decode(): v.decode() for k, v in m.items()}

    def get(self, kind: str, fields: list[str] | None = None) -> tuple[dict[str, dict], dict]:
        """(entries by field, meta) in one round trip."""
        return _decode(fields, *_read(self.client().pipeline(transaction=False), self.key_names(kind), fields).execute())

    def async_client(self):
        """An asyncio client (for the product APIs), bound to the event loop that first uses it."""
        import redis.asyncio
        return redis.asyncio.Redis.from_url(self.url, password=self.password or None, socket_timeout=self.timeout_s,
                                            socket_connect_timeout=self.timeout_s)

    async def aget(self, client, kind: str, fields: list[str] | None = None) -> tuple[dict[str, dict], dict]:
        """`get` on an asyncio client."""
        return _decode(fields, *await _read(client.pipeline(transaction=False), self.key_names(kind), fields).execute())

    async def ameta(self, client, kind: str) -> dict:
        return {k.decode(): v.decode() for k, v in (await client.hgetall(self.key_names(kind)[2])).items()}

    def ping(self) -> bool:
        return bool(self.client().ping())


_clients: dict[tuple, redis.Redis] = {}


def _read(pipeline, keys: tuple[str, str, str], fields: list[str] | None):
    values, _, meta = keys
    pipeline.hgetall(meta)
    return pipeline.hmget(values, fields) if fields else pipeline.hgetall(values)


def _decode(fields: list[str] | None, meta: dict, values) -> tuple[dict[str, dict], dict]:
    got = dict(zip(fields, values)) if fields else {k.decode(): v for k, v in values.items()}
    return ({k: orjson.loads(v) for k, v in got.items() if v is not None},
            {k.decode(): v.decode() for k, v in meta.items()})
