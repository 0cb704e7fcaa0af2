"""The ingest and article API under ``/api/articles``: thin handlers that parse, call the store, answer."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from server.articles.store import CREATED, IngestResult
from server.core.errors import NotFound, Problem
from server.core.values import iso, parse_iso, whole_number
from server.domain.articles import Article, Revision, is_article_id
from server.domain.callers import Caller
from server.domain.ninjs import DocumentError, IncomingDocument, parse_json_object, read_document
from server.http.auth import require_caller
from server.http.state import SETTINGS, STORE

JSON = "application/json"


async def create_article(request: web.Request) -> web.Response:
    caller = _caller(request)
    incoming = await _read_incoming(request)
    result = await request.app[STORE].ingest(incoming, caller.name, signal=_signal(request),
                                             if_match=_if_match(request))
    return _ingest_response(request, result)


async def put_article(request: web.Request) -> web.Response:
    caller = _caller(request)
    article_id = _article_id(request)
    incoming = await _read_incoming(request)
    result = await request.app[STORE].ingest(incoming, caller.name, signal=_signal(request),
                                             expected_id=article_id, if_match=_if_match(request))
    return _ingest_response(request, result)


async def kill_article(request: web.Request) -> web.Response:
    caller = _caller(request)
    article_id = _article_id(request)
    reason = request.query.get("reason")
    if request.can_read_body:
        raw = await request.read()
        if raw.strip():
            try:
                body = parse_json_object(raw)
            except DocumentError as exc:
                raise Problem(exc.detail) from None
            unknown = sorted(set(body) - {"reason"})
            if unknown:
                raise Problem(f"Unknown field {unknown[0]!r}; a kill takes only 'reason'.",
                              status=422, errors=[{"pointer": f"/{unknown[0]}", "detail": "unknown field"}])
            if "reason" in body and not isinstance(body["reason"], str | None):
                raise Problem("reason must be a string.", status=422,
                              errors=[{"pointer": "/reason", "detail": "must be a string"}])
            reason = body.get("reason") or reason
    result = await request.app[STORE].kill(article_id, caller.name, reason, if_match=_if_match(request))
    return _ingest_response(request, result)


async def get_article(request: web.Request) -> web.Response:
    _caller(request)
    article = await request.app[STORE].require(_article_id(request))
    return _json(_article_body(request, article), headers=_article_headers(request, article))


async def list_articles(request: web.Request) -> web.Response:
    _caller(request)
    query = request.query
    status = query.get("status")
    if status is not None and status not in ("usable", "withheld", "canceled"):
        raise Problem("status must be usable, withheld or canceled.", parameter="status")
    since = None
    if "since" in query:
        try:
            since = parse_iso(query["since"])
        except ValueError:
            raise Problem("since must be an RFC 3339 date-time with a timezone, e.g. 2024-05-01T12:00:00Z.",
                          parameter="since") from None
    limit = _int_param(query, "limit", 50, 1, 200)
    page = await request.app[STORE].list_articles(status=status, changed_since=since, uri=query.get("uri"),
                                                   limit=limit, cursor=query.get("cursor"))
    body: dict[str, Any] = {"items": [_article_summary(request, a) for a in page.articles], "next": None}
    headers = {}
    if page.next_cursor:
        next_url = str(request.url.update_query(cursor=page.next_cursor).relative())
        body["next"] = next_url
        headers["Link"] = f'<{next_url}>; rel="next"'
    return _json(body, headers=headers)


async def list_versions(request: web.Request) -> web.Response:
    _caller(request)
    article_id = _article_id(request)
    history = await request.app[STORE].history(article_id)
    return _json({
        "id": article_id,
        "uri": history[-1].uri,
        "versions": [{**_revision_meta(r), "href": f"/api/articles/{article_id}/versions/{r.version}"}
                     for r in history],
    })


async def get_version(request: web.Request) -> web.Response:
    """One revision's record, byte for byte as stored."""
    _caller(request)
    article_id = _article_id(request)
    raw_version = request.match_info["version"]
    version = whole_number(raw_version)
    if version is None or version < 1:
        raise NotFound(f"Versions are whole numbers from 1; {raw_version!r} is not one.")
    raw = await request.app[STORE].revision_json(article_id, version)
    return web.Response(body=raw, content_type=JSON, headers={"ETag": f'"{version}"'})


