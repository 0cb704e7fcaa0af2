"""Cached feed polls answered beneath aiohttp's request handling: the hot path of a syndication server.

A partner polling a feed that is already rendered in this process's memory is the request the server
answers most, and it needs nothing of aiohttp's per-request machinery (a Request and a Response
object, a task, header maps copied and serialised): on the benchmark machine that machinery alone
held a cached GET to about 0.4x of nginx, before any logic of ours. So each connection's aiohttp
protocol gets its parser wrapped (:class:`_Parser`): every byte is still parsed by aiohttp's own
parser, and of the complete requests it yields, the ones below are handed to
:class:`server.http.poll.FeedPolls`, the one implementation of a poll's answer that the route uses too.

This module is only a door: it recognises a request and sends the answer it is given. Handed over,
only when all of these hold (anything else goes on to aiohttp and its route, unchanged):

- an HTTP/1.1 keep-alive ``GET /feeds/{name}/{format}`` with no body, no ``Upgrade``, no ``Expect``,
  no percent-encoding, and a query of at most ``key`` and ``since``, each once;
- the connection has nothing else in progress or queued (pipelined answers stay in order), nothing
  waiting to be written (a client that does not read is left to aiohttp's flow control), and fewer
  pipelined requests in one read than aiohttp's queue holds (past that its parser pauses, and only
  aiohttp resumes it).

:meth:`FeedPolls.from_memory <server.http.poll.FeedPolls.from_memory>` then decides: an answer when
memory alone can give it (the access decision, the page current in memory, the conditional GET), else
None (a refusal, a key not yet accepted, a miss), and the request goes on to the route, which makes
every refusal and every render. An answer is charged and recorded
(:meth:`FeedPolls.settle <server.http.poll.FeedPolls.settle>`), written as the bytes of its head
(:meth:`PollAnswer.head_bytes <server.http.poll.PollAnswer.head_bytes>`: the route's header lines) and
the body, and counted with the route's metrics and access line (:func:`server.http.middleware.record`).
``tests/test_fast_path.py`` checks both paths give the same answers.

A poller sends the same bytes poll after poll. So a connection remembers the last request it answered
here as a :class:`~server.http.poll.Poll` (what it asks, read once), and when the next bytes are
identical and the parser is known to be between requests, they are handed over as that Poll without
being parsed again (:meth:`_Parser.replay`). Only the reading is skipped: the key, the quota and the
cache are decided afresh for every answer, and if memory cannot answer, the bytes go to the parser and
on to aiohttp as usual.

This uses a few of aiohttp's private attributes (listed in ``PROTOCOL_ATTRIBUTES``; aiohttp is pinned
to the releases that have them, see ``pyproject.toml``). If an aiohttp release lacks one, no
connection gets the fast path and every request takes the ordinary path; :attr:`FastPath.unavailable`
says why, a warning is logged, and the test suite fails (``tests/conftest.py``).
"""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from time import perf_counter
from typing import Any

from aiohttp import __version__ as aiohttp_version
from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.streams import EMPTY_PAYLOAD

from server.core.errors import Problem
from server.http.client_address import peer_address
from server.http.connections import LimitedProtocol, LimitedRunner, LimitedServer
from server.http.middleware import record
from server.http.poll import FEED_POLLS, FEED_ROUTE, Poll
from server.http.state import METRICS, SETTINGS
from server.observability.logs import request_id_for

log = logging.getLogger(__name__)

# What the fast path reads or sets on aiohttp's RequestHandler (all set in its __init__), and the method
# it calls on the request parser. aiohttp 3.14.1 added _max_msg_queue_size and message_consumed (with its
# bound on pipelined requests); 3.14.4 arms the keep-alive timer these answers move on (see pyproject.toml).
PROTOCOL_ATTRIBUTES = ("_parser", "_waiter", "_messages", "_loop", "_keepalive_timeout",
                       "_next_keepalive_close_time", "_close", "_force_close", "_upgraded", "_payload_parser",
                       "_max_msg_queue_size")
PARSER_METHODS = ("feed_data", "message_consumed")
_QUERY_NAMES = frozenset({"key", "since"})
_END_OF_HEAD = b"\r\n\r\n"


