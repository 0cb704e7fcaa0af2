"""Receipts: "partner P received article A at version V at time T", written here and only here.

A partner's receipts are one hash, ``syn:partner:<name>:received`` (article id ->
``<version>|<epoch ms>``): per article the highest version it has received, by poll or acknowledged
push, and when that version first arrived. Receiving a version also settles what the partner owed:
when ``syn:partner:<name>:required`` asks for that version or an older one, the article leaves the
partner's ``syn:partner:<name>:outstanding`` set.

The rule is one Lua function, :data:`RECEIVE_FUNCTION` (``receive(received, required, outstanding,
article, version, at_ms)``), used by two scripts so that it lives once:

- the poll ledger's flush (:class:`ReceiptWriter`, many receipts of one partner in one call), and
- the push queue's completion script (:mod:`server.push.queue`), so that an acknowledged push is
  received in the same atomic step that ends its delivery: no crash can end the one without the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from server.core import keys

# Lua: a local function for scripts that include it. Its three keys must be among the script's KEYS
# (see receipt_keys). Keeps the highest version and when it first arrived; a lower or equal version
# changes nothing. Then, if the partner is required to receive a version no newer than the highest it
# now has, the article is no longer outstanding; and a raised version of a required article that has
# propagation items (corrections, kills) is noted for them to settle (server.partners.propagation).
RECEIVE_FUNCTION = """
local function receive(received, required, outstanding, to_settle, article, version, at_ms)
  local items = 'ITEMS_PREFIX' .. article .. 'ITEMS_SUFFIX'  -- keys.propagation_article_items(article)
  local highest = tonumber(version)
  local current = redis.call('HGET', received, article)
  local had = current and tonumber(string.match(current, '^(%d+)')) or 0
  if had < highest then
    redis.call('HSET', received, article, version .. '|' .. at_ms)
  else
    highest = had
  end
  local need = redis.call('HGET', required, article)
  if need then
    if had < highest and redis.call('EXISTS', items) == 1 then
      redis.call('SADD', to_settle, received .. '|' .. article)
    end
    if tonumber(need) <= highest then redis.call('ZREM', outstanding, article) end
  end
end
""".replace("ITEMS_PREFIX", keys.PROPAGATION_ARTICLE_ITEMS_PARTS[0]).replace("ITEMS_SUFFIX", keys.PROPAGATION_ARTICLE_ITEMS_PARTS[1])

# KEYS: receipt_keys(partner). ARGV: article, version, epoch ms, article, version, ms, ...
_RECEIVE_MANY_LUA = RECEIVE_FUNCTION + """
for i = 1, #ARGV, 3 do
  receive(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[i], ARGV[i + 1], ARGV[i + 2])
end
return 1
"""


def receipt_keys(partner: str) -> list[str]:
    """The keys :data:`RECEIVE_FUNCTION` takes, in its order: received, required, outstanding, to settle."""
    return [keys.partner_received(partner), keys.partner_required(partner), keys.partner_outstanding(partner),
            keys.propagation_receipts_to_settle()]


def decode(value: str) -> tuple[int, int]:
    """A stored receipt ``<version>|<epoch ms>`` as (version, epoch ms)."""
    version, _, millis = value.partition("|")
    return int(version), int(millis or 0)


class ReceiptWriter:
    """Writes many receipts of one partner in one script call (the poll ledger's flush)."""

    def __init__(self, redis: Redis) -> None:
        self._receive_many = redis.register_script(_RECEIVE_MANY_LUA)

    async def write(self, partner: str, received: Iterable[tuple[str, int, int]], client: Any = None) -> None:
        """Record (article id, version, epoch ms) receipts; ``client`` may be a pipeline to queue it on."""
        args = [value for receipt in received for value in receipt]
        if args:
            await self._receive_many(keys=receipt_keys(partner), args=args, client=client)


async def read(redis: Redis, partner: str) -> dict[str, tuple[int, datetime]]:
    """Per article: the newest version the partner has received, and when it first got it."""
    result = {}
    for article_id, value in (await redis.hgetall(keys.partner_received(partner))).items():
        version, millis = decode(value)
        result[article_id] = (version, datetime.fromtimestamp(millis / 1000, tz=UTC))
    return result


# KEYS: the received hash. ARGV: cutoff ms. In one step, so a receipt written meanwhile (a push
# acknowledged, a flush) is never deleted with the stale one it replaced.
_DROP_OLDER_LUA = """
local fields = redis.call('HGETALL', KEYS[1])
local dropped = 0
for i = 1, #fields, 2 do
  local at = tonumber(string.match(fields[i + 1], '|(%d+)$') or '0')
  if at < tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], fields[i])
    dropped = dropped + 1
  end
end
return dropped
"""


async def drop_older_than(redis: Redis, partner: str, cutoff_ms: int) -> int:
    """Forget receipts first received before ``cutoff_ms``; how many went."""
    return int(await redis.eval(_DROP_OLDER_LUA, 1, keys.partner_received(partner), cutoff_ms))
