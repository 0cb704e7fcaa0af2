"""The one middleware every request passes through: request id and log context, problem details for
every error, the request metrics and the access line.

It is one middleware rather than three because it sits on the hot path of every cached feed GET, and
each layer of aiohttp middleware costs a coroutine and a call per request. What it does, in order:

1. takes the client's ``X-Request-Id`` when it is sane, else makes one (:func:`server.logs.request_id_for`),
   and keeps it, with the partner once the key check names one, in the log context;
2. turns a :class:`~server.problems.Problem`, an aiohttp HTTP error and any unexpected exception into
   an RFC 9457 ``application/problem+json`` answer (:func:`server.problems.problem_for`), counting a
   Redis error among them;
3. counts the request in the process's metrics and queues its access line (both in memory only).
"""

from __future__ import annotations

import asyncio
import logging
import time
from time import perf_counter
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from server.logs import (
    ACCESS_LINES,
    REQUEST_ID_HEADER,
    RequestContext,
    access_log,
    current_context,
    redact,
    request_id_for,
)
from server.metrics import Metrics
from server.problems import problem_for

UNMATCHED_ROUTE = "(unmatched)"


def request_middleware(metrics: Metrics) -> Any:
    """The middleware for an app whose process-local metrics are ``metrics``."""
    count = metrics.http.observe  # what Metrics.observe_request calls, without the extra call

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
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
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else UNMATCHED_ROUTE
            count(request.method, route, status, elapsed,
                  (status == 200 or status == 304) and response is not None and "ETag" in response.headers)
            if access_log.isEnabledFor(logging.INFO):
                _access_line(request, context, route, status, elapsed)
            current_context.reset(token)

    return middleware


def _access_line(request: web.Request, context: RequestContext, route: str, status: int, elapsed: float) -> None:
    latency_ms = round(elapsed * 1000, 2)
    if ACCESS_LINES.stream is not None:  # JSON: buffered, redacted and written by the flush loop
        ACCESS_LINES.add(time.time(), context.request_id, context.partner, request.method, route,
                         request.path_qs, status, latency_ms)
        return
    path = redact(request.path_qs)
    access_log.info("%s %s %d %.2f ms", request.method, path, status, latency_ms,
                    extra={"method": request.method, "route": route, "path": path, "status": status,
                           "latency_ms": latency_ms})
