"""Feeds and items for partners: ``/feeds/{name}/{format}`` and ``/items/{id}[/newsml]``.

Thin handlers: they parse the request, ask the feed cache (or the store, for items) and hand the
representation to :func:`server.http.caching.respond`. An item's body is made by
:mod:`server.push.payloads`, the same code that makes a webhook's, so both are the same bytes.
"""

from __future__ import annotations

from functools import lru_cache

from aiohttp import web

from server.core.errors import NotFound, Problem
from server.core.values import utc_now, whole_number
from server.domain.articles import Article, is_article_id
from server.domain.feeds import FORMATS, FeedDefinition, in_feed
from server.domain.propagation import as_delivered
from server.feeds.builder import Representation
from server.feeds.cache import page_name
from server.feeds.render import NEWSML_MESSAGE_MEDIA_TYPE
from server.http.caching import respond
from server.http.state import ACCESS, FEED_BUILDER, FEED_CACHE, FEEDS, SETTINGS, STORE
from server.partners.access import Grant, Reader
from server.push.payloads import NINJS_MEDIA_TYPE, item_newsml, ninjs_body

FEED_ROUTE = "/feeds/{name}/{format}"


async def get_feed(request: web.Request) -> web.Response:
    # Every cached poll comes through here: one lookup of each shared object, and no await on a hit.
    app, match = request.app, request.match_info
    feeds, name, fmt = app[FEEDS], match["name"], match["format"]
    feed = feeds.get(name)
    if feed is None:
        raise NotFound(f"No feed {name!r}; the feeds are {', '.join(sorted(feeds))}.", feeds=sorted(feeds))
    if fmt not in FORMATS:
        raise NotFound(f"No format {fmt!r}; this feed comes as {', '.join(FORMATS)}.", formats=list(FORMATS))
    since = _since(request) if request.query_string else None
    access, cache = app[ACCESS], app[FEED_CACHE]
    grant = access.authorise(request, feed, fmt)
    rendered = cache.hit(feed, fmt, page_name(since), grant.variant) \
        or await cache.get(feed, fmt, since, grant.variant)
    response = respond(request, rendered, cache_control(feed, grant, app[SETTINGS].feed_max_age_seconds))
    access.delivered(request, grant, response, feed.name, fmt, rendered.render_id, rendered.manifest)
    return response


async def get_item(request: web.Request) -> web.Response:
    """The stored ninjs of the latest revision; a killed (or purged) article gives its tombstone, and a
    partner that had the story but may no longer read it gets the withdrawal (propagation rule)."""
    article, reader = await _visible_article(request)
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
    article, reader = await _visible_article(request)
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


def _since(request: web.Request) -> int | None:
    raw = request.query.get("since")
    if raw is None:
        return None
    since = whole_number(raw)
    if since is None:
        raise Problem("since must be the cursor a feed handed out (a whole number).", parameter="since")
    return since


async def _visible_article(request: web.Request) -> tuple[Article, Reader]:
    """The article, if a feed may show it now, and who asks; the key is checked before the store is
    asked anything, and whether this reader may read it is left to :meth:`AccessControl.authorise_item`."""
    article_id = request.match_info["id"]
    if not is_article_id(article_id):
        raise NotFound(f"{article_id!r} is not an item id of this server.")
    feeds = request.app[FEEDS].values()
    reader = request.app[ACCESS].identify(request, open_to_anonymous=any(f.public for f in feeds))
    article = await request.app[STORE].get(article_id)
    if article is None or not in_feed(article, utc_now(), None):
        raise NotFound(f"No item {article_id}.")
    return article, reader


def _item_delivered(request: web.Request, grant: Grant, response: web.StreamResponse, article_id: str,
                    version: int, fmt: str | None) -> None:
    render_id = f"item-{article_id}-{version}-{grant.variant}"
    request.app[ACCESS].delivered(request, grant, response, f"item:{article_id}", fmt, render_id,
                                  ((article_id, version),))


def cache_control(feed: FeedDefinition, grant: Grant, max_age: int) -> str:
    # A response that needed a key must not be kept by shared caches.
    return _cache_control_value(feed.public and grant.partner is None, max_age)


@lru_cache(maxsize=16)
def _cache_control_value(public: bool, max_age: int) -> str:
    return f"{'public' if public else 'private'}, max-age={max_age}"


def _item_cache_control(request: web.Request) -> str:
    return f"private, max-age={request.app[SETTINGS].feed_max_age_seconds}"

