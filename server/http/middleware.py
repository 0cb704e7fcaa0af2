"""What every request passes through: request id and log context, problem details for every error,
the request metrics and the access line.

It is written as a wrapper around each route's handler, not as an aiohttp middleware, because it sits
on the hot path of every cached feed GET: with any middleware at all, aiohttp builds a handler chain
and adds a middleware of its own to every request, which cost about a tenth of a cached GET in the
benchmark. Every route is registered through :func:`add_route` (or :func:`add_get`), and the last
route, added at start-up, answers every request no other route matched (404, or 405 with ``Allow``),
so those are wrapped too. What the wrapper does, in order:

1. takes the client's ``X-Request-Id`` when it is sane, else makes one (:func:`server.logs.request_id_for`),
   and keeps it, with the partner once the key check names one, in the log context;
2. turns a :class:`~server.core.errors.Problem`, an aiohttp HTTP error and any unexpected exception into
   an RFC 9457 ``application/problem+json`` answer (:func:`server.problems.problem_for`), counting a
   Redis error among them;
3. counts the request in the process's metrics and queues its access line (both in memory only;
   :func:`record`, which the fast path's answers go through too).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from time import perf_counter

from aiohttp import web
from redis.exceptions import RedisError

from server.core.errors import NotFound, Problem
from server.http.client_address import request_address
from server.http.problems import problem_for
from server.http.state import METRICS
from server.observability.logs import (
    REQUEST_ID_HEADER,
    RequestContext,
    access_line,
    current_context,
    request_id_for,
)
from server.observability.metrics import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNMATCHED_ROUTE = "(unmatched)"


def add_route(app: web.Application, method: str, path: str, handler: Handler) -> None:
    app.router.add_route(method, path, wrap(handler, app[METRICS], route=path))


def add_get(app: web.Application, path: str, handler: Handler) -> None:
    """GET (and HEAD) ``path``."""
    app.router.add_get(path, wrap(handler, app[METRICS], route=path))


def add_unmatched_route(app: web.Application) -> None:
    """The last route: 404 for a path no route has, 405 (with ``Allow``) for a method it does not
    take. Added by an ``on_startup`` handler, so that it comes after every other route."""
    resources = list(app.router.resources())

    async def unmatched(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in resources:
            _match, methods = await resource.resolve(request)
            allowed |= methods
        if allowed:
            raise Problem(f"{request.method} is not allowed here; use {', '.join(sorted(allowed))}.", status=405,
                          headers={"Allow": ",".join(sorted(allowed))})
        raise NotFound(f"Nothing at {request.path}.")

    app.router.add_route("*", "/{path:.*}", wrap(unmatched, app[METRICS], route=UNMATCHED_ROUTE))


def wrap(handler: Handler, metrics: Metrics, route: str | None = None) -> Handler:
    """``handler`` with the request id, problem details, metrics and access line around it; ``route``
    names it in metrics and logs (the route template; by default read from the request)."""
    async def handle(request: web.Request) -> web.StreamResponse:
        started = perf_counter()
        context = RequestContext(request_id_for(request.headers.get(REQUEST_ID_HEADER)))
        token = current_context.set(context)
        status = 500
        response: web.StreamResponse | None = None
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = problem_for(request, exc)
            except Exception as exc:
                if isinstance(exc, RedisError):
                    metrics.count_redis_error("http")
                response = problem_for(request, exc)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = context.request_id
            return response
        except web.HTTPException as exc:  # redirects and the like: answers rather than problems
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = context.request_id
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            elapsed = perf_counter() - started
            if (name := route) is None:
                resource = request.match_info.route.resource
                name = resource.canonical if resource is not None else UNMATCHED_ROUTE
            record(metrics, request.method, name, request.path_qs, status, elapsed,
                   (status == 200 or status == 304) and response is not None and "ETag" in response.headers,
                   context.request_id, context.partner, request_address(request))
            current_context.reset(token)

    return handle


def record(metrics: Metrics, method: str, route: str, target: str, status: int, elapsed: float, cacheable: bool,
           request_id: str, partner: str | None, client: str) -> None:
    """An answered request in the process's metrics, and its access line (both in memory only): for every
    route through :func:`wrap`, and for the polls :mod:`server.http.fast_path` answers beneath aiohttp."""
    metrics.http.observe(method, route, status, elapsed, cacheable)
    access_line(request_id, partner, method, route, target, status, elapsed, client)
