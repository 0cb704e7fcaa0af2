"""Rendered feeds, cached twice: in Redis (shared by every process and restart, with a TTL) and in
process memory (the hot path, which makes no Redis round trip).

Freshness is tracked with one generation counter per feed, bumped in the same Lua script that commits
a change (see :mod:`server.articles.store`). Each process keeps the generations in memory: the process that
took a write learns them at once (read-your-writes); every other learns them from the change notice
on Redis pub/sub (:mod:`server.runtime.notifications`), and re-reads them all whenever its subscription
(re)connects, so a missed message cannot leave it stale. A page cached at an older generation is
never served.

Concurrent misses render once: in-process callers share one task, and processes share a Redis lock
(``SET NX PX``) while the others wait for the lock holder's result to appear in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from redis.asyncio import Redis

from server.core import keys
from server.domain.feeds import FeedDefinition
from server.feeds.builder import HEAD, FeedBuilder, RenderedFeed
from server.observability.metrics import Metrics

log = logging.getLogger(__name__)

LOCK_MILLISECONDS = 15_000
WAIT_FOR_OTHER_RENDER_SECONDS = 5.0
# Only head pages, and ``since`` pages near the head (where pollers that follow the cursor converge),
# are kept: a client walking deep or arbitrary cursors gets each page rendered, and fills no cache.
RECENT_CURSOR_CHANGES = 1000
SINCE_PAGE_TTL_SECONDS = 300

_RELEASE_LOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class ChangeNotice:
    """What a commit announces: its change-log sequence and the feeds' new generations."""

    seq: int
    generations: dict[str, int]

    @classmethod
    def parse(cls, message: str) -> ChangeNotice:
        seq, *pairs = message.split(" ")
        generations = {}
        for pair in pairs:
            name, _, generation = pair.rpartition("=")
            generations[name] = int(generation)
        return cls(int(seq), generations)


def page_name(since: int | None, archive: int | None = None) -> str:
    """The cache's name for a page: the feed's head, the page after a ``?since=`` cursor, or an
    archive page (``?archive=``)."""
    if archive is not None:
        return f"archive-{archive}"
    return HEAD if since is None else f"since-{since}"


