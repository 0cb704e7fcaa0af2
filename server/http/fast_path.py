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

- an HTTP/1.1 keep-alive ``GET /feeds/{name}/{format}`` with no body, no ``Upgrade``, no ``Expect``,
  no percent-encoding, and a query of at most ``key`` and ``since``;
- the connection has nothing else in progress or queued (pipelined answers stay in order), nothing
  waiting to be written (a client that does not read is left to aiohttp's flow control), and fewer
  pipelined requests in one read than aiohttp's queue holds (past that its parser pauses, and only
  aiohttp resumes it);
- :meth:`AccessControl.remembered_grant <server.partners.access.AccessControl.remembered_grant>` lets it in
  from memory (a key accepted before, entitled, within its quota, from an address the brute-force
  throttle is not refusing; or no key on a public feed);
- the page is current in this process's memory (:meth:`FeedCache.hit <server.feeds.cache.FeedCache.hit>`),
  and the request has no ``If-Modified-Since`` without ``If-None-Match``.

The answer (200, 304, or 204 for an empty page) is the route's: the same header lines (:class:`server.http.caching.ResponseHead`), the
quota charge with its ``RateLimit`` headers and the poll-ledger line
(:meth:`AccessControl.settle <server.partners.access.AccessControl.settle>`), the request metrics and the access
line, and an ``X-Request-Id``. ``tests/test_fast_path.py`` checks both paths give the same answers.

A poller sends the same bytes poll after poll. So a connection remembers the last request it answered
here as a :class:`Poll` (what it asks, read once), and when the next bytes are identical and the parser
is known to be between requests, they are answered from the Poll without being parsed again
(:meth:`_Parser.replay`). Only the reading is skipped: the key, the quota and the cache are checked
afresh for every answer, and if any check fails the bytes go to the parser and on to aiohttp as usual.

This uses a few of aiohttp's private attributes (listed in ``_PROTOCOL_ATTRIBUTES``); if an aiohttp
release lacks one, no connection gets the fast path and every request takes the ordinary path (a
warning says so, and the fast-path tests fail).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from email.utils import formatdate
from time import perf_counter
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.streams import EMPTY_PAYLOAD

from server.core.errors import Problem
from server.core.values import whole_number
from server.domain.feeds import FORMATS, FeedDefinition
from server.feeds.cache import page_name
from server.http.api.feeds import FEED_ROUTE, cache_control
from server.http.caching import choose_coding, etag_matches, response_head
from server.http.state import ACCESS, FEED_CACHE, FEEDS, METRICS, SETTINGS
from server.observability.logs import REQUEST_ID_HEADER, access_line, request_id_for
from server.partners.access import presented_key

log = logging.getLogger(__name__)

# What the fast path reads or sets on aiohttp's RequestHandler (all set in its __init__).
_PROTOCOL_ATTRIBUTES = ("_parser", "_waiter", "_messages", "_loop", "_keepalive_timeout",
                        "_next_keepalive_close_time", "_close", "_force_close", "_upgraded", "_payload_parser",
                        "_max_msg_queue_size")
_QUERY_NAMES = frozenset({"key", "since"})
_END_OF_HEAD = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Poll:
    """What a feed poll asks, read from its request once."""

    target: str  # the request target as sent (for the access line)
    feed: FeedDefinition
    fmt: str
    page: str
    presented: str | None  # the key it presents, if any
    accept_encoding: str
    if_none_match: str | None
    request_id: str | None  # the client's own X-Request-Id, if it sent one
    address: str  # the client's, as aiohttp's request.remote gives it (for the brute-force throttle)


