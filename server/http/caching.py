"""HTTP caching for rendered representations: content coding negotiation, strong ETags per coding,
``If-None-Match``/``If-Modified-Since`` answered with 304, and the headers every cached GET carries."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate
from functools import lru_cache
from urllib.parse import quote

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


def if_modified_since(value: str | None) -> datetime | None:
    """An ``If-Modified-Since`` value as a time, or None when absent or not a date (as aiohttp reads it)."""
    if value is not None:
        parts = parsedate(value)
        if parts is not None:
            with suppress(ValueError):
                return datetime(*parts[:6], tzinfo=UTC)
    return None


def answer_status(head: ResponseHead, if_none_match: str | None, modified_since: datetime | None,
                  last_modified: datetime | None) -> int:
    """The status of a GET of a representation: 204 for an empty body (before any condition), 304 when
    ``If-None-Match`` names its ETag (or, without ``If-None-Match``, when it has not changed since
    ``If-Modified-Since``), else 200."""
    if not head.body:
        return 204
    if if_none_match is not None:
        return 304 if etag_matches(if_none_match, head.etag) else 200
    if modified_since is not None and last_modified is not None \
            and last_modified.replace(microsecond=0) <= modified_since:
        return 304
    return 200


def etag_matches(if_none_match: str, etag: str) -> bool:
    """An ``If-None-Match`` value names ``etag`` (weak comparison, as RFC 9110 asks of it), or is ``*``."""
    if if_none_match.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(candidate) == wanted for candidate in if_none_match.split(","))


def respond(request: web.Request, representation: Representation, cache_control: str,
            extra_headers: dict[str, str] | None = None) -> web.Response:
    """The answer to a GET of ``representation`` (an item's; a feed poll's is :mod:`server.http.poll`'s)."""
    headers = request.headers
    head = response_head(representation, choose_coding(headers.get("Accept-Encoding", ""), representation.bodies),
                         cache_control)
    status = answer_status(head, headers.get("If-None-Match"), if_modified_since(headers.get("If-Modified-Since")),
                           representation.last_modified)
    return head_response(head, status, extra_headers)


def head_response(head: ResponseHead, status: int, extra_headers: dict[str, str] | None = None) -> web.Response:
    """The aiohttp response of one :class:`ResponseHead` at ``status`` (200, 304 or 204)."""
    if status == 200:
        headers = head.headers_200
        if extra_headers:
            headers = CIMultiDict(headers)
            headers.update(extra_headers)
        return web.Response(body=head.body, headers=headers)
    headers = head.headers_304
    if extra_headers:
        headers = CIMultiDict(headers)
        headers.update(extra_headers)
    return web.Response(status=status, headers=headers)


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


PUBLIC_VARY = "Accept-Encoding, Authorization, X-API-Key"


def response_head(representation: Representation, coding: str, cache_control: str) -> ResponseHead:
    """The memoised :class:`ResponseHead` of one representation, coding and Cache-Control."""
    head = representation.heads.get((coding, cache_control))
    if head is None:
        head = representation.heads[(coding, cache_control)] = _head(representation, coding, cache_control)
    return head


def keyed_response_head(representation: Representation, coding: str, cache_control: str, key: str) -> ResponseHead:
    """The head of an answer to a reader that authenticates by ``?key=``: its ``Link`` URLs (all but the
    hub's) carry the key, so the links it follows keep working. Made for that answer alone and never
    memoised: the key is in no cached head or body, which every reader of the page shares."""
    return _head(representation, coding, cache_control, keyed_links(representation.links, key))


def keyed_links(links: dict[str, str], key: str) -> dict[str, str]:
    """``links`` with ``key=<key>`` added to the query of every URL but the hub's."""
    param = "key=" + quote(key, safe="-_.~")
    return {rel: url if rel == "hub" else f"{url}{'&' if '?' in url else '?'}{param}" for rel, url in links.items()}


def _head(representation: Representation, coding: str, cache_control: str,
          links: dict[str, str] | None = None) -> ResponseHead:
    # A public answer may be stored by shared caches; a partner presenting a key may get another
    # representation (without photos), so the cache must tell the requests apart by those headers too.
    vary = PUBLIC_VARY if cache_control.startswith("public") else "Accept-Encoding"
    headers = CIMultiDict({"ETag": representation.etags[coding], "Cache-Control": cache_control, "Vary": vary})
    if representation.last_modified is not None:
        headers["Last-Modified"] = http_date(representation.last_modified)
    links = representation.links if links is None else links
    if links:
        headers["Link"] = ", ".join(f'<{url}>; rel="{rel}"' for rel, url in links.items())
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