class FeedCache:
    def __init__(self, store_redis: Redis, cache_redis: Redis, builder: FeedBuilder,
                 feeds: dict[str, FeedDefinition], ttl_seconds: int, memory_bytes: int,
                 metrics: Metrics | None = None, recent_cursor_changes: int = RECENT_CURSOR_CHANGES) -> None:
        self.metrics = metrics or Metrics("unattached")
        self.recent_cursor_changes = recent_cursor_changes
        self.store_redis = store_redis  # generations and pub/sub live with the data (decoded replies)
        self.cache_redis = cache_redis  # rendered bytes (raw replies); may be a separate Redis
        self.builder = builder
        self.feeds = feeds
        self.ttl_seconds = ttl_seconds
        self.memory_bytes = memory_bytes
        self.generations: dict[str, int] = {}
        self.newest_change = 0  # the highest change-log sequence a notice announced (since the last forget)
        self.epoch = ""  # the store's (keys.store_epoch), set by the epoch watch
        self._memory: OrderedDict[tuple[str, str, str, str], tuple[RenderedFeed, float]] = OrderedDict()
        self._memory_used = 0
        self._inflight: dict[tuple, asyncio.Task[RenderedFeed]] = {}
        self._release_lock = cache_redis.register_script(_RELEASE_LOCK_LUA)

    # ----- keeping generations current --------------------------------------------------------------

    async def resync(self) -> None:
        """Read every feed's generation from Redis (at start, and after any reconnect)."""
        names = list(self.feeds)
        values = await self.store_redis.mget([keys.feed_generation(n) for n in names])
        for name, value in zip(names, values, strict=True):
            self._raise_generation(name, int(value or 0))

    def forget(self, epoch: str) -> None:
        """The store Redis is not the one these pages and generations came from (wiped, or restored from
        an older copy): drop them all, and name Redis-cached pages by the new epoch from now on."""
        self.epoch = epoch
        self.generations.clear()
        self.newest_change = 0
        self._memory.clear()
        self._memory_used = 0

    def apply_notice(self, message: str) -> None:
        notice = ChangeNotice.parse(message)
        self.newest_change = max(self.newest_change, notice.seq)
        for name, generation in notice.generations.items():
            self._raise_generation(name, generation)

    # ----- reading -------------------------------------------------------------------------------

    def hit(self, feed: FeedDefinition, fmt: str, page: str, variant: str = "full") -> RenderedFeed | None:
        """The page from this process's memory, if it is current: the hot path (no I/O, no await)."""
        memory_key = (feed.name, variant, fmt, page)
        cached = self._memory.get(memory_key)
        # Beside the generation, a render also ages out (kills leave the head page after a while).
        if cached is None or cached[0].generation != self.generations.get(feed.name, 0) \
                or cached[1] <= time.monotonic():
            return None
        self._memory.move_to_end(memory_key)
        self.metrics.cache_result("memory_hit")
        return cached[0]

    async def get(self, feed: FeedDefinition, fmt: str, since: int | None, variant: str = "full",
                  archive: int | None = None) -> RenderedFeed:
        page = page_name(since, archive)
        found = self.hit(feed, fmt, page, variant)
        if found is not None:
            return found
        generation = self.generations.get(feed.name, 0)
        memory_key = (feed.name, variant, fmt, page)
        flight_key = (*memory_key, generation)
        task = self._inflight.get(flight_key)
        if task is None:
            task = asyncio.create_task(self._load_or_render(feed, fmt, since, page, variant, generation, archive))
            self._inflight[flight_key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(flight_key, None))
        rendered = await asyncio.shield(task)
        if rendered.generation == self.generations.get(feed.name, 0) and rendered.cacheable:
            self._remember(memory_key, rendered)
        return rendered

    async def _keeps(self, since: int | None, archive: int | None = None) -> bool:
        """Whether a page is worth keeping: the head, or a ``since`` or archive page near the head."""
        if archive is not None:  # the archive pages a walk from the head reads first
            since = (archive - 1) * self.builder.settings.archive_page_changes
        return since is None or since >= await self.builder.store.last_change_seq() - self.recent_cursor_changes

    async def _load_or_render(self, feed: FeedDefinition, fmt: str, since: int | None, page: str, variant: str,
                              generation: int, archive: int | None = None) -> RenderedFeed:
        cache_key = keys.rendered_feed(feed.name, fmt, page, generation, variant, self.epoch)
        stored = await self.cache_redis.hgetall(cache_key)
        if stored:
            self.metrics.cache_result("redis_hit")
            return RenderedFeed.from_redis(stored)
        lock_key, token = keys.render_lock(cache_key), secrets.token_hex(8)
        if not await self.cache_redis.set(lock_key, token, nx=True, px=LOCK_MILLISECONDS):
            stored = await self._wait_for(cache_key)
            if stored:
                self.metrics.cache_result("redis_hit")
                return RenderedFeed.from_redis(stored)
        try:
            with self.metrics.rendering(fmt):
                rendered = await self.builder.build(feed, fmt, since, generation, include_photos=variant == "full",
                                                    archive=archive)
            if not await self._keeps(since, archive):
                return replace(rendered, cacheable=False)
            async with self.cache_redis.pipeline(transaction=False) as pipe:
                pipe.hset(cache_key, mapping=rendered.to_redis())
                pipe.expire(cache_key, self.ttl_seconds if since is None and archive is None
                            else min(self.ttl_seconds, SINCE_PAGE_TTL_SECONDS))
                if generation > 0:  # the page's previous render is superseded: do not let them pile up
                    pipe.delete(keys.rendered_feed(feed.name, fmt, page, generation - 1, variant, self.epoch))
                await pipe.execute()
            return rendered
        finally:
            await self._release_lock(keys=[lock_key], args=[token])

    async def _wait_for(self, cache_key: str) -> dict[bytes, bytes] | None:
        deadline = time.monotonic() + WAIT_FOR_OTHER_RENDER_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            stored = await self.cache_redis.hgetall(cache_key)
            if stored:
                return stored
        return None  # the other renderer died or is slow: render ourselves

    def in_memory(self) -> list[tuple[tuple[str, str, str, str], int]]:
        """The pages this process holds in memory, least recently used first: ((feed, variant, format,
        page), bytes of every encoding). Together they stay within ``memory_bytes``, but for one page
        larger than that on its own, which is kept alone."""
        return [(key, rendered.size) for key, (rendered, _expires) in self._memory.items()]

    # ----- internals -----------------------------------------------------------------------------

    def _raise_generation(self, name: str, generation: int) -> None:
        if generation > self.generations.get(name, -1):
            self.generations[name] = generation

    def _remember(self, key: tuple[str, str, str, str], rendered: RenderedFeed) -> None:
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_used -= old[0].size
        self._memory[key] = (rendered, time.monotonic() + self.ttl_seconds)
        self._memory_used += rendered.size
        while self._memory_used > self.memory_bytes and len(self._memory) > 1:
            _, (evicted, _expires) = self._memory.popitem(last=False)
            self._memory_used -= evicted.size
