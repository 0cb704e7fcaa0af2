"""Building one page of a feed: choose its articles from the store, render them, compress once.

Three kinds of page: the *head* (the feed's newest ``limit`` articles, newest change first), a
*since page* (every article changed after a change-log cursor, oldest first, RFC 5005 paging) and an
*archive page* (RFC 5005 archived feeds: page ``n`` shows what changes ``(n-1)*W+1`` to ``n*W`` of the
change log made, ``W`` = ``SYNDICATE_ARCHIVE_PAGE_CHANGES``, each article once at the last revision
those changes made that the feed may show, :func:`server.domain.feeds.in_archive`). The head and since
pages carry the cursor to poll with next, so a partner that always follows it never misses a revision;
the head links to the newest complete archive page (``prev-archive``), and each archive page to its
neighbours and to the head (``prev-archive``, ``next-archive``, ``current``), marked ``fh:archive``. An
archive page exists once its last change does, and from then on holds the same revisions (so the same
bytes and ETag), until retention drops a body or a purge removes a story.
The result is a :class:`RenderedFeed`: the bytes in identity, gzip and brotli encodings, each with
its strong ETag, ready to be cached and served as they are.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import brotli
import orjson

from server.articles.store import ArticleStore
from server.core.errors import Problem
from server.core.settings import Settings
from server.core.values import iso, parse_iso, utc_now
from server.domain.articles import Article, Change, Revision
from server.domain.feeds import FeedDefinition, in_archive, in_feed, since_page_shows
from server.feeds.render import (
    ATOM_MEDIA_TYPE,
    JSON_FEED_MEDIA_TYPE,
    NEWSML_MESSAGE_MEDIA_TYPE,
    RSS_MEDIA_TYPE,
    EmptyNewsMessageError,
    FeedView,
    ItemView,
    render_atom,
    render_json_feed,
    render_newsml_message,
    render_rss,
)

RENDERERS: dict[str, tuple[str, Callable[[FeedView, list[ItemView]], bytes]]] = {
    "rss": (RSS_MEDIA_TYPE, render_rss),
    "atom": (ATOM_MEDIA_TYPE, render_atom),
    "newsml": (NEWSML_MESSAGE_MEDIA_TYPE, render_newsml_message),
    "json": (JSON_FEED_MEDIA_TYPE, render_json_feed),
}
ENCODINGS = ("br", "gzip", "identity")
HEAD = "head"
# Compression is most of a render's cost, so the levels are chosen for time (see docs/benchmarks.md's
# Benchmarks): gzip 2 is ~3.5x faster than gzip 6 for ~20% more bytes on a 50-item feed, brotli 3 is
# ~2x faster than brotli 5 and still smaller than the gzip encoding.
GZIP_LEVEL = 2
BROTLI_QUALITY = 3
PARALLEL_MIN_BYTES = 64 * 1024  # below this, handing brotli to a thread costs more than it saves
_compressor: ThreadPoolExecutor | None = None
_compressor_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Representation:
    """Bytes ready to send, in each content coding, with their strong ETags."""

    media_type: str
    bodies: dict[str, bytes]  # content coding -> bytes
    etags: dict[str, str]
    last_modified: datetime | None
    links: dict[str, str] = field(default_factory=dict)  # rel -> URL, for the HTTP Link header
    # ResponseHeads per (coding, Cache-Control), made on first use by server.http_caching.response_head.
    heads: dict[tuple[str, str], Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def empty(self) -> bool:
        """Nothing to send but headers (204): a NewsML-G2 page with no items has no valid form."""
        return not self.bodies["identity"]

    @classmethod
    def encode(cls, media_type: str, identity: bytes, last_modified: datetime | None,
               links: dict[str, str] | None = None) -> Representation:
        if not identity:
            return cls(media_type, {c: b"" for c in ENCODINGS}, {c: _etag(b"", "identity") for c in ENCODINGS},
                       last_modified, links or {})
        bodies, etags = _compress(identity)
        return cls(media_type, bodies, etags, last_modified, links or {})


@dataclass(frozen=True, slots=True)
class ArchivePlace:
    """Where a page stands among the RFC 5005 archive pages: the page it is (None: not an archive page)
    and the pages before and after it that exist (for the head, ``prev`` is the newest complete one)."""

    page: int | None = None
    prev: int | None = None
    next: int | None = None


@dataclass(frozen=True, slots=True)
class RenderedFeed(Representation):
    """One rendered page of a feed, and what a partner receives with it."""

    generation: int = 0
    cursor: int = 0  # the change-log sequence this page brings a poller up to
    render_id: str = ""
    manifest: tuple[tuple[str, int], ...] = ()  # (article id, version) of every item
    cacheable: bool = True  # False: served once and kept nowhere (a page far behind the head)

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.bodies.values())

    @property
    def sealed_archive(self) -> bool:
        """An archive page with a page after it: nothing about it changes any more (but a purge)."""
        return "next-archive" in self.links

    def to_redis(self) -> dict[str, bytes]:
        meta = {
            "mediaType": self.media_type, "etags": self.etags, "lastModified": iso(self.last_modified),
            "links": self.links, "generation": self.generation, "cursor": self.cursor,
            "renderId": self.render_id, "manifest": self.manifest,
        }
        return {**self.bodies, "meta": orjson.dumps(meta)}

    @classmethod
    def from_redis(cls, stored: dict[bytes, bytes]) -> RenderedFeed:
        meta = orjson.loads(stored[b"meta"])
        return cls(
            media_type=meta["mediaType"],
            bodies={coding: stored[coding.encode()] for coding in ENCODINGS},
            etags=meta["etags"], last_modified=parse_iso(meta["lastModified"]), links=meta["links"],
            generation=meta["generation"], cursor=meta["cursor"], render_id=meta["renderId"],
            manifest=tuple((a, v) for a, v in meta["manifest"]))


class FeedBuilder:
    """Chooses a page's articles and renders it. Reads the store; keeps nothing between calls."""

    def __init__(self, store: ArticleStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def self_url(self, feed: FeedDefinition, fmt: str) -> str:
        return f"{self.settings.base_url}/feeds/{feed.name}/{fmt}"

    def item_url(self, article_id: str) -> str:
        return f"{self.settings.base_url}/items/{article_id}"

    def archive_url(self, feed: FeedDefinition, fmt: str, page: int) -> str:
        return f"{self.self_url(feed, fmt)}?archive={page}"

    async def build(self, feed: FeedDefinition, fmt: str, since: int | None, generation: int,
                    include_photos: bool = True, archive: int | None = None) -> RenderedFeed:
        now = utc_now()
        place = ArchivePlace()
        if archive is not None:
            articles, cursor, place, changed_at = await self._archive_articles(feed, archive)
            return self.render(feed, fmt, articles, since=None, cursor=cursor, generation=generation, now=now,
                               include_photos=include_photos, changed_at=changed_at, archive=place)
        if since is None:
            cursor = await self.store.last_change_seq()  # read first: later changes are in the next page
            # A page can change by losing an item (withheld, reclassified, purged), which no item's
            # date shows: its Last-Modified is never older than the change log at render time, so an
            # If-Modified-Since poller is never told "not modified" about a page that changed.
            changed_at = await self.store.change_time(cursor)
            articles = await self._head_articles(feed, now)
            place = ArchivePlace(prev=await self._newest_archive(cursor))
        else:
            articles, cursor = await self._since_articles(feed, since, now)
            changed_at = None
        return self.render(feed, fmt, articles, since=since, cursor=cursor, generation=generation, now=now,
                           include_photos=include_photos, changed_at=changed_at, archive=place)

    def render(self, feed: FeedDefinition, fmt: str, articles: list[Article], *, since: int | None, cursor: int,
               generation: int, now: datetime, include_photos: bool = True,
               changed_at: datetime | None = None, archive: ArchivePlace = ArchivePlace()) -> RenderedFeed:
        media_type, renderer = RENDERERS[fmt]
        first_url = self.self_url(feed, fmt)
        archived = archive.page is not None
        if archived:
            self_url, next_url, hub_url = self.archive_url(feed, fmt, archive.page or 0), None, None
        else:
            self_url = first_url if since is None else f"{first_url}?since={since}"
            next_url, hub_url = f"{first_url}?since={cursor}", f"{self.settings.base_url}/hub"
        prev_archive = self.archive_url(feed, fmt, archive.prev) if archive.prev else None
        next_archive = self.archive_url(feed, fmt, archive.next) if archive.next else None
        manifest = tuple((a.id, a.version) for a in articles)
        last_modified = max([a.last_changed for a in articles] + ([changed_at] if changed_at else []), default=None)
        # Same content, same bytes: the render id and the document's date come from what the page
        # holds, not from the clock, so a re-render (another process, a cache expiry) keeps its ETag
        # and pollers keep getting 304s.
        render_id = hashlib.sha256(orjson.dumps([feed.name, fmt, since, cursor, manifest, include_photos,
                                                 archive.page, archive.prev, archive.next])).hexdigest()[:16]
        view = FeedView(
            name=feed.name, title=feed.title, description=feed.description, language=feed.language,
            self_url=self_url, alternate_url=f"{self.settings.base_url}/", hub_url=hub_url,
            built_at=last_modified or now, render_id=render_id, next_url=next_url, first_url=first_url,
            include_photos=include_photos, archive=archived, prev_archive_url=prev_archive,
            next_archive_url=next_archive, current_url=first_url if archived else None)
        items = [ItemView.from_revision(a.latest, self.item_url(a.id)) for a in articles]
        try:
            body = renderer(view, items)
        except EmptyNewsMessageError:
            body = b""
        encoded = Representation.encode(media_type, body, last_modified)
        links = {"self": self_url}
        if hub_url and next_url:
            links |= {"hub": hub_url, "next": next_url}
        if since is not None:
            links["first"] = first_url
        if archived:
            links["current"] = first_url
        if prev_archive:
            links["prev-archive"] = prev_archive
        if next_archive:
            links["next-archive"] = next_archive
        return RenderedFeed(
            media_type=media_type, bodies=encoded.bodies, etags=encoded.etags, last_modified=last_modified,
            links=links, generation=generation, cursor=cursor, render_id=render_id, manifest=manifest)

    async def _head_articles(self, feed: FeedDefinition, now: datetime) -> list[Article]:
        kill_window = timedelta(days=self.settings.kill_visible_days)
        chosen: list[Article] = []
        batch = max(2 * feed.limit, 100)
        scan_cap = max(50 * feed.limit, 5000)  # bounds the work for a narrow filter over a big archive
        offset = 0
        while len(chosen) < feed.limit and offset < scan_cap:
            ids = await self.store.ids_by_change(offset, batch)
            if not ids:
                break
            for article in await self.store.get_many(ids):
                if feed.holds(article.latest) and in_feed(article, now, kill_window):
                    chosen.append(article)
                    if len(chosen) == feed.limit:
                        break
            offset += batch
        return chosen

    async def _newest_archive(self, cursor: int) -> int | None:
        """The newest complete archive page at ``cursor`` (the head's ``prev-archive``), if it is kept."""
        newest = cursor // self.settings.archive_page_changes
        if newest < 1:
            return None
        oldest = await self.store.oldest_change_seq()
        return newest if oldest is None or oldest <= newest * self.settings.archive_page_changes else None

    async def _archive_articles(self, feed: FeedDefinition, page: int
                                ) -> tuple[list[Article], int, ArchivePlace, datetime | None]:
        """Archive page ``page``: its articles (each once, at the last revision its changes made that the
        feed shows), its last change number, its neighbours and when its last change was made."""
        size = self.settings.archive_page_changes
        newest = await self.store.last_change_seq() // size
        if page < 1 or page > newest:
            raise Problem(
                f"There is no archive page {page} (yet): a page exists once its {size} changes have been made; "
                + (f"the newest is {newest}." if newest else "none is complete yet."), status=404,
                slug="no-such-archive", parameter="archive", newestArchive=newest or None)
        oldest = await self.store.oldest_change_seq()
        first = max(1, -(-(oldest or 1) // size))  # the page holding the oldest change kept
        if page < first:
            raise Problem(f"Archive page {page} is older than the change log keeps; the oldest page is {first}.",
                          status=410, slug="archive-expired", parameter="archive", oldestArchive=first)
        changes = [c for c in await self.store.changes_after((page - 1) * size, size) if c.seq <= page * size]
        revisions = await self.store.revisions_at([(c.article_id, c.version) for c in changes])
        chosen: dict[str, tuple[Change, Revision]] = {}
        for change, revision in zip(changes, revisions, strict=True):
            if revision is not None and in_archive(feed, revision, change.kind, change.ingested_at):
                chosen.pop(change.article_id, None)  # each article once, at its last change in the page
                chosen[change.article_id] = (change, revision)
        articles = [Article(id=change.article_id, uri=revision.uri, latest=revision, created_at=revision.ingested_at,
                            change_seq=change.seq, changed_at=change.ingested_at)
                    for change, revision in chosen.values()]
        place = ArchivePlace(page=page, prev=page - 1 if page > first else None,
                             next=page + 1 if page < newest else None)
        return articles, page * size, place, changes[-1].ingested_at if changes else None

    async def _since_articles(self, feed: FeedDefinition, since: int, now: datetime) -> tuple[list[Article], int]:
        last = await self.store.last_change_seq()
        oldest = await self.store.oldest_change_seq()
        if since > last or (oldest is not None and since < oldest - 1):
            raise Problem(
                f"The cursor {since} is outside the change log (it holds {oldest or last + 1} to {last}); "
                f"resynchronise from the plain feed, which gives a fresh cursor.", status=410,
                slug="cursor-expired", parameter="since", oldestCursor=(oldest or last + 1) - 1, latestCursor=last)
        changes = await self.store.changes_after(since, self.settings.since_page_limit)
        if not changes:
            return [], since
        order: dict[str, int] = {}
        for change in changes:  # an article changed twice in the page appears once, at its last change
            order.pop(change.article_id, None)
            order[change.article_id] = change.seq
        articles = await self.store.get_many(list(order))
        chosen = [a for a in articles if since_page_shows(feed, a, now)]
        return chosen, changes[-1].seq


def _compress(identity: bytes) -> tuple[dict[str, bytes], dict[str, str]]:
    """The identity, gzip and brotli bodies and their ETags. For a large body brotli runs on a worker
    thread while this one does gzip and the hashes (zlib, brotli and hashlib release the GIL), so on
    a machine with a free core the call takes about as long as the slower of the two encoders. The
    bytes are the same either way."""
    pending: Future[bytes] | None = None
    if len(identity) >= PARALLEL_MIN_BYTES:
        pending = _compressor_pool().submit(brotli.compress, identity, quality=BROTLI_QUALITY)
    gzipped = gzip.compress(identity, compresslevel=GZIP_LEVEL, mtime=0)
    etags = {"identity": _etag(identity, "identity"), "gzip": _etag(gzipped, "gzip")}
    br = pending.result() if pending is not None else brotli.compress(identity, quality=BROTLI_QUALITY)
    etags["br"] = _etag(br, "br")
    return {"identity": identity, "gzip": gzipped, "br": br}, etags


def _compressor_pool() -> ThreadPoolExecutor:
    global _compressor
    if _compressor is None:
        with _compressor_lock:
            if _compressor is None:
                _compressor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compress")
    return _compressor


def _etag(body: bytes, coding: str) -> str:
    digest = hashlib.sha256(body).hexdigest()[:24]
    return f'"{digest}"' if coding == "identity" else f'"{digest}-{coding}"'