class FastPath:
    """Hands cached feed polls of one application's connections to :class:`~server.http.poll.FeedPolls`
    and writes the answers (see the module's docstring)."""

    def __init__(self, app: web.Application, zero_copy: bool = False) -> None:
        self.polls = app[FEED_POLLS]
        self.proxies = app[SETTINGS].trusted_proxies
        self.metrics = app[METRICS]
        self.zero_copy = zero_copy  # the loop's writelines is flow-controlled (uvloop): send head and body as they are
        self.replayed = 0  # answers given to unparsed repeats (see _Parser.replay)
        self.unavailable: str | None = None  # why connections take the ordinary path, if they do
        self._date_second = -1
        self._date_line = b""

    def read(self, message: Any, payload: Any, peer: str) -> Poll | None:
        """The poll a parsed request from ``peer`` (the connection's) is, if it is one the fast path may
        hand over; None leaves it to aiohttp."""
        target: str = message.path
        if message.method != "GET" or not target.startswith("/feeds/") or message.should_close \
                or message.upgrade or message.version != HttpVersion11 or payload is not EMPTY_PAYLOAD \
                or "%" in target:
            return None
        path, _, query_string = target.partition("?")
        parts = path.split("/")
        if len(parts) != 4:
            return None
        query = None
        if query_string:
            query = message.url.query
            if not _QUERY_NAMES.issuperset(query) or len(query) != len(set(query)):
                return None
        headers = message.headers
        if "Expect" in headers:
            return None  # the route answers Expect (100 Continue, or 417)
        try:
            return self.polls.read(parts[2], parts[3], query, headers, target,
                                   self.proxies.client_address(peer, headers))
        except Problem:
            return None  # the route makes the same refusal

    def answer(self, protocol: Any, poll: Poll) -> bool:
        """Answer a poll now, if memory allows; False leaves the request to aiohttp, with nothing done."""
        started = perf_counter()
        transport = protocol.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        polls = self.polls
        answer = polls.from_memory(poll)
        if answer is None:
            return False
        request_id = request_id_for(poll.request_id)
        written = False
        try:
            # From the charge on, the request is this path's: a failure after it must not let aiohttp
            # charge, record or (after the write) answer it a second time.
            header_bytes = answer.head_bytes(polls.settle(answer), self._date(), request_id)
            status = answer.status
            if status != 200:
                transport.write(header_bytes)
            elif self.zero_copy:
                transport.writelines((header_bytes, answer.head.body))
            else:
                transport.write(header_bytes)
                transport.write(answer.head.body)
            written = True
            protocol._next_keepalive_close_time = protocol._loop.time() + protocol._keepalive_timeout
            self.metrics.http.fast_answers += 1
            record(self.metrics, "GET", FEED_ROUTE, poll.target, status, perf_counter() - started, True, request_id,
                   answer.partner, poll.address)
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
        peer = peer_address(protocol.peername)
        for message, payload in messages:
            try:
                poll = fast_path.read(message, payload, peer)
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


def missing_internals(protocol: Any) -> list[str]:
    """What of aiohttp's internals the fast path needs ``protocol`` (a RequestHandler) lacks."""
    missing = [name for name in PROTOCOL_ATTRIBUTES if not hasattr(protocol, name)]
    parser = getattr(protocol, "_parser", None)
    missing += [f"_parser.{name}" for name in PARSER_METHODS if parser is not None and not hasattr(parser, name)]
    return missing


class _Protocol(LimitedProtocol):
    """The protocol for one connection (capped and timed by :mod:`server.http.connections`), offering
    each read to the fast path's replay first. A connection refused by a cap gets no fast path."""

    __slots__ = ()

    def __init__(self, manager: _Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        fast_path = manager.fast_path
        if fast_path is None or fast_path.unavailable:
            return
        missing = missing_internals(self)
        if missing:
            fast_path.unavailable = f"aiohttp {aiohttp_version} lacks {', '.join(missing)}"
            log.warning("%s, which server.http.fast_path needs: cached polls take the ordinary path",
                        fast_path.unavailable)
            return
        self._parser = _Parser(self._parser, self, fast_path)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        parser = self._parser
        if self.refused and type(parser) is _Parser:
            self._parser = parser._parser

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if data and type(parser) is _Parser and parser.replay(data):
            return
        super().data_received(data)


class _Server(LimitedServer):
    fast_path: FastPath | None = None
    protocol = _Protocol


class FastPathRunner(LimitedRunner):
    """The :class:`~server.http.connections.LimitedRunner` whose connections answer cached feed polls
    on the fast path."""

    server_class = _Server

    def __init__(self, app: web.Application, *, zero_copy: bool = False, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._zero_copy = zero_copy

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the app's start-up: its state exists from here
        assert isinstance(server, _Server)
        server.fast_path = FastPath(self.app, self._zero_copy)
        return server
