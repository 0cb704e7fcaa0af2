"""HTTP caching for rendered representations: content coding negotiation, strong ETags per coding,
``If-None-Match``/``If-Modified-Since`` answered with 304, and the headers every cached GET carries."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from aiohttp import web

from server.feed_builder import Representation

TEXT_TYPES_WITH_CHARSET = ("xml", "json")


def choose_coding(accept_encoding: str, available: dict[str, bytes]) -> str:
    """br, else gzip, else identity, among the codings the client accepts (q > 0)."""
    accepted: dict[str, float] = {}
    for part in accept_encoding.split(","):
        token, _, params = part.strip().partition(";")
        token = token.strip().lower()
        if not token:
            continue
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        accepted[token] = quality
    for coding in ("br", "gzip"):
        if coding in available and accepted.get(coding, accepted.get("*", 0.0)) > 0:
            return coding
    return "identity"


@lru_cache(maxsize=4096)
def http_date(moment: datetime) -> str:
    # Cached: a feed's Last-Modified is formatted on every hit otherwise (strftime is not cheap).
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


@lru_cache(maxsize=64)
def _charset(media_type: str) -> str | None:
    return "utf-8" if any(t in media_type for t in TEXT_TYPES_WITH_CHARSET) else None


def not_modified(request: web.Request, etag: str, last_modified: datetime | None) -> bool:
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        wanted = _opaque(etag)
        return any(_opaque(candidate) == wanted for candidate in if_none_match.split(","))
    if_modified_since = request.if_modified_since
    if if_modified_since is not None and last_modified is not None:
        return last_modified.replace(microsecond=0) <= if_modified_since
    return False


def respond(request: web.Request, representation: Representation, cache_control: str,
            extra_headers: dict[str, str] | None = None) -> web.Response:
    coding = choose_coding(request.headers.get("Accept-Encoding", ""), representation.bodies)
    etag = representation.etags[coding]
    headers = {
        "ETag": etag,
        "Cache-Control": cache_control,
        "Vary": "Accept-Encoding",
        **(extra_headers or {}),
    }
    if representation.last_modified is not None:
        headers["Last-Modified"] = http_date(representation.last_modified)
    if representation.links:
        headers["Link"] = ", ".join(f'<{url}>; rel="{rel}"' for rel, url in representation.links.items())
    if representation.empty:
        return web.Response(status=204, headers=headers)
    if not_modified(request, etag, representation.last_modified):
        return web.Response(status=304, headers=headers)
    if coding != "identity":
        headers["Content-Encoding"] = coding
    charset = _charset(representation.media_type)
    return web.Response(body=representation.bodies[coding], headers=headers,
                        content_type=representation.media_type, charset=charset)


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag
