"""RFC 9457 problem responses: a :class:`server.core.errors.Problem` (or any exception) as
``application/problem+json``."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from server.core.errors import PROBLEM_MEDIA_TYPE, Problem, slug_for_status
from server.http.state import SETTINGS

log = logging.getLogger(__name__)
STORAGE_RETRY_AFTER_SECONDS = 1


def problem_response(problem: Problem, instance: str | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(problem.to_dict(instance)),
        status=problem.status,
        content_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


def _raised_talking_to_redis(exc: BaseException) -> bool:
    """An OS or transport error the Redis client let through unwrapped (uvloop's "handler is closed"
    when a connection drops mid-write in a failover): a Redis fault like any other."""
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    traceback = exc.__traceback__
    while traceback is not None:
        if str(traceback.tb_frame.f_globals.get("__name__", "")).startswith("redis."):
            return True
        traceback = traceback.tb_next
    return False


def problem_for(request: web.Request, exc: Exception) -> web.Response:
    """The problem+json answer for an exception a handler raised: a :class:`Problem` as it is, an
    aiohttp HTTP error (4xx/5xx) with its status, anything else a logged 500."""
    if isinstance(exc, Problem):
        return problem_response(exc, request.path)
    if isinstance(exc, web.HTTPException):
        if exc.status == 413:
            detail = f"The body is larger than the limit of {request.app[SETTINGS].max_body_bytes} bytes."
        else:
            detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
        return problem_response(Problem(detail, status=exc.status, slug=slug_for_status(exc.status), headers=headers),
                                request.path)
    if isinstance(exc, RedisError) or _raised_talking_to_redis(exc):
        # Redis unreachable, timing out, loading, read-only after a failover, out of memory: the
        # request may be retried; nothing was acknowledged.
        log.warning("Redis failed on %s %s: %s: %s", request.method, request.path, type(exc).__name__, exc)
        return problem_response(Problem("Storage is unavailable for a moment; try again shortly.", status=503,
                                        slug="storage-unavailable",
                                        headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)}), request.path)
    log.exception("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return problem_response(Problem("The server failed to handle this request; it has been logged.",
                                    status=500, slug="internal"), request.path)
