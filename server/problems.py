"""RFC 9457 problem details: the one error shape of the HTTP API, and the middleware that makes it.

Domain code raises :class:`Problem` (or a subclass); the request middleware (:mod:`server.middleware`)
has :func:`problem_for` turn it, any aiohttp HTTP error, and any unexpected exception into an
``application/problem+json`` response. The CLI prints
``problem.detail`` as its one-line error.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from server.state import SETTINGS

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger(__name__)

_TITLES = {
    400: "Bad request",
    401: "Unauthorised",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    410: "Gone",
    412: "Precondition failed",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    428: "Precondition required",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class Problem(Exception):
    """An error the client can act on. ``extensions`` become extra members of the problem object."""

    status = 400
    slug = "bad-request"

    def __init__(self, detail: str, *, status: int | None = None, slug: str | None = None,
                 headers: dict[str, str] | None = None, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None and status != type(self).status:
            self.status = status
            self.slug = _slug(status)
        if slug is not None:
            self.slug = slug
        self.headers = headers or {}
        self.extensions = extensions

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://syndicate.invalid/problems/{self.slug}",
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body


class NotFound(Problem):
    status = 404
    slug = "not-found"


class Conflict(Problem):
    status = 409
    slug = "conflict"


class PreconditionFailed(Problem):
    status = 412
    slug = "precondition-failed"


class Unauthorised(Problem):
    status = 401
    slug = "unauthorised"


def problem_response(problem: Problem, instance: str | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(problem.to_dict(instance)),
        status=problem.status,
        content_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


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
        return problem_response(Problem(detail, status=exc.status, slug=_slug(exc.status), headers=headers),
                                request.path)
    log.exception("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return problem_response(Problem("The server failed to handle this request; it has been logged.",
                                    status=500, slug="internal"), request.path)


def _slug(status: int) -> str:
    return _TITLES.get(status, "error").lower().replace(" ", "-")
