"""The durable push queue in Redis: at-least-once delivery, where the newest revision always wins.

For each (destination, article) the queue keeps only the newest version waiting (a hash per
destination) and one entry in a due-time sorted set. A worker *claims* due entries by moving them to a
leased set with a deadline; a worker that dies leaves its leases to expire, and the entries become due
again (so a delivery interrupted by SIGKILL is retried after restart, with the same delivery id).
While one attempt is in flight for an article no other can start, and every attempt sends the newest
version at that moment: version 1 can never arrive after version 2, and a kill never waits behind an
undeliverable version 1. All state changes are Lua scripts, so several workers share the queue safely.

Exactly once in the normal case: per destination and article the highest version acknowledged (2xx)
is kept (``syn:push:<destination>:acked``), set by the script that ends the acknowledged attempt,
which also writes the partner's receipt (:mod:`server.partners.receipts`) in that same call. A version
at or below it is never queued again (:meth:`PushQueue.enqueue`) nor sent (the deliverer reads it with
each claim). Only a crash between a POST and its acknowledgement
repeats a revision, with the same delivery id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

from server.core import keys
from server.partners.receipts import RECEIVE_FUNCTION, receipt_keys

ATTEMPTS_KEPT = 100_000  # entries of syn:push:attempts, approximately

# KEYS: latest hash, due, leased, waiting-since, acked hash. ARGV: article, version, member, now ms.
# A version the destination has acknowledged already (or an older one) is not queued: never sent twice.
# Otherwise keep the newest version; make it due now unless an attempt is in flight (its completion
# reschedules). Returns 1 when queued.
_ENQUEUE_LUA = """
if tonumber(ARGV[2]) <= tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or '0') then return 0 end
redis.call('ZADD', KEYS[4], 'NX', ARGV[4], ARGV[3])
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
if not redis.call('ZSCORE', KEYS[3], ARGV[3]) then
  redis.call('ZADD', KEYS[2], 'LT', ARGV[4], ARGV[3])  -- adds it, or brings a later retry forward
end
return 1
"""

# KEYS: due, leased. ARGV: now ms, lease ms, count. Expired leases go back to due first.
_CLAIM_LUA = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZADD', KEYS[1], ARGV[1], member)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[2]), member)
end
return due
"""

# The end of an attempt, shared by complete, retry and give-up (the rule that makes the newest revision
# win): the lease and the attempt count go, and if a version newer than the one attempted (and than
# any acknowledged) arrived meanwhile (a kill, say) it is due at once, with a fresh count, whatever
# happened to the attempt. Returns true in that case.
# Every script below uses KEYS 1 latest hash, 2 due, 3 leased, 4 state, 5 waiting-since, 6 acked hash
# (7..: its own), and ARGV 1 article, 2 member, 3 the attempted version, 4 now ms (5..: its own).
_FINISH_ATTEMPT_LUA = """
local function newer_is_waiting()
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[1])
  local waiting = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
  local acked = tonumber(redis.call('HGET', KEYS[6], ARGV[1]) or '0')
  if waiting > tonumber(ARGV[3]) and waiting > acked then
    redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
    redis.call('ZADD', KEYS[5], 'NX', ARGV[4], ARGV[2])  -- waiting since the enqueue, not since this attempt
    return true
  end
  return false
end
local function forget()
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[2])
end
"""

# KEYS 7: attempts stream, 8-11 (only when the destination belongs to a partner): its receipt keys
# (server.partners.receipts.receipt_keys). ARGV 5: attempts kept, 6: "1" if the destination
# acknowledged the attempted version ("0": ended with nothing sent), 7..: the attempt record's fields.
# Acknowledged: the version becomes the destination's acknowledged one (never sent again) and, for a
# partner's destination, a receipt, in this same call; the attempt is recorded. Then done unless a
# newer version is waiting.
_COMPLETE_LUA = RECEIVE_FUNCTION + _FINISH_ATTEMPT_LUA + """
if ARGV[6] == '1' then
  if tonumber(ARGV[3]) > tonumber(redis.call('HGET', KEYS[6], ARGV[1]) or '0') then
    redis.call('HSET', KEYS[6], ARGV[1], ARGV[3])
  end
  if #KEYS >= 11 then receive(KEYS[8], KEYS[9], KEYS[10], KEYS[11], ARGV[1], ARGV[3], ARGV[4]) end
end
if #ARGV > 6 then
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 7))
end
if newer_is_waiting() then return 1 end
forget()
return 0
"""

# ARGV 5: retry at ms, 6: state JSON. Failed, to be tried again later, unless a newer version is
# waiting: that one goes now.
_RETRY_LUA = _FINISH_ATTEMPT_LUA + """
if newer_is_waiting() then return 0 end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])
return 1
"""

# KEYS 7: failed hash. ARGV 5: failure JSON. Given up on (kept for ops); a newer version is not given
# up with it.
_GIVE_UP_LUA = _FINISH_ATTEMPT_LUA + """
redis.call('HSET', KEYS[7], ARGV[2], ARGV[5])
if newer_is_waiting() then return 1 end
forget()
return 0
"""

