"""Connections: how many one process keeps open (in all, and per client address), how long a request's
head and body may take to arrive, and the answer to what aiohttp's HTTP parser cannot read.

``syndicate serve`` (and the tests' servers) run the app on :class:`LimitedRunner` (or the fast path's
runner, built on it), whose connections are :class:`LimitedProtocol`\\ s: aiohttp's own protocol with
these hooks, counted by one :class:`ConnectionGate` per process.

- **Caps** (``SYNDICATE_MAX_CONNECTIONS``, ``SYNDICATE_MAX_CONNECTIONS_PER_ADDRESS``, per address bucket:
  an IPv6 /64 counts as one address). A connection past a cap is still read, for
  ``REFUSED_HEAD_SECONDS`` at most: ``GET /healthz`` on it is answered as usual (a health check
  must not fail because one address holds every connection), anything else gets 429
  ``too-many-connections`` (the address's cap) or 503 ``server-busy`` (the process's), with
  ``Retry-After``, and the connection is closed. Past twice the process's cap (refused connections
  still open included), a new connection is closed at once, unanswered.
- **Head timeout** (``SYNDICATE_HEADER_TIMEOUT``): a request's head must be complete within this time
  of its first byte (of the accept, for a new connection's first request); else 408 and the connection
  is closed (slowloris). An idle kept-alive connection is aiohttp's keep-alive timeout's.
- **Body timeout** (``SYNDICATE_BODY_TIMEOUT``): a request's body must be complete within this time of
  its head; else the handler reading it gets 408 (problem+json, through the request wrapper) and the
  connection is closed after the answer.
- **Unreadable requests** (a bad request line, bad headers, a line too long): 400 problem+json, logged
  as one line, never a traceback.

A connection is known by its peer (:func:`server.http.client_address.peer_address`): behind a balancer, the balancer's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD

from server.core.errors import Problem
from server.core.forwarding import TrustedProxies
from server.core.networks import address_bucket
from server.core.settings import Settings
from server.http.client_address import peer_address
from server.http.problems import problem_response
from server.http.state import METRICS, SETTINGS

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
REFUSED_HEAD_SECONDS = 2.0  # how long a connection past a cap is read for its request
REFUSED_RETRY_AFTER_SECONDS = 1
_END_OF_HEAD = b"\r\n\r\n"
_PARSER_DETAIL_CHARACTERS = 200


class Admission(StrEnum):
    ADMITTED = "admitted"
    OVER_ADDRESS = "over-address"  # the address's cap: 429
    OVER_PROCESS = "over-process"  # the process's cap: 503
    DROPPED = "dropped"  # far past the caps: closed unanswered


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 10_000
    max_per_address: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    # A balancer's connections carry every client behind it: only the process cap applies to them.
    trusted_proxies: TrustedProxies = TrustedProxies()

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.max_connections, settings.max_connections_per_address, settings.header_timeout_seconds,
                   settings.body_timeout_seconds, settings.trusted_proxies)


class ConnectionGate:
    """The connections one process has open, per address bucket: who is admitted and who is refused."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.admitted = 0
        self.refused = 0  # refused connections still open (being answered)
        self._by_bucket: dict[str, int] = {}

    def admit(self, address: str) -> Admission:
        limits, bucket = self.limits, address_bucket(address)
        if self.admitted + self.refused >= 2 * limits.max_connections:
            return Admission.DROPPED
        held = self._by_bucket.get(bucket, 0)
        if held >= limits.max_per_address and not limits.trusted_proxies.trusts(address):
            self.refused += 1
            return Admission.OVER_ADDRESS
        if self.admitted >= limits.max_connections:
            self.refused += 1
            return Admission.OVER_PROCESS
        self.admitted += 1
        self._by_bucket[bucket] = held + 1
        return Admission.ADMITTED

    def release(self, address: str, admission: Admission) -> None:
        if admission is Admission.ADMITTED:
            self.admitted -= 1
            bucket = address_bucket(address)
            held = self._by_bucket.get(bucket, 1) - 1
            if held > 0:
                self._by_bucket[bucket] = held
            else:
                self._by_bucket.pop(bucket, None)
        elif admission is not Admission.DROPPED:
            self.refused -= 1


_REFUSALS = {
    Admission.OVER_ADDRESS: ("Too many connections from this address; close some, or try again shortly.", 429,
                             "too-many-connections"),
    Admission.OVER_PROCESS: ("The server has too many connections open; try again shortly.", 503, "server-busy"),
}


def _refusal(admission: Admission) -> Problem:
    detail, status, slug = _REFUSALS[admission]
    return Problem(detail, status=status, slug=slug, headers={"Retry-After": str(REFUSED_RETRY_AFTER_SECONDS)})


def _closing(response: web.Response) -> web.Response:
    response.force_close()
    return response


