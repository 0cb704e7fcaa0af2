"""A cursor poll as an acknowledgement: ``GET /feeds/<feed>/<format>?since=N`` says the reader has every
revision up to change N that the feed's since pages show, like a consumer committing its offset.

Receipts of the pages themselves are buffered in the poll ledger and written every flush interval, so
a process killed in between loses them (issue 11, item 2). The reader's next cursor poll heals that, on
whichever process it lands: at each flush the acknowledgements buffered there are applied to what the
partner still owes (its outstanding articles, usually none): an article whose latest change is at or
before N and that the feed's since pages show (:func:`server.domain.feeds.since_page_shows`) was
received at its latest version. Only the outstanding set is read, never the change log, so a cursor poll
costs one ``ZRANGE`` per (partner, feed) and flush interval.
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


class CursorAcks:
    def __init__(self, redis: Redis, store: ArticleStore, feeds: Mapping[str, FeedDefinition]) -> None:
        self.redis = redis
        self.store = store
        self.feeds = feeds
        self._writer = ReceiptWriter(redis)

    async def apply(self, acks: Mapping[tuple[str, str], int]) -> int:
        """Write the receipts the acknowledgements prove, ((partner, feed) -> cursor); how many."""
        owed: dict[tuple[str, str], list[str]] = {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for partner, _feed in acks:
                pipe.zrange(keys.partner_outstanding(partner), 0, OWED_READ - 1)
            for ack, ids in zip(acks, await pipe.execute(), strict=True):
                if ids and ack[1] in self.feeds:
                    owed[ack] = ids
        if not owed:
            return 0
        articles = {a.id: a for a in await self.store.get_many(list({i for ids in owed.values() for i in ids}))}
        now, at_ms, written = utc_now(), int(time.time() * 1000), 0
        for (partner, feed_name), ids in owed.items():
            cursor, feed = acks[(partner, feed_name)], self.feeds[feed_name]
            proved = [(a.id, a.version, at_ms) for a in (articles.get(i) for i in ids)
                      if a is not None and a.change_seq <= cursor and since_page_shows(feed, a, now)]
            await self._writer.write(partner, proved)
            written += len(proved)
        return written
