"""Cached feed polls answered beneath aiohttp's request handling: the hot path of a syndication server.

A partner polling a feed that is already rendered in this process's memory is the request the server
answers most, and it needs nothing of aiohttp's per-request machinery (a Request and a Response
object, a task, header maps copied and serialised): on the benchmark machine that machinery alone
held a cached GET to about 0.4x of nginx, before any logic of ours. So each connection's aiohttp
protocol gets its parser wrapped (:class:`_Parser`): every byte is still parsed by aiohttp's own
parser, and of the complete requests it yields, the ones below are answered here, at once, from
memory; every other request goes on to aiohttp and its route, unchanged.

Answered here, only when all of these hold (anything else, including every refusal, is left to the
route, so each error has one answer and one place that makes it):

- an HTTP/1.1 keep-alive ``GET /feeds/{name}/{format}`` with no body, no percent-encoding, and a
  query of at most ``key`` and ``since``;
- the connection has nothing else in progress or queued (pipelined answers stay in order) and nothing
  waiting to be written (a client that does not read is left to aiohttp's flow control);
- :meth:`AccessControl.remembered_grant <server.access.AccessControl.remembered_grant>` lets it in
  from memory (a key accepted before, entitled, within its quota; or no key on a public feed);
- the page is current in this process's memory (:meth:`FeedCache.hit <server.feed_cache.FeedCache.hit>`),
  and the request has no ``If-Modified-Since`` without ``If-None-Match``.

The answer is the route's: the same header lines (:class:`server.http_caching.ResponseHead`), the
quota charge with its ``RateLimit`` headers and the poll-ledger line
(:meth:`AccessControl.settle <server.access.AccessControl.settle>`), the request metrics and the access
line, and an ``X-Request-Id``. ``tests/test_fast_path.py`` checks both paths give the same answers.

The wrapping uses a few of aiohttp's private attributes (listed in ``_PROTOCOL_ATTRIBUTES``); if an
aiohttp release lacks one, no connection is wrapped and every request takes the ordinary path (a
warning says so, and the fast-path test fails).
"""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from time import perf_counter
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.streams import EMPTY_PAYLOAD

from server.api.feeds import FEED_ROUTE, cache_control
from server.feed_cache import page_name
from server.feeds import FORMATS
from server.http_caching import choose_coding, etag_matches, response_head
from server.logs import REQUEST_ID_HEADER, access_line, request_id_for
from server.metrics import METRICS
from server.state import ACCESS, FEED_CACHE, FEEDS, SETTINGS

log = logging.getLogger(__name__)

# What the wrapping reads or sets on aiohttp's RequestHandler (all set in its __init__).
_PROTOCOL_ATTRIBUTES = ("_parser", "_waiter", "_messages", "_loop", "_keepalive_timeout", "_next_keepalive_close_time")
_QUERY_NAMES = frozenset({"key", "since"})


