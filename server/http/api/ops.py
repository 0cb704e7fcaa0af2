"""The ops API (admin token): ``/api/status``, ``/api/propagation``, ``/api/deliveries``, a retry, and a
retry of every failed delivery of one destination."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from server.core.errors import Problem
from server.core.values import parse_iso, whole_number
from server.domain.partners import check_name
from server.http.auth import require_caller
from server.http.state import OPS
from server.ops import views as ops
from server.ops.models import DeliveryFilter

DESTINATION_ID = re.compile(r"(ws|wh)-[0-9a-f]{16,20}")


async def get_status(request: web.Request) -> web.Response:
    require_caller(request, admin=True)
    return _json((await ops.overview(request.app[OPS])).to_json())


async def get_propagation(request: web.Request) -> web.Response:
    require_caller(request, admin=True)
    offset, limit = paging(request, ops.PROPAGATION_PAGE)
    since = None
    if "from" in request.query:
        try:
            since = parse_iso(request.query["from"])
        except ValueError:
            raise Problem("from must be an RFC 3339 date-time with a timezone.", parameter="from") from None
    return _json((await ops.propagation(request.app[OPS], since, offset=offset, limit=limit)).to_json())


async def get_deliveries(request: web.Request) -> web.Response:
    require_caller(request, admin=True)
    partner = request.query.get("partner")
    if partner is not None:
        check_name(partner)
    status = request.query.get("status")
    if status is not None and status not in tuple(DeliveryFilter):
        raise Problem("status must be failed or all.", parameter="status")
    report = await ops.deliveries(request.app[OPS], partner, failed_only=status == DeliveryFilter.FAILED)
    return _json(report.to_json())


async def retry_delivery(request: web.Request) -> web.Response:
    require_caller(request, admin=True)
    delivery = request.match_info["delivery_id"]
    if not (len(delivery) == 32 and all(c in "0123456789abcdef" for c in delivery)):
        raise Problem("A delivery id is 32 hexadecimal characters.", status=404, slug="not-found")
    return _json((await ops.retry(request.app[OPS], delivery)).to_json(), status=202)


async def retry_destination(request: web.Request) -> web.Response:
    require_caller(request, admin=True)
    destination = request.match_info["destination_id"]
    if not DESTINATION_ID.fullmatch(destination):
        raise Problem("A destination id is ws- or wh- and hexadecimal characters.", status=404, slug="not-found")
    return _json((await ops.retry_destination(request.app[OPS], destination)).to_json(), status=202)


def paging(request: web.Request, default_limit: int, max_limit: int = 500) -> tuple[int, int]:
    """``?offset=`` (from 0) and ``?limit=`` (1 to ``max_limit``) of a paged list; 400 otherwise."""
    offset = whole_number(request.query.get("offset", "0"))
    if offset is None:
        raise Problem("offset must be a whole number from 0.", parameter="offset")
    limit = whole_number(request.query.get("limit", str(default_limit)))
    if limit is None or not 1 <= limit <= max_limit:
        raise Problem(f"limit must be a whole number from 1 to {max_limit}.", parameter="limit")
    return offset, limit


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