# KEYS: due, leased. ARGV: member, at ms. Hand a claimed delivery back untried (no attempt counted).
_DEFER_LUA = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) end
return 1
"""

@dataclass(frozen=True, slots=True)
class Claim:
    destination_id: str
    article_id: str

    @property
    def member(self) -> str:
        return f"{self.destination_id}|{self.article_id}"

    @classmethod
    def parse(cls, member: str) -> Claim:
        destination_id, _, article_id = member.partition("|")
        return cls(destination_id, article_id)


def now_ms() -> int:
    return int(time.time() * 1000)


class PushQueue:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._enqueue = redis.register_script(_ENQUEUE_LUA)
        self._claim = redis.register_script(_CLAIM_LUA)
        self._complete = redis.register_script(_COMPLETE_LUA)
        self._retry = redis.register_script(_RETRY_LUA)
        self._give_up = redis.register_script(_GIVE_UP_LUA)
        self._defer = redis.register_script(_DEFER_LUA)

    async def enqueue(self, destination_ids: list[str], article_id: str, version: int) -> None:
        """Queue ``version`` for each destination that has not acknowledged it (or a newer one)."""
        if not destination_ids:
            return
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for destination_id in destination_ids:
                member = f"{destination_id}|{article_id}"
                await self._enqueue(keys=[keys.push_latest(destination_id), keys.push_due(), keys.push_leased(),
                                          keys.push_waiting_since(), keys.push_acked(destination_id)],
                                    args=[article_id, version, member, now], client=pipe)
            pipe.publish(keys.PUSH_WAKE_CHANNEL, "1")
            await pipe.execute()

    async def claim(self, count: int, lease_ms: int) -> list[Claim]:
        members = await self._claim(keys=[keys.push_due(), keys.push_leased()], args=[now_ms(), lease_ms, count])
        return [Claim.parse(m) for m in members]

    async def state(self, claim: Claim) -> dict:
        raw = await self.redis.hget(keys.push_state(claim.destination_id), claim.article_id)
        return orjson.loads(raw) if raw else {}

    async def acknowledged(self, claim: Claim, version: int, attempt: dict, partner: str | None) -> bool:
        """The destination acknowledged ``version`` (2xx). In one script call: the attempt is recorded,
        ``version`` becomes the destination's acknowledged one (never queued or sent again), and when the
        destination belongs to ``partner`` its receipt is written (:mod:`server.partners.receipts`).
        True when a newer version is already waiting (it is due now)."""
        fields = [item for pair in attempt.items() for item in pair]
        receipt = receipt_keys(partner) if partner else []
        return bool(await self._complete(keys=[*self._attempt_keys(claim), keys.push_attempts(), *receipt],
                                         args=[claim.article_id, claim.member, version, now_ms(), ATTEMPTS_KEPT,
                                               "1", *fields]))

    async def complete(self, claim: Claim, version: int) -> bool:
        """End the delivery with nothing sent (nothing to send: the destination or article is gone, or
        the revision may not go out); ``version`` is not acknowledged. True when a newer version is
        waiting (it is due now)."""
        return bool(await self._complete(keys=[*self._attempt_keys(claim), keys.push_attempts()],
                                         args=[claim.article_id, claim.member, version, now_ms(), ATTEMPTS_KEPT,
                                               "0"]))

    async def retry_at(self, claim: Claim, at_ms: int, state: dict, version: int) -> None:
        """Try ``version`` again at ``at_ms``, unless a newer version is waiting: that one is due now."""
        await self._retry(keys=self._attempt_keys(claim),
                          args=[claim.article_id, claim.member, version, now_ms(), at_ms, orjson.dumps(state)])

    async def defer(self, claims: list[Claim], at_ms: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for claim in claims:
                await self._defer(keys=[keys.push_due(), keys.push_leased()], args=[claim.member, at_ms], client=pipe)
            await pipe.execute()

    async def give_up(self, claim: Claim, version: int, failure: dict) -> None:
        await self._give_up(keys=[*self._attempt_keys(claim), keys.push_failed()],
                            args=[claim.article_id, claim.member, version, now_ms(), orjson.dumps(failure)])

    @staticmethod
    def _attempt_keys(claim: Claim) -> list[str]:
        """KEYS 1-6 of the scripts that end an attempt (see ``_FINISH_ATTEMPT_LUA``)."""
        return [keys.push_latest(claim.destination_id), keys.push_due(), keys.push_leased(),
                keys.push_state(claim.destination_id), keys.push_waiting_since(), keys.push_acked(claim.destination_id)]

    async def holding(self, article_id: str, destination_ids: list[str]) -> set[str]:
        """Those of the destinations that have a version of the article queued or in flight."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for destination_id in destination_ids:
                pipe.hexists(keys.push_latest(destination_id), article_id)
            answers = await pipe.execute()
        return {d for d, held in zip(destination_ids, answers, strict=True) if held}

    async def waiting(self) -> list[tuple[Claim, float]]:
        """Every unacknowledged delivery and since when it has waited (epoch ms), oldest first."""
        entries = await self.redis.zrange(keys.push_waiting_since(), 0, -1, withscores=True)
        return [(Claim.parse(member), score) for member, score in entries]

    async def depth(self) -> tuple[int, int]:
        """(deliveries due or waiting to retry, deliveries in flight)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.push_due())
            pipe.zcard(keys.push_leased())
            due, leased = await pipe.execute()
        return int(due), int(leased)
