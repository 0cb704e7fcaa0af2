"""The article store: every revision of every article, and the change log, in Redis.

A revision is committed by one Lua script, so its record, the article's state, the indexes and its
change-log entry are written together or not at all (and, with ``appendfsync always``, are on disk
when the client is told "stored"). The script is a compare-and-set on the article's latest version:
concurrent writers of one article retry, and a CMS can never roll an article back.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from server.core import keys
from server.core.errors import Conflict, NotFound, PreconditionFailed, Problem
from server.core.replication import ReplicaAcks, WriteNotConfirmed
from server.core.values import iso, parse_iso, to_micros, utc_now
from server.domain.articles import (
    CANCELED,
    CORRECTION,
    EMBARGO_LIFT,
    KILL,
    NEW,
    PURGE,
    UPDATE,
    USABLE,
    Article,
    Change,
    Revision,
    article_id_for_uri,
    is_article_id,
)
from server.domain.feeds import BUILT_IN_LATEST, LATEST, FeedDefinition
from server.domain.ninjs import IncomingDocument, content_hash

log = logging.getLogger(__name__)

CREATED, REVISED, UNCHANGED = "created", "revised", "unchanged"
CLASSIFICATION_FIELDS = ("language", "slugline", "subjects", "places")
SIGNALS = ("update", "correction")

# Bumps the generation of every feed the change touches and announces it on the changes channel, in
# the same script as the change itself, so no cache can outlive a committed change by more than the
# time pub/sub takes. Expects `seq`, `first_feed_key` (index into KEYS) and `feed_args` (index into
# ARGV of the first feed name; the channel follows the feed names).
_BUMP_FEEDS_LUA = """
local notice = {tostring(seq)}
for i = first_feed_key, #KEYS do
  local generation = redis.call('INCR', KEYS[i])
  notice[#notice + 1] = ARGV[feed_args + i - first_feed_key] .. '=' .. generation
end
redis.call('PUBLISH', ARGV[feed_args + #KEYS - first_feed_key + 1], table.concat(notice, ' '))
return table.concat(notice, ' ')
"""

# KEYS: 1 article, 2 revisions, 3 hashes, 4 by-uri, 5 by-change, 6-8 by-status usable/withheld/canceled,
#       9 revisions-with-bodies, 10 changelog seq, 11 changelog stream, 12 embargoes, 13.. feed generations
# ARGV: 1 expected version, 2 new version, 3 revision JSON, 4 content hash, 5 id, 6 uri, 7 pubStatus,
#       8 ingest micros, 9 kind, 10 ingestedAt, 11 previous revision's ingest micros or "",
#       12 n = count of article field items, 13..12+n article fields, then the embargo's end in micros
#       (or "" when not embargoed), then feed names, then the channel
# Returns {0, current version} when the article moved on, else {seq, previous version, notice}.
_COMMIT_LUA = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
local seq = redis.call('INCR', KEYS[10])
local field_count = tonumber(ARGV[12])
local fields = {}
for i = 13, 12 + field_count do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[2])
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'changeSeq', seq, unpack(fields))
redis.call('HSET', KEYS[4], ARGV[6], ARGV[5])
redis.call('ZADD', KEYS[5], ARGV[8], ARGV[5])
for i = 6, 8 do redis.call('ZREM', KEYS[i], ARGV[5]) end
local by_status = {usable = 6, withheld = 7, canceled = 8}
redis.call('ZADD', KEYS[by_status[ARGV[7]]], ARGV[8], ARGV[5])
if current > 0 and ARGV[11] ~= '' then
  redis.call('ZADD', KEYS[9], ARGV[11], ARGV[5] .. ':' .. current)
end
redis.call('XADD', KEYS[11], seq .. '-0', 'id', ARGV[5], 'version', ARGV[2], 'kind', ARGV[9], 'at', ARGV[10])
local embargo = ARGV[13 + field_count]
if embargo ~= '' then redis.call('ZADD', KEYS[12], embargo, ARGV[5]) else redis.call('ZREM', KEYS[12], ARGV[5]) end
local first_feed_key, feed_args = 13, 14 + field_count
""" + _BUMP_FEEDS_LUA.replace("return table.concat(notice, ' ')", "return {seq, current, table.concat(notice, ' ')}")

# KEYS: 1 changelog seq, 2 changelog stream, 3.. feed generations.
# ARGV: id, version, kind, at, feed names..., channel. Returns the change notice.
_APPEND_CHANGE_LUA = """
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], seq .. '-0', 'id', ARGV[1], 'version', ARGV[2], 'kind', ARGV[3], 'at', ARGV[4])
local first_feed_key, feed_args = 3, 5
""" + _BUMP_FEEDS_LUA

# KEYS: 1 article, 2 revisions. Returns {article fields, latest revision JSON}, or nil: one round trip.
_READ_LATEST_LUA = """
local version = redis.call('HGET', KEYS[1], 'version')
if not version then return nil end
return {redis.call('HGETALL', KEYS[1]), redis.call('HGET', KEYS[2], version)}
"""


@dataclass(frozen=True, slots=True)
class IngestResult:
    article: Article
    outcome: str  # CREATED, REVISED or UNCHANGED
    removed_characters: int = 0


@dataclass(frozen=True, slots=True)
class ArticlePage:
    articles: list[Article]
    next_cursor: str | None


class ArticleStore:
    """Reads and writes articles, revisions and the change log. ``redis`` must decode responses.

    ``feeds`` are the feed definitions: each commit bumps the generation of every feed the article is
    in now or was in before, and ``on_change`` (if set) hears the change notice at once, so the
    process that took a write reads its own writes.
    """

    def __init__(self, redis: Redis, feeds: Mapping[str, FeedDefinition] | None = None,
                 on_change: Callable[[str], None] | None = None, acks: ReplicaAcks | None = None) -> None:
        self.redis = redis
        self.acks = acks or ReplicaAcks(redis, 0, 1.0)  # default: a single Redis, nothing to wait for
        self.feeds = dict(feeds) if feeds is not None else {LATEST: BUILT_IN_LATEST}
        self.on_change = on_change
        self._commit = redis.register_script(_COMMIT_LUA)
        self._append_change = redis.register_script(_APPEND_CHANGE_LUA)
        self._read_latest = redis.register_script(_READ_LATEST_LUA)

    # ----- writing -------------------------------------------------------------------------------

    async def ingest(self, incoming: IncomingDocument, publisher: str, *, signal: str | None = None,
                     expected_id: str | None = None, if_match: int | None = None) -> IngestResult:
        """Store a CMS document as a new revision, or recognise it as one already stored."""
        if signal is not None and signal not in SIGNALS:
            raise Problem(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}.", parameter="signal")
        document = incoming.document
        article_id = article_id_for_uri(document["uri"])
        if expected_id is not None and expected_id != article_id:
            raise Problem(f"The document's uri belongs to article {article_id}, not {expected_id}.",
                          status=422, slug="uri-mismatch",
                          errors=[{"pointer": "/uri", "detail": "does not match the article in the URL"}])
        for _attempt in range(20):
            current = await self.get(article_id)
            if current is None and expected_id is not None:
                raise NotFound(f"No article {article_id}; create it with POST /api/articles.")
            if current is not None:
                if current.uri != document["uri"]:
                    raise Conflict(f"Article id {article_id} is already taken by another uri.")
                # A retry of a request that already succeeded is recognised before If-Match is
                # checked: its If-Match named the version before its own.
                known = await self._known_revision(current, incoming.content_hash)
                if known is not None:
                    await self.acks.confirm()  # the first attempt may have timed out waiting for replicas
                    return IngestResult(known, UNCHANGED, incoming.removed_characters)
            _check_if_match(current, if_match)
            if current is not None:
                _check_can_revise(current, document)
            revision = self._new_revision(current, document, incoming, publisher, signal)
            article = await self._commit_revision(current, revision)
            if article is not None:
                return IngestResult(article, CREATED if current is None else REVISED, incoming.removed_characters)
        raise Conflict("The article is being changed by other writers at the same moment; try again.")

    async def kill(self, article_id: str, publisher: str, reason: str | None = None,
                   if_match: int | None = None) -> IngestResult:
        """A kill is a new revision with pubStatus canceled and no body; earlier bodies are no longer
        served to partners. Killing a killed article changes nothing."""
        for _attempt in range(20):
            current = await self.require(article_id)
            _check_if_match(current, if_match)
            if current.killed:
                await self.acks.confirm()
                return IngestResult(current, UNCHANGED)
            now = utc_now()
            latest = current.latest
            tombstone = {"uri": current.uri, "type": "text", "pubStatus": CANCELED, "versionCreated": iso(now)}
            # Only the classification stays (feeds select by it, so the kill reaches the feeds that
            # carried the story); no headline, summary or body.
            for name in CLASSIFICATION_FIELDS:
                if latest.document and latest.document.get(name):
                    tombstone[name] = latest.document[name]
            revision = Revision(
                article_id=current.id, uri=current.uri, version=current.version + 1, kind=KILL, signal=None,
                first_created=latest.first_created, version_created=now, ingested_at=now, pub_status=CANCELED,
                embargoed_until=None, ed_note=None, publisher=publisher, content_hash=content_hash(tombstone),
                document=tombstone, kill_reason=reason)
            article = await self._commit_revision(current, revision)
            if article is not None:
                return IngestResult(article, REVISED)
        raise Conflict("The article is being changed by other writers at the same moment; try again.")

    async def purge(self, article_id: str, reason: str, actor: str) -> Article:
        """Legal takedown: kill the article if it is not yet killed, then remove the body of every
        revision, leaving a tombstone (id, versions, times, reason)."""
        current = await self.require(article_id)
        _refuse_second_purge(current)
        if not current.killed:
            current = (await self.kill(article_id, actor, reason)).article
        now = utc_now()
        async with self.redis.pipeline(transaction=True) as pipe:
            # Watched: of two purges at once, one wins and the other is refused below, so the first
            # record (time and reason) is never overwritten.
            await pipe.watch(keys.article(article_id))
            if await pipe.hget(keys.article(article_id), "purgedAt"):
                await pipe.reset()
                _refuse_second_purge(await self.require(article_id))
            stored = await pipe.hgetall(keys.revisions(article_id))
            pipe.multi()
            for version, raw in stored.items():
                revision = Revision.from_json(raw)
                # The tombstone keeps versions, times and the reason; the editors' note may repeat
                # what was taken down, so it goes with the body.
                stripped = dataclasses.replace(revision, document=None, ed_note=None, extra=None,
                                               body_dropped_at=revision.body_dropped_at or now)
                pipe.hset(keys.revisions(article_id), version, stripped.to_json())
                pipe.zrem(keys.revisions_with_bodies(), f"{article_id}:{version}")
            pipe.hset(keys.article(article_id), mapping={"purgedAt": iso(now), "purgeReason": reason})
            touched = self.feeds_touched(current.latest, None)
            await self._append_change(
                keys=[keys.changelog_seq(), keys.changelog(), *(keys.feed_generation(f) for f in touched)],
                args=[article_id, current.version, PURGE, iso(now), *touched, keys.CHANGES_CHANNEL], client=pipe)
            try:
                results = await pipe.execute()
            except WatchError:  # another purge (or revision) came first: judge again on what is stored now
                return await self.purge(article_id, reason, actor)
        self._announce(results[-1])
        log.info("purged article %s (%d revisions) by %s", article_id, len(stored), actor)
        return await self.require(article_id)

    async def due_embargoes(self, now: datetime, limit: int = 100) -> list[str]:
        return await self.redis.zrange(keys.embargoes(), "-inf", to_micros(now), byscore=True, offset=0, num=limit)

    async def release_embargo(self, article_id: str, now: datetime | None = None) -> bool:
        """If the article's embargo has passed, lift it once (whichever process gets there first): an
        ``embargo-lift`` change in the log, its feeds invalidated, and it counts as changed now, so it
        enters the feeds on top and reaches every ``since`` poller."""
        now = now or utc_now()
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(keys.embargoes(), keys.article(article_id))
            score = await pipe.zscore(keys.embargoes(), article_id)
            if score is None or score > to_micros(now):
                return False
            article = await self.get(article_id)
            if article is None:
                pipe.multi()
                pipe.zrem(keys.embargoes(), article_id)
                await pipe.execute()
                return False
            touched = self.feeds_touched(None, article.latest)
            pipe.multi()
            pipe.zrem(keys.embargoes(), article_id)
            pipe.hset(keys.article(article_id), "changedAt", iso(now))
            pipe.zadd(keys.articles_by_change(), {article_id: to_micros(now)})
            pipe.zadd(keys.articles_by_status(article.latest.pub_status), {article_id: to_micros(now)})
            await self._append_change(
                keys=[keys.changelog_seq(), keys.changelog(), *(keys.feed_generation(f) for f in touched)],
                args=[article_id, article.version, EMBARGO_LIFT, iso(now), *touched, keys.CHANGES_CHANNEL],
                client=pipe)
            try:
                results = await pipe.execute()
            except WatchError:
                return False  # a new revision came in meanwhile; the scheduler looks again
        self._announce(results[-1])
        log.info("embargo lifted on article %s version %d", article_id, article.version)
        return True

    # ----- reading -------------------------------------------------------------------------------

    async def get(self, article_id: str) -> Article | None:
        found = await self._read_latest(keys=[keys.article(article_id), keys.revisions(article_id)])
        if not found:
            return None
        flat, raw = found
        return _article(dict(zip(flat[::2], flat[1::2], strict=True)), Revision.from_json(raw))

    async def get_many(self, article_ids: list[str]) -> list[Article]:
        """The articles that exist among ``article_ids``, in that order, in one round trip."""
        if not article_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for article_id in article_ids:
                await self._read_latest(keys=[keys.article(article_id), keys.revisions(article_id)], client=pipe)
            found = await pipe.execute()
        return [_article(dict(zip(flat[::2], flat[1::2], strict=True)), Revision.from_json(raw))
                for flat, raw in (f for f in found if f)]

    async def ids_by_change(self, offset: int, count: int) -> list[str]:
        """Article ids, newest change first."""
        return await self.redis.zrange(keys.articles_by_change(), offset, offset + count - 1, desc=True)

    async def ids_changed_since(self, moment: datetime) -> list[str]:
        """Article ids whose latest change was ingested at or after ``moment``, oldest first."""
        return await self.redis.zrange(keys.articles_by_change(), int(moment.timestamp() * 1_000_000), "+inf",
                                       byscore=True)

    async def versions(self, article_ids: list[str]) -> dict[str, int]:
        """The latest version of each article that exists among ``article_ids``, in one round trip."""
        if not article_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for article_id in article_ids:
                pipe.hget(keys.article(article_id), "version")
            found = await pipe.execute()
        return {a: int(v) for a, v in zip(article_ids, found, strict=True) if v is not None}

    async def require(self, article_id: str) -> Article:
        article = await self.get(article_id)
        if article is None:
            raise NotFound(f"No article with id {article_id!r}.")
        return article

    async def id_for_uri(self, uri: str) -> str | None:
        return await self.redis.hget(keys.article_ids_by_uri(), uri)

    async def revision(self, article_id: str, version: int) -> Revision:
        raw = await self.redis.hget(keys.revisions(article_id), str(version))
        if raw is None:
            await self.require(article_id)
            raise NotFound(f"Article {article_id} has no version {version}.")
        return Revision.from_json(raw)

    async def revisions_at(self, pairs: list[tuple[str, int]]) -> list[Revision | None]:
        """The revisions (article id, version), in one round trip; None for one not stored."""
        if not pairs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for article_id, version in pairs:
                pipe.hget(keys.revisions(article_id), str(version))
            raws = await pipe.execute()
        return [Revision.from_json(raw) if raw is not None else None for raw in raws]

    async def revision_json(self, article_id: str, version: int) -> bytes:
        """One revision's record exactly as stored."""
        raw = await self.redis.hget(keys.revisions(article_id), str(version))
        if raw is None:
            await self.require(article_id)
            raise NotFound(f"Article {article_id} has no version {version}.")
        return raw.encode("utf-8")

    async def history(self, article_id: str) -> list[Revision]:
        stored = await self.redis.hgetall(keys.revisions(article_id))
        if not stored:
            await self.require(article_id)
        return sorted((Revision.from_json(raw) for raw in stored.values()), key=lambda r: r.version)

    async def list_articles(self, *, status: str | None = None, changed_since: datetime | None = None,
                            uri: str | None = None, limit: int = 50, cursor: str | None = None) -> ArticlePage:
        """Newest change first. ``cursor`` is the opaque ``next_cursor`` of the previous page."""
        after = _parse_cursor(cursor) if cursor is not None else None  # checked with a uri too
        if uri is not None:
            article_id = await self.id_for_uri(uri)
            article = await self.get(article_id) if article_id else None
            matches = article is not None and (status is None or article.latest.pub_status == status) and (
                changed_since is None or article.latest.ingested_at > changed_since)
            return ArticlePage([article] if matches else [], None)
        index = keys.articles_by_status(status) if status else keys.articles_by_change()
        low = f"({to_micros(changed_since)}" if changed_since else "-inf"
        high, after_id = after or ("+inf", None)
        articles: list[Article] = []
        while len(articles) <= limit:
            batch = await self.redis.zrange(index, high, low, desc=True, byscore=True, offset=0,
                                            num=limit + 10, withscores=True)
            fresh = [(m, s) for m, s in batch if after_id is None or s != float(high) or m < after_id]
            if not fresh:
                break
            for member, score in fresh:
                article = await self.get(member)
                if article is not None:
                    articles.append(article)
                high, after_id = str(int(score)), member
                if len(articles) > limit:
                    break
            if len(batch) < limit + 10:
                break
        next_cursor = None
        if len(articles) > limit:
            articles = articles[:limit]
            last = articles[-1]
            next_cursor = f"{to_micros(last.last_changed)}.{last.id}"
        return ArticlePage(articles, next_cursor)

    async def last_change_seq(self) -> int:
        return int(await self.redis.get(keys.changelog_seq()) or 0)

    async def changes_after(self, seq: int, limit: int) -> list[Change]:
        """Change-log entries with a sequence number greater than ``seq``, oldest first."""
        entries = await self.redis.xrange(keys.changelog(), f"({seq}-0", "+", count=limit)
        return [_change(entry_id, fields) for entry_id, fields in entries]

    async def change_time(self, seq: int) -> datetime | None:
        """When change ``seq`` was ingested (None for 0, or a change already trimmed away)."""
        if seq <= 0:
            return None
        entries = await self.redis.xrange(keys.changelog(), f"{seq}-0", f"{seq}-0")
        return parse_iso(entries[0][1]["at"]) if entries else None

    async def oldest_change_seq(self) -> int | None:
        entries = await self.redis.xrange(keys.changelog(), "-", "+", count=1)
        return _change(*entries[0]).seq if entries else None

    # ----- retention -----------------------------------------------------------------------------

    async def drop_old_bodies(self, retention: timedelta, now: datetime | None = None) -> int:
        """Superseded revisions older than ``retention`` keep their metadata and lose their body."""
        now = now or utc_now()
        cutoff = to_micros(now - retention)
        dropped = 0
        while True:
            members = await self.redis.zrange(keys.revisions_with_bodies(), "-inf", cutoff, byscore=True,
                                              offset=0, num=500)
            if not members:
                return dropped
            for member in members:
                article_id, _, version = member.rpartition(":")
                # WATCHed: a purge that strips the same revision meanwhile must not be undone by
                # writing back this older read.
                async with self.redis.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(keys.revisions(article_id))
                        raw = await pipe.hget(keys.revisions(article_id), version)
                        pipe.multi()
                        if raw is not None:
                            revision = Revision.from_json(raw)
                            if revision.document is not None:
                                stripped = dataclasses.replace(revision, document=None, extra=None,
                                                               body_dropped_at=now)
                                pipe.hset(keys.revisions(article_id), version, stripped.to_json())
                                dropped += 1
                        pipe.zrem(keys.revisions_with_bodies(), member)
                        await pipe.execute()
                    except WatchError:
                        return dropped  # the article changed under us: the next run picks it up

    async def trim_changelog(self, retention: timedelta, now: datetime | None = None) -> int:
        """Drop change-log entries ingested more than ``retention`` ago; return how many went."""
        cutoff = (now or utc_now()) - retention
        first_kept: str | None = None
        start = "-"
        while first_kept is None:
            entries = await self.redis.xrange(keys.changelog(), start, "+", count=500)
            if not entries:
                break
            for entry_id, fields in entries:
                if parse_iso(fields["at"]) >= cutoff:
                    first_kept = entry_id
                    break
            start = f"({entries[-1][0]}"
        if first_kept is None:
            last = await self.redis.xrevrange(keys.changelog(), "+", "-", count=1)
            if not last:
                return 0
            # Keep the newest entry anyway: it carries the stream's last id, so sequence numbers and
            # cursors stay meaningful.
            first_kept = last[0][0]
        return await self.redis.xtrim(keys.changelog(), minid=first_kept, approximate=False)

    # ----- internals -----------------------------------------------------------------------------

    def feeds_touched(self, before: Revision | None, after: Revision | None) -> list[str]:
        """The feeds an article is in now or was in before: the ones a change must invalidate."""
        return [name for name, feed in self.feeds.items() if feed.holds(before) or feed.holds(after)]

    def _announce(self, notice: str) -> None:
        if self.on_change is not None:
            self.on_change(notice)

    async def _known_revision(self, current: Article, digest: str) -> Article | None:
        """The article, if ``digest`` is the content hash of a revision already stored (a retry)."""
        if current.latest.content_hash == digest:
            return current
        if await self.redis.hexists(keys.content_hashes(current.id), digest):
            return current
        return None

    def _new_revision(self, current: Article | None, document: dict[str, Any], incoming: IncomingDocument,
                      publisher: str, signal: str | None) -> Revision:
        now = utc_now()
        version_created = parse_iso(document.get("versionCreated")) or now
        pub_status = document.get("pubStatus", USABLE)
        if current is None:
            first_created = parse_iso(document.get("firstCreated")) or version_created
            kind, revision_signal = NEW, None
        else:
            first_created = current.latest.first_created
            revision_signal = signal or "update"
            kind = KILL if pub_status == CANCELED else (CORRECTION if revision_signal == "correction" else UPDATE)
        return Revision(
            article_id=article_id_for_uri(document["uri"]), uri=document["uri"],
            version=(current.version + 1) if current else 1, kind=kind, signal=revision_signal,
            first_created=first_created, version_created=version_created, ingested_at=now,
            pub_status=pub_status, embargoed_until=parse_iso(document.get("embargoedUntil")),
            ed_note=document.get("edNote"), publisher=publisher, content_hash=incoming.content_hash,
            document=document, removed_characters=incoming.removed_characters, extra=incoming.extra)

    async def _commit_revision(self, current: Article | None, revision: Revision) -> Article | None:
        """Write the revision if the article is still at ``current``'s version; None if it moved on."""
        fields = {
            "uri": revision.uri,
            "pubStatus": revision.pub_status,
            "versionCreated": iso(revision.version_created),
            "ingestedAt": iso(revision.ingested_at),
            "changedAt": iso(revision.ingested_at),
            "firstCreated": iso(revision.first_created),
        }
        if current is None:
            fields["createdAt"] = iso(revision.ingested_at)
        article_id = revision.article_id
        touched = self.feeds_touched(current.latest if current else None, revision)
        field_items = [item for pair in fields.items() for item in pair]
        embargo = ""
        if revision.embargoed_until is not None and revision.embargoed_until > revision.ingested_at:
            embargo = to_micros(revision.embargoed_until)
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._commit(
                keys=[keys.article(article_id), keys.revisions(article_id), keys.content_hashes(article_id),
                      keys.article_ids_by_uri(), keys.articles_by_change(),
                      *(keys.articles_by_status(s) for s in keys.STATUSES),
                      keys.revisions_with_bodies(), keys.changelog_seq(), keys.changelog(), keys.embargoes(),
                      *(keys.feed_generation(f) for f in touched)],
                args=[current.version if current else 0, revision.version, revision.to_json(),
                      revision.content_hash, article_id, revision.uri, revision.pub_status,
                      to_micros(revision.ingested_at), revision.kind, iso(revision.ingested_at),
                      to_micros(current.latest.ingested_at) if current else "",
                      len(field_items), *field_items, embargo, *touched, keys.CHANGES_CHANNEL],
                client=pipe)
            # Acknowledged only once on enough replicas (server.core.replication): same connection.
            try:
                [result] = await self.acks.execute(pipe)
            except WriteNotConfirmed as unconfirmed:
                # Stored on the primary all the same: this process serves it at once, as for any commit
                # (its retry answers 'unchanged', which announces nothing).
                if unconfirmed.replies and int(unconfirmed.replies[0][0]):
                    self._announce(unconfirmed.replies[0][2])
                raise
        seq = int(result[0])
        if seq == 0:
            return None
        self._announce(result[2])
        created_at = current.created_at if current else revision.ingested_at
        return Article(article_id, revision.uri, revision, created_at, seq, changed_at=revision.ingested_at)


def _check_if_match(current: Article | None, if_match: int | None) -> None:
    if if_match is None:
        return
    have = current.version if current else 0
    if have != if_match:
        raise PreconditionFailed(f"If-Match names version {if_match}, but the article is at version {have}.",
                                 currentVersion=have)


def _check_can_revise(current: Article, document: dict[str, Any]) -> None:
    if current.purged_at is not None:
        raise Conflict(f"Article {current.id} was purged; it cannot be revised.", slug="purged")
    if current.killed:
        raise Conflict(f"Article {current.id} was killed at version {current.version}; a killed story is not "
                       "revived. Publish it under a new uri.", slug="killed")
    version_created = parse_iso(document.get("versionCreated"))
    if version_created is not None and version_created < current.latest.version_created:
        raise Conflict(
            f"versionCreated {document['versionCreated']} is older than the stored version {current.version} "
            f"({iso(current.latest.version_created)}); the server never rolls an article back.",
            slug="stale-revision", currentVersion=current.version,
            errors=[{"pointer": "/versionCreated", "detail": "older than the latest stored revision"}])


def _article(state: dict[str, str], latest: Revision) -> Article:
    return Article(
        id=latest.article_id, uri=state["uri"], latest=latest, created_at=parse_iso(state["createdAt"]),
        change_seq=int(state.get("changeSeq", 0)), purged_at=parse_iso(state.get("purgedAt")),
        purge_reason=state.get("purgeReason"), changed_at=parse_iso(state.get("changedAt")))


def _change(entry_id: str, fields: dict[str, str]) -> Change:
    return Change(seq=int(entry_id.split("-", 1)[0]), article_id=fields["id"], version=int(fields["version"]),
                  kind=fields["kind"], ingested_at=parse_iso(fields["at"]))


def _parse_cursor(cursor: str) -> tuple[str, str]:
    """A ``next_cursor`` as handed out: ``<micros>.<article id>`` (schemas/openapi.yaml has its pattern)."""
    score, _, article_id = cursor.partition(".")
    if not (score.isascii() and score.isdigit() and len(score) <= 19) or not is_article_id(article_id):
        raise Problem("cursor is not one this server handed out.", parameter="cursor")
    return score, article_id


def _refuse_second_purge(article: Article) -> None:
    """A purge is recorded once: the first time and reason stay, a second purge is a 409."""
    if article.purged_at is not None:
        raise Conflict(f"Article {article.id} was already purged at {iso(article.purged_at)} "
                       f"(reason: {article.purge_reason or 'none given'}); that record is kept.",
                       slug="already-purged")