class FastPath:
    """Answers cached feed polls for one application's connections (see the module's docstring)."""

    def __init__(self, app: web.Application, zero_copy: bool = False) -> None:
        self.access, self.cache, self.feeds = app[ACCESS], app[FEED_CACHE], app[FEEDS]
        self.max_age = app[SETTINGS].feed_max_age_seconds
        self.metrics = app[METRICS]
        self.zero_copy = zero_copy  # the loop's writelines is flow-controlled (uvloop): send head and body as they are
        self._date_second = -1
        self._date_line = b""

    def install(self, protocol: web.RequestHandler) -> bool:
        if not all(hasattr(protocol, name) for name in _PROTOCOL_ATTRIBUTES):
            return False
        protocol._parser = _Parser(protocol._parser, protocol, self)
        return True

    def answer(self, protocol: Any, message: Any, payload: Any) -> bool:
        """Answer one parsed request now, if it is one of ours; False leaves it to aiohttp untouched."""
        started = perf_counter()
        target: str = message.path
        if message.method != "GET" or not target.startswith("/feeds/") or message.should_close \
                or message.version != HttpVersion11 or payload is not EMPTY_PAYLOAD or "%" in target:
            return False
        transport = protocol.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        path, _, query_string = target.partition("?")
        parts = path.split("/")
        if len(parts) != 4:
            return False
        feed, fmt = self.feeds.get(parts[2]), parts[3]
        if feed is None or fmt not in FORMATS:
            return False
        query_key = since = None
        if query_string:
            query = message.url.query
            if not _QUERY_NAMES.issuperset(query) or len(query) != len(set(query)):
                return False
            query_key, raw_since = query.get("key"), query.get("since")
            if raw_since is not None:
                if not raw_since.isdigit() or len(raw_since) > 18:
                    return False
                since = int(raw_since)
        headers = message.headers
        if_none_match = headers.get("If-None-Match")
        if if_none_match is None and "If-Modified-Since" in headers:
            return False
        access = self.access
        grant = access.remembered_grant(headers, query_key, feed, fmt)
        if grant is None:
            return False
        rendered = self.cache.hit(feed, fmt, page_name(since), grant.variant)
        if rendered is None:
            return False
        head = response_head(rendered, choose_coding(headers.get("Accept-Encoding", ""), rendered.bodies),
                             cache_control(feed, grant, self.max_age))
        if not head.body:
            return False  # an empty page is a 204: the route's
        status = 304 if if_none_match is not None and etag_matches(if_none_match, head.etag) else 200

        request_id = request_id_for(headers.get(REQUEST_ID_HEADER))
        rate_limit = access.settle(grant, status, head.etag, if_none_match or "",
                                   len(head.body) if status == 200 else 0, feed.name, fmt,
                                   rendered.render_id, rendered.manifest)
        quota_lines = "" if rate_limit is None else \
            f"RateLimit-Policy: {rate_limit[0]}\r\nRateLimit: {rate_limit[1]}\r\n"
        per_request = f"{quota_lines}{REQUEST_ID_HEADER}: {request_id}\r\n\r\n".encode()
        header_bytes = b"".join((head.wire_200 if status == 200 else head.wire_304, self._date(), per_request))
        if status == 304:
            transport.write(header_bytes)
        elif self.zero_copy:
            transport.writelines((header_bytes, head.body))
        else:
            transport.write(header_bytes)
            transport.write(head.body)
        protocol._next_keepalive_close_time = protocol._loop.time() + protocol._keepalive_timeout

        elapsed = perf_counter() - started
        self.metrics.http.observe("GET", FEED_ROUTE, status, elapsed, True)
        self.metrics.http.fast_answers += 1
        access_line(request_id, grant.partner.name if grant.partner else None, "GET", FEED_ROUTE, target, status,
                    elapsed)
        return True

    def _date(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second, self._date_line = now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._date_line


class _Parser:
    """aiohttp's request parser for one connection, with cached feed polls taken out of what it yields
    while the connection is idle (aiohttp's protocol is then waiting for its next request)."""

    __slots__ = ("_parser", "_protocol", "_fast_path")

    def __init__(self, parser: Any, protocol: Any, fast_path: FastPath) -> None:
        self._parser, self._protocol, self._fast_path = parser, protocol, fast_path

    def feed_data(self, data: bytes) -> Any:
        result = self._parser.feed_data(data)
        messages = result[0]
        if not messages:
            return result
        protocol = self._protocol
        waiter = protocol._waiter
        if waiter is None or waiter.done() or protocol._messages:
            return result
        answered = 0
        for message, payload in messages:
            try:
                if not self._fast_path.answer(protocol, message, payload):
                    break
            except Exception:
                log.exception("the fast path failed on a request; aiohttp answers it")
                break
            answered += 1
            self._parser.message_consumed()  # as aiohttp does for each message it takes
        if not answered:
            return result
        return (list(messages)[answered:], *result[1:])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


class _Server(web.Server):
    fast_path: FastPath | None = None

    def __call__(self) -> web.RequestHandler:
        protocol = super().__call__()
        if self.fast_path is not None and not self.fast_path.install(protocol):
            log.warning("this aiohttp's protocol lacks what server.fast_path needs; cached polls take the "
                        "ordinary path")
            self.fast_path = None
        return protocol


class FastPathRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose connections answer cached feed polls on the fast path."""

    def __init__(self, app: web.Application, *, zero_copy: bool = False, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._zero_copy = zero_copy

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the app's start-up: its state exists from here
        server.__class__ = _Server  # same object and state; only __call__ (one per connection) differs
        server.fast_path = FastPath(self.app, self._zero_copy)
        return server