def _raw(problem: Problem) -> bytes:
    """A problem as the bytes of a whole HTTP/1.1 answer that closes the connection (for a request that
    never became one: its head did not arrive in time)."""
    body = problem_response(problem).body
    assert isinstance(body, bytes)
    head = [f"HTTP/1.1 {problem.status} {HTTPStatus(problem.status).phrase}", "Content-Type: application/problem+json",
            f"Content-Length: {len(body)}", "Connection: close",
            *(f"{name}: {value}" for name, value in problem.headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class LimitedProtocol(web.RequestHandler):
    """aiohttp's protocol for one connection, counted by the process's :class:`ConnectionGate`, with the
    head and body timeouts and the problem+json answer to an unreadable request (see the module)."""

    __slots__ = ("_gate", "_address", "_admission", "_head_timer", "_body_timers")

    def __init__(self, manager: LimitedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = manager.gate
        self._address = "unknown"
        self._admission: Admission | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timers: list[asyncio.TimerHandle] = []

    @property
    def refused(self) -> bool:
        return self._admission is not None and self._admission is not Admission.ADMITTED

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._address = peer_address(transport.get_extra_info("peername"))
        admission = self._admission = self._gate.admit(self._address)
        if admission is Admission.ADMITTED:
            self._arm_head_timer(self._gate.limits.header_timeout)
            return
        self._manager_metrics_refused(admission)
        if admission is Admission.DROPPED:
            self.force_close()
            return
        answer = self._request_handler

        async def refuse(request: Any) -> web.StreamResponse:
            if request.path == HEALTH_PATH and request.method in ("GET", "HEAD"):
                return _closing(await answer(request))  # type: ignore[arg-type]
            return _closing(problem_response(_refusal(admission), request.path))

        self._request_handler = refuse
        self._arm_head_timer(min(REFUSED_HEAD_SECONDS, self._gate.limits.header_timeout))

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admission is not None:
            self._gate.release(self._address, self._admission)
            self._admission = None
        self._disarm_head_timer()
        for timer in self._body_timers:
            timer.cancel()
        self._body_timers.clear()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if self._head_timer is None and waiter is not None and not waiter.done() and not self._messages:
            self._arm_head_timer(self._gate.limits.header_timeout)  # the first byte of a new request
        queued = len(self._messages)
        super().data_received(data)
        messages = self._messages
        if len(messages) > queued:
            self._disarm_head_timer()
            for _message, payload in list(messages)[queued:]:
                if payload is not EMPTY_PAYLOAD and not payload.is_eof():
                    self._arm_body_timer(payload)
        elif self._head_timer is not None and data.endswith(_END_OF_HEAD) and not self._force_close:
            self._disarm_head_timer()  # whole requests, answered beneath aiohttp (the fast path)

    # ----- the head ---------------------------------------------------------------------------------

    def _arm_head_timer(self, seconds: float) -> None:
        self._disarm_head_timer()
        self._head_timer = self._loop.call_later(seconds, self._head_late)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        waiter, transport = self._waiter, self.transport
        if transport is None or self._force_close or waiter is None or waiter.done() or self._messages:
            return  # a request arrived after all
        if self.refused and self._admission is not None:
            problem = _refusal(self._admission)
        else:
            problem = Problem(f"The request's head did not arrive within {self._gate.limits.header_timeout:g} s.",
                              status=408, slug="request-timeout")
        transport.write(_raw(problem))
        self.force_close()

    # ----- the body ---------------------------------------------------------------------------------

    def _arm_body_timer(self, payload: Any) -> None:
        self._body_timers = [t for t in self._body_timers if not t.cancelled() and t.when() > self._loop.time()]
        self._body_timers.append(self._loop.call_later(self._gate.limits.body_timeout, self._body_late, payload))

    def _body_late(self, payload: Any) -> None:
        if payload.is_eof() or self.transport is None:
            return
        current = self._current_request
        if not any(p is payload for _m, p in self._messages) and (current is None or current.content is not payload):
            return  # answered already; aiohttp's lingering read is bounded by itself
        seconds = self._gate.limits.body_timeout
        payload.set_exception(web.HTTPRequestTimeout(text=f"The request's body did not arrive within {seconds:g} s."))
        self._lingering_time = 0.0  # nothing more is read of it
        self.close()  # after the answer

    # ----- what the parser cannot read ---------------------------------------------------------------

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was sent already; the connection is closed")
        if status >= 500:
            log.error("error handling a request from %s", self._address, exc_info=exc)
            detail, slug = "The server failed to handle this request; it has been logged.", "internal"
        else:
            reason = " ".join(str(getattr(exc, "message", None) or message or exc or "unreadable").split())
            reason = reason[:_PARSER_DETAIL_CHARACTERS]
            log.info("unreadable request from %s: %r", self._address, reason)
            detail, slug = f"The request could not be read as HTTP/1.1: {reason}", "bad-request"
        return _closing(problem_response(Problem(detail, status=status, slug=slug)))

    def _manager_metrics_refused(self, admission: Admission) -> None:
        manager = self._manager
        if isinstance(manager, LimitedServer) and manager.on_refused is not None:
            manager.on_refused(admission)


class LimitedServer(web.Server):
    """aiohttp's server, making :class:`LimitedProtocol` connections counted by ``gate``."""

    gate: ConnectionGate
    on_refused: Callable[[Admission], None] | None = None
    protocol: type[LimitedProtocol] = LimitedProtocol

    def __call__(self) -> web.RequestHandler:
        return self.protocol(self, loop=self._loop, **self._kwargs)


class LimitedRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose connections are capped and timed (see the module), with
    the limits of the app's settings."""

    server_class: type[LimitedServer] = LimitedServer

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the app's start-up: its state exists from here
        server.__class__ = self.server_class  # same object and state; only the connections it makes differ
        assert isinstance(server, LimitedServer)
        server.gate = ConnectionGate(ConnectionLimits.from_settings(self.app[SETTINGS]))
        metrics = self.app[METRICS]
        server.on_refused = lambda admission: metrics.connection_refused(admission.value)
        return server