class FastPath:
    """Answers cached feed polls for one application's connections (see the module's docstring)."""

    def __init__(self, app: web.Application, zero_copy: bool = False) -> None:
        self.access, self.cache, self.feeds = app[ACCESS], app[FEED_CACHE], app[FEEDS]
        self.max_age = app[SETTINGS].feed_max_age_seconds
        self.counts = app[METRICS].http
        self.zero_copy = zero_copy  # the loop's writelines is flow-controlled (uvloop): send head and body as they are
        self.replayed = 0  # answers given to unparsed repeats (see _Parser.replay)
        self._date_second = -1
        self._date_line = b""

    def read(self, message: Any, payload: Any, address: str) -> Poll | None:
        """The poll a parsed request is, if it is one the fast path may answer; None leaves it to aiohttp."""
        target: str = message.path
        if message.method != "GET" or not target.startswith("/feeds/") or message.should_close \
                or message.upgrade or message.version != HttpVersion11 or payload is not EMPTY_PAYLOAD \
                or "%" in target:
            return None
        path, _, query_string = target.partition("?")
        parts = path.split("/")
        if len(parts) != 4:
            return None
        feed, fmt = self.feeds.get(parts[2]), parts[3]
        if feed is None or fmt not in FORMATS:
            return None
        query_key = since = None
        if query_string:
            query = message.url.query
            if not _QUERY_NAMES.issuperset(query) or len(query) != len(set(query)):
                return None
            query_key, raw_since = query.get("key"), query.get("since")
            if raw_since is not None:
                since = whole_number(raw_since)
                if since is None:
                    return None
        headers = message.headers
        if_none_match = headers.get("If-None-Match")
        if (if_none_match is None and "If-Modified-Since" in headers) or "Expect" in headers:
            return None  # the route judges dates, and answers Expect (100 Continue, or 417)
        try:
            presented = presented_key(headers, query_key)
        except Problem:
            return None
        return Poll(target, feed, fmt, page_name(since), presented, headers.get("Accept-Encoding", ""),
                    if_none_match, headers.get(REQUEST_ID_HEADER), address)

    def answer(self, protocol: Any, poll: Poll) -> bool:
        """Answer a poll now, if memory allows; False leaves the request to aiohttp, with nothing done."""
        started = perf_counter()
        transport = protocol.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        feed, fmt = poll.feed, poll.fmt
        access = self.access
        grant = access.remembered_grant(poll.presented, feed, fmt, poll.address)
        if grant is None:
            return False
        rendered = self.cache.hit(feed, fmt, poll.page, grant.variant)
        if rendered is None:
            return False
        head = response_head(rendered, choose_coding(poll.accept_encoding, rendered.bodies),
                             cache_control(feed, grant, self.max_age))
        if_none_match = poll.if_none_match
        if not head.body:
            status, wire = 204, head.wire_204  # an empty page (the route answers it before any condition)
        elif if_none_match is not None and etag_matches(if_none_match, head.etag):
            status, wire = 304, head.wire_304
        else:
            status, wire = 200, head.wire_200
        request_id = request_id_for(poll.request_id)
        date = self._date()
        written = False
        try:
            # From the charge on, the request is this path's: a failure after it must not let aiohttp
            # charge, record or (after the write) answer it a second time.
            quota = access.settle(grant, status, head.etag, if_none_match or "",
                                  len(head.body) if status == 200 else 0, feed.name, fmt,
                                  rendered.render_id, rendered.manifest)
            quota_lines = "" if quota is None else quota.header_lines()
            header_bytes = b"".join((wire, date, f"{quota_lines}{REQUEST_ID_HEADER}: {request_id}\r\n\r\n".encode()))
            if status != 200:
                transport.write(header_bytes)
            elif self.zero_copy:
                transport.writelines((header_bytes, head.body))
            else:
                transport.write(header_bytes)
                transport.write(head.body)
            written = True
            protocol._next_keepalive_close_time = protocol._loop.time() + protocol._keepalive_timeout
            elapsed = perf_counter() - started
            counts = self.counts
            counts.observe("GET", FEED_ROUTE, status, elapsed, True)
            counts.fast_answers += 1
            access_line(request_id, grant.partner.name if grant.partner else None, "GET", FEED_ROUTE, poll.target,
                        status, elapsed)
        except Exception:
            log.exception("the fast path failed while answering a poll; %s", "it was answered" if written
                          else "the connection is closed, as the request was half handled")
            if not written:
                protocol.force_close()  # also ends aiohttp's request loop: nothing after this is handled
        return True

    def _date(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second, self._date_line = now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._date_line


class _Parser:
    """aiohttp's request parser for one connection, with cached feed polls taken out of what it yields
    while the connection is idle (aiohttp's protocol is then waiting for its next request), and the
    last one remembered for :meth:`replay`."""

    __slots__ = ("_parser", "_protocol", "_fast_path", "_between_requests", "_last_bytes", "_last_poll")

    def __init__(self, parser: Any, protocol: Any, fast_path: FastPath) -> None:
        self._parser, self._protocol, self._fast_path = parser, protocol, fast_path
        # True only when the parser is known to hold no part of a request: everything fed to it so far
        # ended with a whole request that has no body, and nothing was left queued behind it.
        self._between_requests = True
        self._last_bytes = b""
        self._last_poll: Poll | None = None

    def replay(self, data: bytes) -> bool:
        """Answer ``data`` unparsed if it is, byte for byte, the last poll answered on this connection,
        and the parser is between requests (so parsing it would give that same request again)."""
        poll = self._last_poll
        if poll is None or not self._between_requests or data != self._last_bytes:
            return False
        protocol = self._protocol
        waiter = protocol._waiter
        if waiter is None or waiter.done() or protocol._messages or protocol._close or protocol._force_close \
                or protocol._upgraded or protocol._payload_parser is not None:
            return False
        try:
            if self._fast_path.answer(protocol, poll):
                self._fast_path.replayed += 1
                return True
            return False
        except Exception:
            log.exception("the fast path failed on a request; aiohttp answers it")
            return False

    def feed_data(self, data: bytes) -> Any:
        was_between = self._between_requests
        self._between_requests = False  # until this parse is known to have ended between requests
        result = self._parser.feed_data(data)
        messages = result[0]
        if not messages:
            return result
        protocol = self._protocol
        waiter = protocol._waiter
        idle = waiter is not None and not waiter.done() and not protocol._messages
        self._between_requests = idle and len(messages) == 1 and not result[1] \
            and messages[0][1] is EMPTY_PAYLOAD and data.endswith(_END_OF_HEAD)
        if not idle or result[1] or len(messages) >= protocol._max_msg_queue_size:
            # An upgrade: aiohttp must see the request it switches protocols after. A full queue's worth
            # of pipelined requests: the parser has paused on the rest, and only aiohttp, draining its
            # queue, resumes it.
            return result
        answered = 0
        fast_path = self._fast_path
        address = _address(protocol)
        for message, payload in messages:
            try:
                poll = fast_path.read(message, payload, address)
                if poll is None or not fast_path.answer(protocol, poll):
                    break
            except Exception:
                log.exception("the fast path failed on a request; aiohttp answers it")
                break
            answered += 1
            self._parser.message_consumed()  # as aiohttp does for each message it takes
            if was_between and self._between_requests:  # these bytes were this one request, whole
                self._last_bytes, self._last_poll = data, poll
        if not answered:
            return result
        return messages[answered:], result[1], result[2]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def _address(protocol: Any) -> str:
    """The client's address as the route sees it (``request.remote or "unknown"``)."""
    peername = protocol.peername
    if peername is None:
        return "unknown"
    return (str(peername[0]) if isinstance(peername, (list, tuple)) else str(peername)) or "unknown"


class _Protocol(web.RequestHandler):
    """aiohttp's protocol for one connection, offering each read to the fast path's replay first."""

    __slots__ = ()

    def __init__(self, manager: _Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        fast_path = manager.fast_path
        if fast_path is None:
            return
        if not all(hasattr(self, name) for name in _PROTOCOL_ATTRIBUTES):
            log.warning("this aiohttp's protocol lacks what server.http.fast_path needs; cached polls take the "
                        "ordinary path")
            manager.fast_path = None
            return
        self._parser = _Parser(self._parser, self, fast_path)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if data and type(parser) is _Parser and parser.replay(data):
            return
        super().data_received(data)


class _Server(web.Server):
    fast_path: FastPath | None = None

    def __call__(self) -> web.RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


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
