"""HTTP caching for rendered representations: content coding negotiation, strong ETags per coding,
``If-None-Match``/``If-Modified-Since`` answered with 304, and the headers every cached GET carries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from server.feeds.builder import Representation

TEXT_TYPES_WITH_CHARSET = ("xml", "json")


def choose_coding(accept_encoding: str, available: dict[str, bytes]) -> str:
    """br, else gzip, else identity, among the codings the client accepts (q > 0)."""
    for coding in _acceptable(accept_encoding):
        if coding in available:
            return coding
    return "identity"


@lru_cache(maxsize=256)
def _acceptable(accept_encoding: str) -> tuple[str, ...]:
    # Cached: clients send a handful of distinct Accept-Encoding values, each on every request.
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
    return tuple(c for c in ("br", "gzip") if accepted.get(c, accepted.get("*", 0.0)) > 0)


@lru_cache(maxsize=4096)
def http_date(moment: datetime) -> str:
    # Cached: a feed's Last-Modified is formatted on every hit otherwise (strftime is not cheap).
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


@lru_cache(maxsize=64)
def _charset(media_type: str) -> str | None:
    return "utf-8" if any(t in media_type for t in TEXT_TYPES_WITH_CHARSET) else None


def not_modified(request: web.Request, etag: str, last_modified: datetime | None) -> bool:
    headers = request.headers
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        return etag_matches(if_none_match, etag)
    if last_modified is None or "If-Modified-Since" not in headers:
        return False
    if_modified_since = request.if_modified_since
    return if_modified_since is not None and last_modified.replace(microsecond=0) <= if_modified_since


def etag_matches(if_none_match: str, etag: str) -> bool:
    """An ``If-None-Match`` value names ``etag`` (weak comparison, as RFC 9110 asks of it), or is ``*``."""
    if if_none_match.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(candidate) == wanted for candidate in if_none_match.split(","))


def respond(request: web.Request, representation: Representation, cache_control: str,
            extra_headers: dict[str, str] | None = None) -> web.Response:
    headers = request.headers
    head = response_head(representation, choose_coding(headers.get("Accept-Encoding", ""), representation.bodies),
                         cache_control)
    without_body, with_body = head.headers_304, head.headers_200
    if extra_headers:
        without_body, with_body = CIMultiDict(without_body), CIMultiDict(with_body)
        without_body.update(extra_headers)
        with_body.update(extra_headers)
    if not head.body:
        return web.Response(status=204, headers=without_body)
    if ("If-None-Match" in headers or "If-Modified-Since" in headers) \
            and not_modified(request, head.etag, representation.last_modified):
        return web.Response(status=304, headers=without_body)
    return web.Response(body=head.body, headers=with_body)


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What every answer with one representation, coding and Cache-Control carries: made once per
    representation, since every hit on a cached feed sends the same (aiohttp copies the header maps into
    each response). ``wire_200``/``wire_304`` are the same answers' status line and fixed header lines,
    serialised, for :mod:`server.http.fast_path` (which adds the per-request lines and the blank line);
    ``wire_204`` for an empty page, which has no body to send."""

    etag: str
    body: bytes
    headers_304: CIMultiDict[str]  # also a 204's
    headers_200: CIMultiDict[str]
    wire_200: bytes
    wire_304: bytes
    wire_204: bytes


def response_head(representation: Representation, coding: str, cache_control: str) -> ResponseHead:
    """The memoised :class:`ResponseHead` of one representation, coding and Cache-Control."""
    head = representation.heads.get((coding, cache_control))
    if head is None:
        head = representation.heads[(coding, cache_control)] = _head(representation, coding, cache_control)
    return head


def _head(representation: Representation, coding: str, cache_control: str) -> ResponseHead:
    headers = CIMultiDict({"ETag": representation.etags[coding], "Cache-Control": cache_control,
                           "Vary": "Accept-Encoding"})
    if representation.last_modified is not None:
        headers["Last-Modified"] = http_date(representation.last_modified)
    if representation.links:
        headers["Link"] = ", ".join(f'<{url}>; rel="{rel}"' for rel, url in representation.links.items())
    with_body = CIMultiDict(headers)
    if coding != "identity":
        with_body["Content-Encoding"] = coding
    charset = _charset(representation.media_type)
    with_body["Content-Type"] = f"{representation.media_type}; charset={charset}" if charset \
        else representation.media_type
    body = representation.bodies[coding]
    wire_200 = _serialise("200 OK", {**with_body, "Content-Length": str(len(body)), "Server": SERVER_SOFTWARE})
    wire_304 = _serialise("304 Not Modified", {**headers, "Server": SERVER_SOFTWARE})
    wire_204 = _serialise("204 No Content", {**headers, "Server": SERVER_SOFTWARE})
    return ResponseHead(representation.etags[coding], body, headers, with_body, wire_200, wire_304, wire_204)


def _serialise(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers.items())]
    if any(c in line for line in lines for c in "\r\n"):
        raise ValueError("a header value holds a line break")
    return ("\r\n".join(lines) + "\r\n").encode()


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag
