"""A cursor poll as an acknowledgement: a reader that follows its cursor (``GET /feeds/<feed>/<format>
?since=L``, then the ``next_url`` it was given, ``?since=N``) proves with its second poll that it got the
page between, like a consumer committing its offset.

Receipts of the pages themselves are buffered in the poll ledger and written every flush interval, so
a process killed in between loses them (issue 11, item 2). The reader's next cursor poll heals that, on
whichever process it lands. Per (partner, feed) the last cursor acknowledged is kept in Redis
(``syn:partner:<name>:cursors``); at each flush, a cursor N above the last one L acknowledges the
changes in (L, N]: every article the partner still owes (its outstanding articles, usually none) whose
latest change is in that range and that the feed's since pages show
(:func:`server.domain.feeds.since_page_shows`) was received at its latest version. The first cursor a
reader presents (taken from a head page, say) only sets L: a head page shows the newest items, not
every change before its cursor, so it proves nothing. An article that was under embargo is left to its
pages' own receipts (its latest change may predate the moment it was shown).

Only the cursor and the outstanding set are read, never the change log; a cursor that did not move
costs one step.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from redis.asyncio import Redis

from server.articles.store import ArticleStore
from server.core import keys
from server.core.values import utc_now
from server.domain.feeds import FeedDefinition, since_page_shows
from server.partners.receipts import ReceiptWriter

OWED_READ = 500  # outstanding articles looked at per acknowledgement (the oldest first)

# KEYS 1: the partner's cursors hash. ARGV: feed, cursor. Raises the feed's cursor (never lowers it).
_ADVANCE_LUA = """
if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1') then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""


class CursorAcks:
    def __init__(self, redis: Redis, store: ArticleStore, feeds: Mapping[str, FeedDefinition]) -> None:
        self.redis = redis
        self.store = store
        self.feeds = feeds
        self._writer = ReceiptWriter(redis)
        self._advance = redis.register_script(_ADVANCE_LUA)

    async def apply(self, acks: Mapping[tuple[str, str], int]) -> int:
        """Write the receipts the acknowledgements prove, ((partner, feed) -> cursor); how many."""
        ranges: dict[tuple[str, str], tuple[int, int]] = {}
        moved: dict[tuple[str, str], int] = {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for partner, feed in acks:
                pipe.hget(keys.partner_cursors(partner), feed)
            for (ack, cursor), before in zip(acks.items(), await pipe.execute(), strict=True):
                if before is None or int(before) < cursor:
                    moved[ack] = cursor
                if before is not None and int(before) < cursor and ack[1] in self.feeds:
                    ranges[ack] = (int(before), cursor)
        written = await self._receive(ranges)
        if moved:  # raised only once the receipts are written: a failure before leaves them to the next flush
            async with self.redis.pipeline(transaction=False) as pipe:
                for (partner, feed), cursor in moved.items():
                    await self._advance(keys=[keys.partner_cursors(partner)], args=[feed, cursor], client=pipe)
                await pipe.execute()
        return written

    async def _receive(self, ranges: dict[tuple[str, str], tuple[int, int]]) -> int:
        if not ranges:
            return 0
        owed: dict[tuple[str, str], list[str]] = {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for partner, _feed in ranges:
                pipe.zrange(keys.partner_outstanding(partner), 0, OWED_READ - 1)
            for ack, ids in zip(ranges, await pipe.execute(), strict=True):
                if ids:
                    owed[ack] = ids
        if not owed:
            return 0
        articles = {a.id: a for a in await self.store.get_many(list({i for ids in owed.values() for i in ids}))}
        now, at_ms, written = utc_now(), int(time.time() * 1000), 0
        for (partner, feed_name), ids in owed.items():
            (after, upto), feed = ranges[(partner, feed_name)], self.feeds[feed_name]
            proved = [(a.id, a.version, at_ms) for a in (articles.get(i) for i in ids)
                      if a is not None and after < a.change_seq <= upto and a.latest.embargoed_until is None
                      and since_page_shows(feed, a, now)]
            await self._writer.write(partner, proved)
            written += len(proved)
        return written
