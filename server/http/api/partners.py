"""The partner admin API under ``/api/partners`` (admin token): partners, their keys and their status.

A change is applied to this process's key table before the answer goes out, so a revoked key or a
disabled partner fails on the very next request here; other processes hear of it on pub/sub.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from server.core import keys
from server.core.errors import Problem
from server.core.values import parse_iso
from server.domain.ninjs import DocumentError, parse_json_object
from server.domain.partners import IssuedKey, check_name
from server.http.auth import require_caller
from server.http.state import ACCESS, OPS, PARTNERS
from server.ops import views as ops

CREATE_FIELDS = {"name", "feeds", "formats", "media", "contact", "notes", "rate_limit", "expires_at"}
UPDATE_FIELDS = {"feeds", "formats", "media", "active", "contact", "notes", "rate_limit"}


async def create_partner(request: web.Request) -> web.Response:
    _admin(request)
    body = await _json_body(request, CREATE_FIELDS, required={"name", "feeds", "formats"})
    issued = await request.app[PARTNERS].create(
        check_name(body["name"]), body["feeds"], body["formats"], media=_bool(body, "media", True),
        contact=_text(body, "contact"), notes=_text(body, "notes"), rate_limit=body.get("rate_limit"),
        expires_at=_time(body, "expires_at"))
    await request.app[ACCESS].reload(force=True)
    return _issued(issued, headers={"Location": f"/api/partners/{issued.partner.name}"})


async def list_partners(request: web.Request) -> web.Response:
    _admin(request)
    partners, _generation = await request.app[PARTNERS].load_all()
    return _json({"items": [p.public_view() for p in partners]})


async def get_partner(request: web.Request) -> web.Response:
    _admin(request)
    partner = await request.app[PARTNERS].get(request.match_info["name"])
    last_used = await request.app[PARTNERS].redis.hgetall(keys.partner_last_used(partner.name))
    view = partner.public_view()
    for key in view["keys"]:
        key["lastUsed"] = last_used.get(key["keyId"])
    return _json(view)


async def update_partner(request: web.Request) -> web.Response:
    _admin(request)
    name = check_name(request.match_info["name"])
    body = await _json_body(request, UPDATE_FIELDS)
    changes: dict[str, Any] = {}
    for field in ("feeds", "formats", "rate_limit"):
        if field in body:
            changes[field] = body[field]
    for field in ("media", "active"):
        if field in body:
            changes[field] = _bool(body, field, True)
    for field in ("contact", "notes"):
        if field in body:
            changes[field] = _text(body, field)
    partner = await request.app[PARTNERS].update(name, **changes)
    await request.app[ACCESS].reload(force=True)
    return _json(partner.public_view())


async def issue_key(request: web.Request) -> web.Response:
    _admin(request)
    body = await _json_body(request, {"expires_at"}, allow_empty=True)
    issued = await request.app[PARTNERS].issue_key(check_name(request.match_info["name"]), _time(body, "expires_at"))
    await request.app[ACCESS].reload(force=True)
    return _issued(issued)


async def revoke_key(request: web.Request) -> web.Response:
    _admin(request)
    partner = await request.app[PARTNERS].revoke_key(check_name(request.match_info["name"]),
                                                      request.match_info["key_id"])
    await request.app[ACCESS].reload(force=True)
    return _json(partner.public_view())


async def get_partner_status(request: web.Request) -> web.Response:
    _admin(request)
    partner = await request.app[PARTNERS].get(request.match_info["name"])
    status = await ops.partner_status(request.app[OPS], partner)
    return _json(status.to_json())


# ----- helpers -------------------------------------------------------------------------------------


def _admin(request: web.Request) -> None:
    require_caller(request, admin=True)


async def _json_body(request: web.Request, allowed: set[str], required: set[str] = frozenset(),
                     allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if allow_empty and not raw.strip():
        return {}
    try:
        body = parse_json_object(raw)
    except DocumentError as exc:
        raise Problem(exc.detail, errors=exc.errors) from None
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Problem(f"Unknown field {unknown[0]!r}; known: {', '.join(sorted(allowed))}.", status=422,
                      errors=[{"pointer": f"/{unknown[0]}", "detail": "unknown field"}])
    missing = sorted(required - set(body))
    if missing:
        raise Problem(f"{missing[0]} is required.", status=422,
                      errors=[{"pointer": f"/{missing[0]}", "detail": "required"}])
    return body


def _bool(body: dict[str, Any], field: str, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise Problem(f"{field} must be true or false.", status=422,
                      errors=[{"pointer": f"/{field}", "detail": "must be a boolean"}])
    return value


def _text(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and (not isinstance(value, str) or len(value) > 2000):
        raise Problem(f"{field} must be a string of at most 2000 characters.", status=422,
                      errors=[{"pointer": f"/{field}", "detail": "must be a short string"}])
    return value


def _time(body: dict[str, Any], field: str):
    value = body.get(field)
    if value is None:
        return None
    try:
        return parse_iso(value) if isinstance(value, str) else _bad_time(field)
    except ValueError:
        return _bad_time(field)


def _bad_time(field: str):
    raise Problem(f"{field} must be an RFC 3339 date-time with a timezone, in the years 1 to 9999 once in UTC.",
                  status=422, errors=[{"pointer": f"/{field}", "detail": "not a date-time with a timezone"}])


def _issued(issued: IssuedKey, headers: dict[str, str] | None = None) -> web.Response:
    body = {**issued.partner.public_view(), "key": issued.key, "key_id": issued.key_id}
    return _json(body, status=201, headers={"Cache-Control": "no-store", **(headers or {})})


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)
