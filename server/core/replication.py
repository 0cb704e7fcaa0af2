"""The one rule for acknowledging a durable write: it is on disk on the primary and on enough replicas.

A failover promotes a replica; whatever the old primary had not passed on is gone. So a write the
server acknowledges (an article revision, a partner change, a push destination) is sent in one
pipeline with a ``WAITAOF 1 <n> <timeout>`` (Redis 7.2+: fsynced on the primary and on ``n``
replicas) or, on older Redis, ``WAIT <n> <timeout>`` (received by ``n`` replicas, which with
``appendfsync always`` on the replica is fsynced before it acknowledges), on the same connection as
the write, since both count that connection's own writes. Fewer replicas within the timeout raise
:class:`WriteNotConfirmed`, a 503: the write may still be committed, and an identical retry then
answers ``unchanged``.

``n`` is ``SYNDICATE_MIN_REPLICAS_ACKED``, or by default 1 when the primary has replicas and 0 for a
single Redis (no wait at all), read at start-up, every second (the replication watch) and after a wait
fell short:

- with Sentinel, from the sentinels: the replicas of the current primary that they see replicating
  (up, reporting the role of a replica). While a failover is in progress the count stays as it was;
  a primary that was just replaced (alive, still a primary, not yet reconfigured as a replica) does
  not count, so writes go on on its successor; a replica whose link broke still counts, so writes
  wait (and fail) rather than be acknowledged alone until the sentinels mark it down. Before the
  count is read, every pool of the process follows the primary the sentinels name
  (``follow_primary``), so a write that needs no wait cannot reach a primary being demoted;
- with one URL, from the primary's ``INFO``; for one primary (one replication id) the count only rises,
  so a replica that dropped away makes writes wait (and fail) rather than be acknowledged alone.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import RedisError

from server.core import keys
from server.core.errors import Problem
from server.core.redis_connection import follow_primary

log = logging.getLogger(__name__)
WAITAOF_SINCE = (7, 2)
RETRY_AFTER_SECONDS = 1


class WriteNotConfirmed(Problem):
    status = 503
    slug = "write-not-confirmed"
    replies: list[Any] = []  # the writes' replies: they were carried out on the primary, only not confirmed


@dataclass(frozen=True, slots=True)
class ReplicationState:
    """What ``INFO`` says about the primary: its replication id, its replicas, whether ``WAITAOF``
    exists and whether its AOF is on (``WAITAOF`` counts the primary's own fsync only then)."""

    replid: str
    replicas: int
    waitaof: bool
    local_aof: bool


def read_state(info: dict[str, Any]) -> ReplicationState | None:
    """The state from ``INFO`` (server, replication, persistence), or None when this is not a primary."""
    if info.get("role") != "master":
        return None
    version = tuple(int(p) for p in str(info.get("redis_version", "0.0")).split(".")[:2] if p.isdigit())
    return ReplicationState(replid=str(info.get("master_replid", "")), replicas=int(info.get("connected_slaves", 0)),
                            waitaof=version >= WAITAOF_SINCE, local_aof=str(info.get("aof_enabled", "0")) == "1")


async def _replicating(pool: SentinelConnectionPool) -> int | None:
    """The replicas the sentinels see replicating from the primary; None during a failover."""
    sentinel = pool.sentinel_manager.sentinels[0]  # the one that last named the primary
    master = await sentinel.sentinel_master(pool.service_name)
    if "failover_in_progress" in str(master.get("flags", "")):
        return None
    replicas = await sentinel.sentinel_slaves(pool.service_name)
    if any("promoted" in str(r.get("flags", "")) for r in replicas):
        return None
    return sum(1 for r in replicas if not (r.get("is_sdown") or r.get("is_odown"))
               and r.get("role-reported") == "slave")


class ReplicaAcks:
    """Waits, on the connection of each durable write, for the replicas it needs (see the module)."""

    def __init__(self, redis: Redis, min_replicas: int | None, timeout_seconds: float,
                 pools: list[ConnectionPool] | None = None) -> None:
        self.redis = redis
        self.pools = pools if pools is not None else [redis.connection_pool]
        self.setting = min_replicas
        self.timeout_ms = max(1, round(timeout_seconds * 1000))
        self.state: ReplicationState | None = None
        self._auto = 0

    @property
    def required(self) -> int:
        return self._auto if self.setting is None else self.setting

    async def refresh(self) -> None:
        """Follow a primary that moved, and read its replication state again (one ``INFO``, and with
        Sentinel one ``SENTINEL MASTER`` and ``SENTINEL REPLICAS``)."""
        for pool in self.pools:
            with contextlib.suppress(RedisError):  # no sentinel answers: new connections fail alike
                await follow_primary(pool)
        try:
            info: dict[str, Any] = {}
            for section in ("server", "replication", "persistence"):
                info.update(await self.redis.info(section))
        except RedisError as exc:
            log.debug("replication state not read: %s", exc)
            return
        state = read_state(info)
        if state is None:
            return  # a demoted primary, still answering until the pool moves on: keep what we had
        before = self.required
        pool = self.redis.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            try:
                replicating = await _replicating(pool)
            except RedisError as exc:
                log.debug("replicas not counted: %s", exc)
                return
            if replicating is not None:
                self._auto = min(1, replicating)
        elif self.state is None or state.replid != self.state.replid:
            self._auto = min(1, state.replicas)
        else:
            self._auto = max(self._auto, min(1, state.replicas))
        self.state = state
        if self.required != before:
            log.info("durable writes now wait for %d replica(s) (the primary has %d)", self.required, state.replicas)

    def queue_wait(self, pipe: Pipeline) -> int:
        """Queue the wait after the writes in ``pipe`` (a pipeline without MULTI); the replicas it waits
        for (0: none needed, nothing queued)."""
        needed = self.required
        if needed == 0:
            return 0
        state = self.state
        if state is not None and state.waitaof:
            pipe.execute_command("WAITAOF", 1 if state.local_aof else 0, needed, self.timeout_ms)
        else:
            pipe.execute_command("WAIT", needed, self.timeout_ms)
        return needed

    async def confirm(self) -> None:
        """Wait for the replicas to hold every write the primary has now, whoever made it (an idempotent
        retry answering 'unchanged' about a write another connection made, which may not have reached
        them): a small write of this connection's own, then the wait. Replication is ordered, so a
        replica that has it has everything before it. Nothing to do when no replica is needed."""
        if self.required == 0:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(keys.replication_probe())
            await self.execute(pipe)

    async def execute(self, pipe: Pipeline) -> list[Any]:
        """Run the writes queued in ``pipe`` and the wait, on one connection; the writes' replies.
        Raises :class:`WriteNotConfirmed` when fewer replicas than needed had them in time."""
        needed = self.queue_wait(pipe)
        results: list[Any] = await pipe.execute()
        if not needed:
            return results
        reply = results.pop()
        acked = int(reply[1]) if isinstance(reply, list) else int(reply)
        if acked < needed:
            await self.refresh()
            unconfirmed = WriteNotConfirmed(
                f"The write reached {acked} of the {needed} replica(s) it needs within "
                f"{self.timeout_ms} ms (Redis is failing over, or a replica is behind). It may still have been "
                "stored: retry it; an identical retry answers 'unchanged' if it was.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            unconfirmed.replies = results
            raise unconfirmed
        return results
