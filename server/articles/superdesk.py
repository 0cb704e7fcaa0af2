"""Superdesk's pushes into the article store: texts, media and packages, each commit made by
:class:`~server.articles.store.ArticleStore` (its ``ingest`` and ``kill``; there is no second ingest).

- A **text** is an article revision, its bare media references filled from the media kept here, and
  the media of the package it belongs to (if one was pushed) kept with it.
- A **media item** (picture, graphic, video, audio: ``http_push`` sends the media of a text, and the
  items of a package, as items of their own) is kept in ``syn:media:<id>``; every article that
  references it is revised with it (or without it, once it is killed).
- A **composite** (package) makes its main text carry the package's media: its embedded items (a
  ``packaged`` destination) are ingested first, then the main text is revised.
- A **kill** (``pubstatus: canceled``) is our kill: a tombstone revision.

Which reads come before which writes: every check of a push (its document, the package's text) is
made before its first write, so a refused push changes nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from server.articles.store import CREATED, REVISED, UNCHANGED, ArticleStore, IngestResult
from server.core import keys
from server.core.errors import Conflict, NotFound, PreconditionFailed, Problem
from server.core.replication import ReplicaAcks
from server.domain.articles import CANCELED, USABLE, Article, article_id_for_uri
from server.domain.ninjs import IncomingDocument, read_document
from server.domain.superdesk import ItemKind, SuperdeskItem, bare_media, media_uris, with_media

REVISE_ATTEMPTS = 5
STORED = "stored"


@dataclass(frozen=True, slots=True)
class PackageLink:
    """The package that gave an article its media: its uri, and (association name, uri) of each."""

    package: str
    media: tuple[tuple[str, str], ...]

    def to_json(self) -> bytes:
        return orjson.dumps({"package": self.package, "media": [list(m) for m in self.media]})

    @classmethod
    def from_json(cls, raw: str | bytes) -> PackageLink:
        record = orjson.loads(raw)
        return cls(record["package"], tuple((str(n), str(u)) for n, u in record["media"]))


@dataclass(frozen=True, slots=True)
class PushResult:
    """What one push did: ``outcome`` of the article it is about (created, revised, unchanged; for a
    media item stored or unchanged), that article (None for media), and the ids of the other
    articles it revised."""

    kind: ItemKind
    uri: str
    outcome: str
    article: Article | None
    revised: tuple[str, ...] = ()
    removed_characters: int = 0


class SuperdeskIngest:
    def __init__(self, store: ArticleStore, redis: Redis, acks: ReplicaAcks) -> None:
        self.store = store
        self.redis = redis
        self.acks = acks

    async def push(self, item: SuperdeskItem, publisher: str) -> PushResult:
        if item.kind is ItemKind.MEDIA:
            return await self._media(item, publisher)
        if item.kind is ItemKind.COMPOSITE:
            return await self._composite(item, publisher)
        result = await self._text(item, publisher)
        return PushResult(item.kind, item.uri, result.outcome, result.article, (), result.removed_characters)

    # ----- texts -------------------------------------------------------------------------------------

    async def _text(self, item: SuperdeskItem, publisher: str, link: PackageLink | None = None) -> IngestResult:
        article_id = article_id_for_uri(item.uri)
        if item.canceled:
            return await self.store.kill(article_id, publisher, item.ed_note)
        assert item.incoming is not None
        link = link or await self._package(article_id)
        package = link.media if link else ()
        document = item.incoming.document
        media = await self._media_documents(set(bare_media(document)) | {uri for _, uri in package})
        incoming = _reread(item.incoming, with_media(document, media, package), item.incoming.extra)
        result = await self.store.ingest(incoming, publisher, signal=item.signal)
        await self._remember(result.article)
        return result

    async def _composite(self, item: SuperdeskItem, publisher: str) -> PushResult:
        main = item.main_text
        if main is None:
            raise Problem("The package holds no text item; a package here is its text with its pictures.",
                          status=422, slug="invalid-document",
                          errors=[{"pointer": "/associations", "detail": "no item of type text"}])
        texts = [r for r in item.references if r.type == ItemKind.TEXT]
        if item.canceled:
            return await self._kill_package(item, texts, publisher)
        main_id = article_id_for_uri(main.uri)
        current = None if main.item else await self.store.get(main_id)
        if main.item is None and current is None:
            raise Conflict(f"The package's text {main.uri} has not been pushed here yet; Superdesk pushes a "
                           "package's items before the package (or embeds them, with the destination's "
                           "'packaged' option).", slug="package-text-missing",
                           errors=[{"pointer": f"/associations/{main.name}", "detail": "unknown text"}])
        link = PackageLink(item.uri, tuple((r.name, r.uri) for r in item.media))
        revised: list[str] = []
        for ref in item.references:  # a 'packaged' destination embeds the items: each is pushed first
            if ref.item is not None and ref.item.kind is ItemKind.MEDIA:
                revised.extend((await self._media(ref.item, publisher)).revised)
        main_result: IngestResult | None = None
        for ref in texts:
            if ref.item is not None:
                result = await self._text(ref.item, publisher, link if ref is main else None)
                if ref is main:
                    main_result = result
                else:
                    revised.append(result.article.id)
        if main_result is None:
            main_result = await self._revise(main_id, publisher, link, item)
        await self.redis.set(keys.package_media(main_id), link.to_json())
        revised = sorted(set(revised) - {main_result.article.id})
        return PushResult(item.kind, item.uri, main_result.outcome, main_result.article, tuple(revised),
                          main_result.removed_characters)

    async def _revise(self, article_id: str, publisher: str, link: PackageLink, item: SuperdeskItem) -> IngestResult:
        """The stored text with the package's media, as a new revision (unchanged if it has them)."""
        for _attempt in range(REVISE_ATTEMPTS):
            current = await self.store.require(article_id)
            latest = current.latest
            if current.killed or latest.document is None:
                raise Conflict(f"The package's text {current.uri} was killed or purged here.", slug="killed")
            media = await self._media_documents({uri for _, uri in link.media} | set(bare_media(latest.document)))
            extra = {**(latest.extra or {}), "package": {"uri": item.uri, **(item.extra or {})}}
            incoming = _reread(None, with_media(latest.document, media, link.media), extra)
            try:
                result = await self.store.ingest(incoming, publisher, signal=item.signal, if_match=current.version)
            except PreconditionFailed:
                continue
            await self._remember(result.article)
            return result
        raise Conflict("The package's text is being changed by other writers at the same moment; try again.")

    async def _kill_package(self, item: SuperdeskItem, texts: list[Any], publisher: str) -> PushResult:
        """A killed package kills its texts (those this server has)."""
        results = []
        for ref in texts:
            article_id = article_id_for_uri(ref.uri)
            if await self.store.get(article_id) is not None:
                results.append(await self.store.kill(article_id, publisher, item.ed_note))
        if not results:
            raise NotFound(f"None of the package's texts is stored here; nothing to kill for {item.uri}.")
        first = results[0]
        return PushResult(item.kind, item.uri, first.outcome, first.article, tuple(r.article.id for r in results[1:]))

    # ----- media ---------------------------------------------------------------------------------------

    async def _media(self, item: SuperdeskItem, publisher: str) -> PushResult:
        media_id = article_id_for_uri(item.uri)
        document = None if item.canceled or item.incoming is None else item.incoming.document
        record = orjson.dumps({
            "uri": item.uri, "pubStatus": CANCELED if document is None else USABLE, "document": document,
            "extra": item.incoming.extra if item.incoming else None,
            "contentHash": item.incoming.content_hash if item.incoming else None,
        }, option=orjson.OPT_SORT_KEYS)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.media_item(media_id), record, get=True)
            pipe.smembers(keys.media_users(media_id))
            previous, users = await self.acks.execute(pipe)
        outcome = UNCHANGED if previous is not None and previous.encode() == record else STORED
        revised = []
        for article_id in sorted(users):  # an identical push revises nothing (every revision unchanged)
            result = await self._replace_media(article_id, item.uri, document, publisher)
            if result is not None and result.outcome == REVISED:
                revised.append(article_id)
        return PushResult(item.kind, item.uri, outcome, None, tuple(revised),
                          item.incoming.removed_characters if item.incoming else 0)

    async def _replace_media(self, article_id: str, uri: str, document: dict[str, Any] | None,
                             publisher: str) -> IngestResult | None:
        for _attempt in range(REVISE_ATTEMPTS):
            current = await self.store.get(article_id)
            if current is None or current.killed or current.latest.document is None:
                return None
            latest = current.latest
            assert latest.document is not None
            changed = with_media(latest.document, {uri: document})
            if changed == latest.document:
                return None
            try:
                return await self.store.ingest(_reread(None, changed, latest.extra), publisher,
                                               if_match=current.version)
            except PreconditionFailed:
                continue
        raise Conflict("An article that holds this media is being changed by other writers; push it again.")

    async def _media_documents(self, uris: set[str]) -> dict[str, dict[str, Any] | None]:
        """uri -> the kept media item's document (None: killed), for those kept here."""
        if not uris:
            return {}
        ordered = sorted(uris)
        raw = await self.redis.mget([keys.media_item(article_id_for_uri(u)) for u in ordered])
        found: dict[str, dict[str, Any] | None] = {}
        for uri, value in zip(ordered, raw, strict=True):
            if value is not None:
                found[uri] = orjson.loads(value)["document"]
        return found

    # ----- links ---------------------------------------------------------------------------------------

    async def _package(self, article_id: str) -> PackageLink | None:
        raw = await self.redis.get(keys.package_media(article_id))
        return PackageLink.from_json(raw) if raw else None

    async def _remember(self, article: Article) -> None:
        """Which media the article now holds, so that a later push of one revises it."""
        document = article.latest.document or {}
        uris = media_uris(document)
        if not uris:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for uri in uris:
                pipe.sadd(keys.media_users(article_id_for_uri(uri)), article.id)
            await self.acks.execute(pipe)


def _reread(incoming: IncomingDocument | None, document: dict[str, Any], extra: dict[str, Any] | None
            ) -> IncomingDocument:
    """A 3.x document this module put together, checked and hashed like any other."""
    if incoming is not None and document == incoming.document:
        return incoming
    checked = read_document(document, dialect="3", extra=extra)
    if incoming is None:
        return checked
    return dataclasses.replace(checked, dialect=incoming.dialect,
                               removed_characters=incoming.removed_characters + checked.removed_characters)


__all__ = ["CREATED", "REVISED", "STORED", "UNCHANGED", "PackageLink", "PushResult", "SuperdeskIngest"]
