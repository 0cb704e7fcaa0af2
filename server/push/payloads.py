"""What one article is sent as: the body of a push (and of ``/items``), its headers and signatures.

A WebSub subscription gets its topic's feed with that one article, made by the same
:meth:`FeedBuilder.render <server.feeds.builder.FeedBuilder.render>` as the feed, so exactly what the
feed shows. A webhook gets a bare NewsML-G2 newsItem, an Atom entry or the stored ninjs. ``/items``
(:mod:`server.http.api.feeds`) shares the ninjs document and the one-article view with webhooks, so an
item and its push are the same bytes. Photos are left out for a partner without photo rights.

:class:`Payloads` keeps the bodies it made in a bounded memo (one render per revision, kind, format,
feed and photo rights, however many destinations get it). Signing is HMAC-SHA256 with the
destination's secret; the delivery id is the same on every retry of one revision to one destination.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from server.domain.articles import Article, Revision
from server.domain.feeds import FeedDefinition
from server.domain.ninjs import document_without_pictures
from server.domain.partners import KeyTable
from server.domain.propagation import Delivery, as_delivered, notice
from server.feeds.builder import RENDERERS, FeedBuilder
from server.feeds.render import (
    NEWSML_ITEM_MEDIA_TYPE,
    FeedView,
    ItemView,
    render_atom_entry,
    render_newsml_item,
    render_newsml_news_item,
)
from server.push.destinations import WEBHOOK, WEBSUB, Destination
from server.push.dispatcher import wants

NINJS_MEDIA_TYPE = "application/json"
# A NewsML-G2 webhook gets the article as a bare newsItem (what the issue asks for; its pictures are
# referenced by guid); the single-item URL and WebSub NewsML topics carry them in a newsMessage.
WEBHOOK_MEDIA_TYPES = {"newsml": NEWSML_ITEM_MEDIA_TYPE, "ninjs": NINJS_MEDIA_TYPE,
                       "atom": "application/atom+xml;type=entry"}
MEMO_SIZE = 2000
USER_AGENT = "syndicate-push/1"


@dataclass(frozen=True, slots=True)
class Payload:
    body: bytes
    content_type: str


# ----- bodies (pure) --------------------------------------------------------------------------------


def ninjs_document(article: Article, include_photos: bool) -> dict[str, Any]:
    """The stored ninjs of the latest revision; a killed (or purged) article gives its tombstone."""
    document = article.latest.document or {"uri": article.uri, "type": "text", "pubStatus": "canceled"}
    return document if include_photos else document_without_pictures(document)


def ninjs_body(article: Article, include_photos: bool) -> bytes:
    return orjson.dumps(ninjs_document(article, include_photos))


def one_article_view(article_id: str, revision: Revision, item_url: str, *, name: str, title: str,
                     self_url: str, hub_url: str | None, include_photos: bool) -> FeedView:
    """The view a renderer takes for one article alone (an item, or a webhook's body)."""
    return FeedView(name=name, title=title, description="One article", language=None, self_url=self_url,
                    alternate_url=item_url, hub_url=hub_url, built_at=revision.ingested_at,
                    render_id=f"{article_id}-{revision.version}", include_photos=include_photos)


def item_newsml(article_id: str, revision: Revision, item_url: str, include_photos: bool) -> bytes:
    """``/items/{id}/newsml``: a newsMessage with the article and its pictures."""
    view = one_article_view(article_id, revision, item_url, name=f"item-{article_id}", title=f"Article {article_id}",
                            self_url=f"{item_url}/newsml", hub_url=None, include_photos=include_photos)
    return render_newsml_item(view, ItemView.from_revision(revision, item_url))


def webhook_payload(fmt: str, article: Article, item_url: str, hub_url: str, include_photos: bool) -> Payload:
    """A webhook's body in its format (``newsml``, ``atom`` or ``ninjs``) for the latest revision."""
    if fmt == "ninjs":
        return Payload(ninjs_body(article, include_photos), WEBHOOK_MEDIA_TYPES[fmt])
    view = one_article_view(article.id, article.latest, item_url, name="push", title="Push", self_url=item_url,
                            hub_url=hub_url, include_photos=include_photos)
    item = ItemView.from_revision(article.latest, item_url)
    body = render_newsml_news_item(view, item) if fmt == "newsml" else render_atom_entry(view, item)
    return Payload(body, WEBHOOK_MEDIA_TYPES[fmt])


def websub_payload(builder: FeedBuilder, feed: FeedDefinition, fmt: str, article: Article, include_photos: bool,
                   now: datetime) -> Payload:
    """A subscription's body: the topic's feed holding only this article, in the topic's format."""
    rendered = builder.render(feed, fmt, [article], since=None, cursor=article.change_seq, generation=0, now=now,
                              include_photos=include_photos)
    return Payload(rendered.bodies["identity"], RENDERERS[fmt][0])


def photos_allowed(destination: Destination, table: KeyTable) -> bool:
    """Whether the destination's partner has photo rights (a public subscriber, or a partner no longer
    known, gets the photos as the feed shows them)."""
    if destination.partner is None:
        return True
    partner = table.partners.get(destination.partner)
    return partner.media if partner else True


# ----- headers and signatures -----------------------------------------------------------------------


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign_websub(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_id(destination_id: str, article_id: str, version: int) -> str:
    """The same on every retry of one revision to one destination, so receivers can de-duplicate."""
    return hashlib.sha256(f"{destination_id}|{article_id}|{version}".encode()).hexdigest()[:32]


def push_headers(destination: Destination, article_id: str, version: int, payload: Payload, *, hub_url: str,
                 timestamp: str) -> dict[str, str]:
    """The headers of a push. Webhooks: the delivery id, the timestamp and ``sha256=`` HMAC of
    ``<timestamp>.<body>``. Subscriptions: ``Link`` to the hub and the topic, the delivery id, and
    ``X-Hub-Signature`` (HMAC of the body) when the subscriber gave a secret."""
    headers = {"Content-Type": payload.content_type, "User-Agent": USER_AGENT}
    if destination.kind == WEBHOOK:
        headers |= {"X-Syndicate-Delivery": delivery_id(destination.id, article_id, version),
                    "X-Syndicate-Timestamp": timestamp,
                    "X-Syndicate-Signature": sign_webhook(destination.secret or "", timestamp, payload.body)}
    else:
        headers["Link"] = f'<{hub_url}>; rel="hub", <{destination.echo_topic}>; rel="self"'
        headers["X-Syndicate-Delivery"] = delivery_id(destination.id, article_id, version)
        if destination.secret:
            headers["X-Hub-Signature"] = sign_websub(destination.secret, payload.body)
    return headers


# ----- the memo -------------------------------------------------------------------------------------


def sent_as(destination: Destination, article: Article, table: KeyTable, feeds: dict[str, FeedDefinition]) -> Delivery:
    """What a destination queued for the article is sent: the latest revision when it may carry it
    (:func:`server.push.dispatcher.wants`), else (its partner had the story, and may no longer read it)
    the kill or withdrawal notice; never the content of a feed it cannot read."""
    if wants(destination, article, table, feeds):
        return Delivery.CONTENT
    return notice(article.latest)


class Payloads:
    """Push bodies, made once per revision, kind, format, feed, photo rights and what is sent (content,
    or a notice) (the last ``size``)."""

    def __init__(self, builder: FeedBuilder, feeds: dict[str, FeedDefinition], hub_url: str,
                 key_table: Callable[[], KeyTable], size: int = MEMO_SIZE) -> None:
        self.builder = builder
        self.feeds = feeds
        self.hub_url = hub_url
        self.key_table = key_table  # () -> KeyTable: the current one
        self.size = size
        self._made: OrderedDict[tuple[str, int, str, str, str | None, bool, Delivery], Payload] = OrderedDict()

    def for_destination(self, destination: Destination, article: Article, include_photos: bool,
                        now: datetime) -> Payload:
        sent = sent_as(destination, article, self.key_table(), self.feeds)
        memo_key = (article.id, article.version, destination.kind, destination.format, destination.feed,
                    include_photos, sent)
        made = self._made.get(memo_key)
        if made is not None:
            return made
        article = as_delivered(article, sent)
        if destination.kind == WEBSUB:
            made = websub_payload(self.builder, self.feeds[destination.feed or ""], destination.format, article,
                                  include_photos, now)
        else:
            made = webhook_payload(destination.format, article, self.builder.item_url(article.id), self.hub_url,
                                   include_photos)
        self._made[memo_key] = made
        if len(self._made) > self.size:
            self._made.popitem(last=False)
        return made
