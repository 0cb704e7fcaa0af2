"""A feed poll, ``GET /feeds/{name}/{format}``, answered in one place, whichever way it arrived.

A poll reaches the server one of two ways: through aiohttp's request handling to the route
(:func:`server.http.api.feeds.get_feed`), or, on a kept-alive connection, through the fast path
(:mod:`server.http.fast_path`), which only recognises a complete request beneath aiohttp and hands it
here. Both go through :class:`FeedPolls`, step by step:

1. :meth:`FeedPolls.read`: what the poll asks (:class:`Poll`: feed, format, page, the key it presents,
   ``Accept-Encoding``, ``If-None-Match``, ``If-Modified-Since``), or the 404 or 400 for a request that
   cannot be one, or the 401 for an ``Authorization`` that is not a bearer key;
2. the access decision (:meth:`AccessControl.feed_grant <server.partners.access.AccessControl.feed_grant>`)
   and the page (:meth:`FeedCache.hit <server.feeds.cache.FeedCache.hit>`, then, for the route,
   :meth:`FeedCache.get <server.feeds.cache.FeedCache.get>` on a miss);
3. the answer (:class:`PollAnswer`): the coding, ``Cache-Control`` (a day's ``max-age`` for an RFC 5005
   archive page that has a page after it), the status (200, 304, or 204 for an empty page:
   :func:`server.http.caching.answer_status`) and the memoised head
   (:class:`server.http.caching.ResponseHead`); for a partner whose key came as ``?key=``, a head of its
   own whose ``Link`` URLs carry the key (:func:`server.http.caching.keyed_response_head`), so the links
   it follows keep working while no cached page ever holds a key;
4. :meth:`FeedPolls.settle`: the quota charge and the poll-ledger line;
5. the answer sent as an aiohttp response (:meth:`PollAnswer.response`) or as the bytes of its head
   (:meth:`PollAnswer.head_bytes`): the same header lines either way;
6. the request metrics and the access line, :func:`server.http.middleware.record` (the route's wrapper
   calls it; so does the fast path).

:meth:`FeedPolls.from_memory` is steps 2 and 3 for the fast path: the same decision and lookup with no
side effect and no ``await``, and None whenever memory alone cannot answer (a refusal, a key not yet
accepted, the admin token, a page not current in memory). The request then goes on to aiohttp and the
route, so each refusal has one answer, made in one place: a rule added here holds for both ways in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from aiohttp import web

from server.core.errors import NotFound, Problem
from server.core.values import whole_number
from server.domain.feeds import FORMATS, FeedDefinition
from server.feeds.builder import RenderedFeed
from server.feeds.cache import FeedCache, page_name
from server.http.caching import (
    ResponseHead,
    answer_status,
    choose_coding,
    head_response,
    if_modified_since,
    keyed_response_head,
    response_head,
)
from server.http.client_address import request_address
from server.observability.logs import REQUEST_ID_HEADER
from server.partners.access import AccessControl, Grant, presented_key
from server.partners.ratelimit import Quota

FEED_ROUTE = "/feeds/{name}/{format}"
ARCHIVE_MAX_AGE = 86400  # seconds: max-age of an RFC 5005 archive page that has a page after it


@dataclass(slots=True)  # not frozen, like Grant: a frozen init costs several times as much
class Poll:
    """What a feed poll asks, read from its request once (and not changed after)."""

    target: str  # the request target as sent (for the access line)
    feed: FeedDefinition
    fmt: str
    since: int | None
    page: str  # the cache's name for the page: head, or since-<cursor>
    presented: str | None  # the key it presents, if any
    accept_encoding: str
    if_none_match: str | None
    modified_since: datetime | None  # If-Modified-Since, read as a time
    request_id: str | None  # the client's own X-Request-Id, if it sent one
    address: str  # the client's, as server.http.client_address gives it (for the brute-force throttle)
    url_key: str | None = None  # the key, when it came in the URL (?key=): the answer's links carry it
    archive: int | None = None  # ?archive=<page>: an RFC 5005 archive page (the route's; not the fast path's)


@dataclass(slots=True)  # made for every poll: not frozen, for the same reason
class PollAnswer:
    """The answer to one poll, before it is sent: who it was granted to, the page and its head, the status."""

    poll: Poll
    grant: Grant
    rendered: RenderedFeed
    head: ResponseHead
    status: int  # 200, 304, or 204 for an empty page

    def response(self, quota: Quota | None) -> web.Response:
        """As an aiohttp response (the route's), with the ``RateLimit`` fields of ``quota``."""
        response = head_response(self.head, self.status)
        if quota is not None:
            response.headers["RateLimit-Policy"], response.headers["RateLimit"] = quota.header_values()
        return response

    def head_bytes(self, quota: Quota | None, date_line: bytes, request_id: str) -> bytes:
        """The same answer's status line and header lines, serialised, ending with the blank line (the
        fast path's): the head's fixed lines, ``Date``, the ``RateLimit`` fields and ``X-Request-Id``."""
        head, status = self.head, self.status
        wire = head.wire_200 if status == 200 else head.wire_304 if status == 304 else head.wire_204
        quota_lines = "" if quota is None else quota.header_lines()
        return b"".join((wire, date_line, f"{quota_lines}{REQUEST_ID_HEADER}: {request_id}\r\n\r\n".encode()))

    @property
    def partner(self) -> str | None:
        partner = self.grant.partner
        return partner.name if partner else None


class FeedPolls:
    """Answers feed polls for one application, for the route and the fast path alike (see the module)."""

    def __init__(self, access: AccessControl, cache: FeedCache, feeds: dict[str, FeedDefinition],
                 max_age: int) -> None:
        self.access, self.cache, self.feeds, self.max_age = access, cache, feeds, max_age

    def read(self, name: str, fmt: str, query: Mapping[str, str] | None, headers: Mapping[str, str],
             target: str, address: str) -> Poll:
        """The poll a request for ``/feeds/{name}/{fmt}`` is (``query`` None when it has none); 404 for an
        unknown feed or format, 400 for a bad ``since``, 401 for an ``Authorization`` that is not a bearer
        key, in that order."""
        feeds = self.feeds
        feed = feeds.get(name)
        if feed is None:
            raise NotFound(f"No feed {name!r}; the feeds are {', '.join(sorted(feeds))}.", feeds=sorted(feeds))
        if fmt not in FORMATS:
            raise NotFound(f"No format {fmt!r}; this feed comes as {', '.join(FORMATS)}.", formats=list(FORMATS))
        since = query_key = archive = None
        if query:
            raw_since, query_key, raw_archive = query.get("since"), query.get("key"), query.get("archive")
            if raw_since is not None:
                since = whole_number(raw_since)
                if since is None:
                    raise Problem("since must be the cursor a feed handed out (a whole number).", parameter="since")
            if raw_archive is not None:
                archive = whole_number(raw_archive)
                if archive is None or archive < 1:
                    raise Problem("archive must be the number of an archive page (1, 2, ...).", parameter="archive")
                if since is not None:
                    raise Problem("Ask for an archive page or a since page, not both.", parameter="archive")
        presented = presented_key(headers, query_key)
        if_none_match = headers.get("If-None-Match")
        modified_since = None if if_none_match is not None else if_modified_since(headers.get("If-Modified-Since"))
        return Poll(target, feed, fmt, since, page_name(since, archive), presented,
                    headers.get("Accept-Encoding", ""), if_none_match, modified_since, headers.get(REQUEST_ID_HEADER),
                    address, query_key if query_key is not None and presented == query_key else None, archive)

    def read_request(self, request: web.Request) -> Poll:
        """The poll an aiohttp request to the feed route is (see :meth:`read`)."""
        match = request.match_info
        return self.read(match["name"], match["format"], request.query if request.query_string else None,
                         request.headers, request.path_qs, request_address(request))

    def from_memory(self, poll: Poll) -> PollAnswer | None:
        """The answer, when memory alone can give it without a side effect (nothing charged or recorded
        yet: that is :meth:`settle`); None leaves the poll to :meth:`answer`, which refuses or renders."""
        grant = self.access.feed_grant(poll.presented, poll.feed, poll.fmt, poll.address, from_memory=True)
        if grant is None:
            return None
        rendered = self.cache.hit(poll.feed, poll.fmt, poll.page, grant.variant)
        if rendered is None:
            return None
        return self._answer(poll, grant, rendered)

    async def answer(self, poll: Poll) -> PollAnswer:
        """The answer, or the refusal raised (401, 403, 429); a page not in memory is loaded or rendered."""
        feed, fmt = poll.feed, poll.fmt
        try:
            grant = self.access.feed_grant(poll.presented, feed, fmt, poll.address)
        except Problem as refusal:
            # A key made a moment ago by another process may not have reached this one's table yet
            # (pub/sub): if the partners moved on in Redis, read them and decide again.
            if refusal.status != 401 or not poll.presented or not await self.access.caught_up():
                raise
            grant = self.access.feed_grant(poll.presented, feed, fmt, poll.address)
        assert grant is not None  # refusals are raised
        cache = self.cache
        rendered = cache.hit(feed, fmt, poll.page, grant.variant) or await cache.get(feed, fmt, poll.since, grant.variant,
                                                                                  poll.archive)
        return self._answer(poll, grant, rendered)

    def _answer(self, poll: Poll, grant: Grant, rendered: RenderedFeed) -> PollAnswer:
        # An archive page with a page after it will not change: readers may keep it for a day.
        max_age = ARCHIVE_MAX_AGE if rendered.sealed_archive else self.max_age
        coding, control = choose_coding(poll.accept_encoding, rendered.bodies), cache_control(poll.feed, grant, max_age)
        if poll.url_key is not None and grant.partner is not None:
            # A reader that authenticates by URL follows links with the key; the cached page (its body
            # and its shared heads) never holds one: the key goes into this answer's Link header only.
            head = keyed_response_head(rendered, coding, control, poll.url_key)
        else:
            head = response_head(rendered, coding, control)
        return PollAnswer(poll, grant, rendered, head,
                          answer_status(head, poll.if_none_match, poll.modified_since, rendered.last_modified))

    def settle(self, answer: PollAnswer) -> Quota | None:
        """Charge the answer to the partner's quota and buffer its ledger line (as it is sent); the quota,
        for its ``RateLimit`` fields (None for the public and the admin)."""
        poll, head, status, rendered = answer.poll, answer.head, answer.status, answer.rendered
        return self.access.settle(answer.grant, status, head.etag, poll.if_none_match or "",
                                  len(head.body) if status == 200 else 0, poll.feed.name, poll.fmt,
                                  rendered.render_id, rendered.manifest, poll.since)


def cache_control(feed: FeedDefinition, grant: Grant, max_age: int) -> str:
    # A response that needed a key must not be kept by shared caches.
    return _cache_control_value(feed.public and grant.partner is None, max_age)


@lru_cache(maxsize=16)
def _cache_control_value(public: bool, max_age: int) -> str:
    return f"{'public' if public else 'private'}, max-age={max_age}"


FEED_POLLS = web.AppKey("feed_polls", FeedPolls)