# ----- helpers -------------------------------------------------------------------------------------


def _caller(request: web.Request) -> Caller:
    return require_caller(request)


def _article_id(request: web.Request) -> str:
    article_id = request.match_info["id"]
    if not is_article_id(article_id):
        raise NotFound(f"{article_id!r} is not an article id of this server (16 characters a-z, 2-7).")
    return article_id


async def read_json_body(request: web.Request) -> bytes:
    """The raw body of a ninjs push: JSON (415 otherwise), within ``SYNDICATE_MAX_BODY_BYTES`` (413)."""
    content_type = request.content_type
    if content_type not in ("application/json", "application/ninjs+json") and not content_type.endswith("+json"):
        raise Problem(f"Send the ninjs document as application/json, not {content_type or 'no type'}.",
                      status=415, slug="unsupported-media-type")
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Problem(f"The body is larger than the limit of {limit} bytes.", status=413, slug="content-too-large")
    return await request.read()


def document_problem(exc: DocumentError) -> Problem:
    return Problem(exc.detail, status=exc.status, slug="invalid-document", errors=exc.errors)


async def _read_incoming(request: web.Request) -> IncomingDocument:
    raw = await read_json_body(request)
    try:
        return read_document(parse_json_object(raw))
    except DocumentError as exc:
        raise document_problem(exc) from None


def _signal(request: web.Request) -> str | None:
    signal = request.query.get("signal")
    if signal is not None and signal not in ("update", "correction"):
        raise Problem(f"signal must be 'update' or 'correction', got {signal!r}.", parameter="signal")
    return signal


def _if_match(request: web.Request) -> int | None:
    header = request.headers.get("If-Match")
    if header is None:
        return None
    value = header.strip()
    version = whole_number(value[1:-1]) if value.startswith('"') and value.endswith('"') else None
    if version is not None:
        return version
    raise Problem(f"If-Match must be one strong ETag such as '\"3\"', got {header!r}.", parameter="If-Match")


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    number = whole_number(raw)
    if number is None or not low <= number <= high:
        raise Problem(f"{name} must be a whole number from {low} to {high}.", parameter=name)
    return number


def _revision_meta(revision: Revision) -> dict[str, Any]:
    record = revision.to_record()
    del record["document"]
    record["hasBody"] = revision.has_body
    return record


def _article_summary(request: web.Request, article: Article) -> dict[str, Any]:
    latest = article.latest
    headline = None
    if latest.document:
        headline = next((h.get("value") for h in latest.document.get("headlines", [])
                         if h.get("role", "main") == "main"), None)
    return {
        **_revision_meta(latest),
        "headline": headline,
        "etag": article.etag,
        "createdAt": iso(article.created_at),
        "changeSeq": article.change_seq,
        "purgedAt": iso(article.purged_at),
        "purgeReason": article.purge_reason,
        "href": f"/api/articles/{article.id}",
    }


def _article_body(request: web.Request, article: Article) -> dict[str, Any]:
    return {**_article_summary(request, article), "document": article.latest.document}


def _article_headers(request: web.Request, article: Article) -> dict[str, str]:
    return {
        "ETag": article.etag,
        "Location": f"/api/articles/{article.id}",
        "Last-Modified": article.latest.ingested_at.strftime("%a, %d %b %Y %H:%M:%S GMT"),
    }


def _ingest_response(request: web.Request, result: IngestResult) -> web.Response:
    return ingest_response(request, result.article, result.outcome, result.removed_characters)


def ingest_response(request: web.Request, article: Article, outcome: str, removed_characters: int,
                    **members: Any) -> web.Response:
    """The answer to an ingest: the stored article, what happened (``outcome``), 201 when created."""
    body = {
        **_article_body(request, article),
        "outcome": outcome,
        "removedCharacters": removed_characters,
        **members,
    }
    status = 201 if outcome == CREATED else 200
    return _json(body, status=status, headers=_article_headers(request, article))


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON, headers=headers)
