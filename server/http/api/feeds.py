"""Feeds and items for partners: ``/feeds/{name}/{format}`` and ``/items/{id}[/newsml]``.

Thin handlers. A feed poll is :mod:`server.http.poll`'s, the one implementation the fast path answers
with too; an item request asks access control and the store, and hands the representation to
:func:`server.http.caching.respond`. An item's body is made by :mod:`server.push.payloads`, the same
code that makes a webhook's, so both are the same bytes.
"""

from __future__ import annotations

from aiohttp import web

from server.core.errors import NotFound, Problem
from server.core.values import utc_now, whole_number
from server.domain.articles import Article, is_article_id
from server.domain.feeds import in_feed
from server.domain.propagation import as_delivered
from server.feeds.builder import Representation
from server.feeds.render import NEWSML_MESSAGE_MEDIA_TYPE
from server.http.caching import respond
from server.http.clients import client_address
from server.http.poll import FEED_POLLS, FEED_ROUTE
from server.http.state import ACCESS, FEED_BUILDER, FEEDS, SETTINGS, STORE
from server.partners.access import ANONYMOUS, Grant, Reader
from server.push.payloads import NINJS_MEDIA_TYPE, item_newsml, ninjs_body

__all__ = ["FEED_ROUTE", "get_feed", "get_item", "get_item_newsml"]


async def get_feed(request: web.Request) -> web.Response:
    """A feed poll: read, decided, looked up and answered by :mod:`server.http.poll` (as the fast path's
    polls are); the request wrapper adds the metrics and the access line."""
    polls = request.app[FEED_POLLS]
    answer = await polls.answer(polls.read_request(request))
    return answer.response(polls.settle(answer))


async def get_item(request: web.Request) -> web.Response:
    """The stored ninjs of the latest revision; a killed (or purged) article gives its tombstone, and a
    partner that had the story but may no longer read it gets the withdrawal (propagation rule)."""
    article, reader = await _visible_article(request, "json")
    grant, sent = await request.app[ACCESS].authorise_latest_item(reader, article, request.app[FEEDS].values(),
                                                                  "json")
    article = as_delivered(article, sent)
    representation = Representation.encode(NINJS_MEDIA_TYPE, ninjs_body(article, grant.include_photos),
                                           article.latest.ingested_at)
    response = respond(request, representation, _item_cache_control(request),
                       {"X-Syndicate-Version": str(article.version)})
    _item_delivered(request, grant, response, article.id, article.version, "json")
    return response


async def get_item_newsml(request: web.Request) -> web.Response:
    """The article alone as NewsML-G2 (a newsMessage with the article and its pictures), latest or
    ``?version=N``; once an article is killed every version answers with the tombstone."""
    version = _version(request)
    article, reader = await _visible_article(request, "newsml")
    revision = article.latest
    if version is not None and version > article.version:
        raise Problem(f"version must be a whole number from 1 to {article.version}.", parameter="version")
    if version is not None and version != article.version and not article.killed:
        revision = await request.app[STORE].revision(article.id, version)
        # The version asked for, not only the latest, must be one the caller may read (never withheld).
        grant = request.app[ACCESS].authorise_item(reader, revision, request.app[FEEDS].values(), "newsml")
    else:  # the latest: the revision, or (had the story, may no longer read it) the kill or withdrawal
        grant, sent = await request.app[ACCESS].authorise_latest_item(reader, article, request.app[FEEDS].values(),
                                                                      "newsml")
        revision = as_delivered(article, sent).latest
    if revision.document is None and not article.killed:
        raise Problem(f"Version {version} is no longer kept (only its metadata is); "
                      f"the latest is version {article.version}.", status=410, slug="version-gone")
    item_url = request.app[FEED_BUILDER].item_url(article.id)
    body = item_newsml(article.id, revision, item_url, grant.include_photos)
    representation = Representation.encode(NEWSML_MESSAGE_MEDIA_TYPE, body, revision.ingested_at)
    response = respond(request, representation, _item_cache_control(request),
                       {"X-Syndicate-Version": str(revision.version)})
    _item_delivered(request, grant, response, article.id, revision.version, "newsml")
    return response


def _version(request: web.Request) -> int | None:
    raw = request.query.get("version")
    if raw is None:
        return None
    version = whole_number(raw)
    if version is None or version < 1:
        raise Problem("version must be a whole number from 1.", parameter="version")
    return version


async def _visible_article(request: web.Request, fmt: str) -> tuple[Article, Reader]:
    """The article, if a feed may show it now, and who asks; the key is checked before the store is
    asked anything, and whether this reader may read it is left to :meth:`AccessControl.authorise_item`."""
    article_id = request.match_info["id"]
    if not is_article_id(article_id):
        raise NotFound(f"{article_id!r} is not an item id of this server.")
    feeds = request.app[FEEDS].values()
    reader = request.app[ACCESS].identify(request, open_to_anonymous=any(f.public for f in feeds),
                                          address=client_address(request))
    article = await request.app[STORE].get(article_id)
    if reader == ANONYMOUS:  # without a key: 401 unless a public feed shows it, whether it exists or not
        visible = article is not None and in_feed(article, utc_now(), None)
        request.app[ACCESS].authorise_item(reader, article.latest if visible and article else None, feeds, fmt)
    if article is None or not in_feed(article, utc_now(), None):
        raise NotFound(f"No item {article_id}.")
    return article, reader


def _item_delivered(request: web.Request, grant: Grant, response: web.StreamResponse, article_id: str,
                    version: int, fmt: str | None) -> None:
    render_id = f"item-{article_id}-{version}-{grant.variant}"
    request.app[ACCESS].delivered(request, grant, response, f"item:{article_id}", fmt, render_id,
                                  ((article_id, version),))


def _item_cache_control(request: web.Request) -> str:
    return f"private, max-age={request.app[SETTINGS].feed_max_age_seconds}"

