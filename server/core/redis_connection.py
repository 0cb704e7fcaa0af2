"""Connecting to Redis: the embedded one or ``REDIS_URL``, and checking it can keep our promises.

``REDIS_URL`` is one Redis, or a Sentinel service (:mod:`server.core.redis_address`). A Sentinel
client's pool is redis-py's :class:`~redis.asyncio.sentinel.SentinelConnectionPool`, made blocking
like the direct one: each new connection asks the sentinels for the current primary, and a connection
that fails or meets ``READONLY`` (a primary demoted under it) is dropped, so the next command (and
the one retry) goes to the primary the sentinels name now. Every client follows a failover by itself.

With an external Redis the server reads its configuration at start-up and warns when an acknowledged
write might not be on disk (AOF off, or ``appendfsync`` other than ``always``) or when durable keys
could be evicted (a ``maxmemory-policy`` other than ``noeviction`` or ``volatile-*``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from server.core.redis_address import DirectRedis, RedisAddress, SentinelRedis

log = logging.getLogger(__name__)


MAX_CONNECTIONS = 256
POOL_WAIT_SECONDS = 20.0
SENTINEL_TIMEOUT_SECONDS = 0.5  # one sentinel's answer; an unreachable one costs at most this per lookup


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (discovery, failover) with the blocking pool's wait for a free
    connection; closing it also closes the connections to the sentinels.

    A connection released while it still points at a primary that has since been replaced is
    disconnected (it reconnects to the current one when next used): redis-py's asyncio pool does not
    check ``owns_connection`` on release, and its own ``owns_connection`` fails on this base class."""

    def owns_connection(self, connection: Connection) -> bool:
        return (not self.is_master or self.master_address is None
                or self.master_address == (connection.host, connection.port))

    async def release(self, connection: AbstractConnection) -> None:
        if isinstance(connection, Connection) and not self.owns_connection(connection):
            await connection.disconnect()
        await super().release(connection)

    async def aclose(self) -> None:
        await super().aclose()
        for sentinel in self.sentinel_manager.sentinels:
            await sentinel.aclose()


async def connect(address: RedisAddress | str, *, decode_responses: bool = True, timeout: float = 10.0,
                  max_connections: int = MAX_CONNECTIONS, pool_wait_seconds: float = POOL_WAIT_SECONDS,
                  socket_timeout: float | None = 5.0) -> Redis:
    """A client on its own pool. A blocking pool: under a burst callers wait (up to
    ``pool_wait_seconds``) for a connection instead of failing with "too many connections". A command
    that gets no answer within ``socket_timeout`` fails (a paused or overloaded Redis must not hold a
    request), and one that meets a connection the server closed (a stale pooled one, after a Redis
    restart, or one to a primary that was demoted) is retried once on a fresh connection. A timeout is
    not retried: a paused Redis costs a request one ``socket_timeout``, not two."""
    if isinstance(address, str):
        address = DirectRedis(address)
    options: dict[str, Any] = dict(decode_responses=decode_responses, health_check_interval=30,
                                   max_connections=max_connections, timeout=pool_wait_seconds,
                                   socket_timeout=socket_timeout,
                                   socket_connect_timeout=min(socket_timeout or 5.0, 5.0),
                                   retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    pool: BlockingConnectionPool
    if isinstance(address, SentinelRedis):
        pool = _sentinel_pool(address, options)
    else:
        pool = BlockingConnectionPool.from_url(address.url, **options)
    client = Redis(connection_pool=pool)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await client.ping()
            return client
        except Exception:
            if loop.time() > deadline:
                await client.aclose()
                raise
            await asyncio.sleep(0.05)


async def follow_primary(pool: ConnectionPool) -> None:
    """With Sentinel, ask who the primary is now; if it moved, the pool drops its connections to the
    old one (idle ones at once, busy ones when released). A connection to a primary being demoted gets
    no error until the demotion (Sentinel can take 10 s to reconfigure a live old primary); this moves
    the pool within a second, called by the replication watch and after a write's wait fell short."""
    if isinstance(pool, SentinelConnectionPool):
        await pool.get_master_address()  # type: ignore[no-untyped-call]


def on_current_primary(pool: ConnectionPool, connection: AbstractConnection) -> bool:
    """False when ``connection`` points at a primary the sentinels have replaced (always True
    without Sentinel): a long-lived connection (pub/sub) should then be made again."""
    if isinstance(pool, BlockingSentinelPool) and isinstance(connection, Connection):
        return pool.owns_connection(connection)
    return True


def _sentinel_pool(address: SentinelRedis, options: dict[str, Any]) -> BlockingSentinelPool:
    tls: dict[str, Any] = {"ssl": True, **dict(address.tls_files)} if address.tls else {}
    sentinel_timeout = min(SENTINEL_TIMEOUT_SECONDS, options["socket_connect_timeout"])
    sentinel_options: dict[str, Any] = dict(socket_timeout=sentinel_timeout, socket_connect_timeout=sentinel_timeout,
                                            decode_responses=True, **tls)
    if address.sentinel_password is not None:
        sentinel_options.update(username=address.sentinel_username, password=address.sentinel_password)
    manager = Sentinel(list(address.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    return BlockingSentinelPool(address.service, manager, db=address.db, username=address.username,  # type: ignore[no-untyped-call]
                                password=address.password, **tls, **options)


def describe_failure(exc: RedisError) -> str:
    """A Redis error in one short line for an operator (redis-py names every sentinel it tried, with its
    whole connection settings, in a no-primary error)."""
    if isinstance(exc, MasterNotFoundError):
        return ("no sentinel answered with the service's primary: check the sentinel addresses, the "
                "service name and, with rediss+sentinel://, the certificates (ssl_ca_certs)")
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


async def durability_warnings(client: Redis) -> list[str]:
    """What this Redis cannot promise, in words an operator can act on (empty when all is well)."""
    try:
        config = {}
        for name in ("appendonly", "appendfsync", "maxmemory-policy"):
            config.update(await client.config_get(name))
    except ResponseError:
        return ["cannot read the Redis configuration (CONFIG is disabled); durability is not verified: "
                "make sure it runs with appendonly yes, appendfsync always and maxmemory-policy "
                "noeviction or volatile-lru"]
    warnings = []
    if config.get("appendonly") != "yes":
        warnings.append("Redis has appendonly no: stored articles are lost if Redis restarts; "
                        "set appendonly yes")
    elif config.get("appendfsync") != "always":
        warnings.append(f"Redis has appendfsync {config.get('appendfsync')}: up to a second of acknowledged "
                        "writes can be lost in a crash; set appendfsync always")
    policy = config.get("maxmemory-policy") or ""
    if policy != "noeviction" and not policy.startswith("volatile-"):
        warnings.append(f"Redis has maxmemory-policy {policy}: it may evict articles; set volatile-lru")
    return warnings
