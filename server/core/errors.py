"""RFC 9457 problem details: the one error shape of the HTTP API, and the middleware that makes it.

Domain code raises :class:`Problem` (or a subclass); the request middleware (:mod:`server.http.middleware`)
has :func:`problem_for` turn it, any aiohttp HTTP error, and any unexpected exception into an
``application/problem+json`` response. The CLI prints
``problem.detail`` as its one-line error.
"""

from __future__ import annotations

from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad request",
    401: "Unauthorised",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    408: "Request timeout",
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
            self.slug = slug_for_status(status)
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


def slug_for_status(status: int) -> str:
    return _TITLES.get(status, "error").lower().replace(" ", "-")
