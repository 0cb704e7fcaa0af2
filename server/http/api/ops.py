"""The ops API (admin token): ``/api/status``, ``/api/propagation``, ``/api/deliveries`` and a retry."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from server.core.errors import Problem
from server.core.values import parse_iso
from server.domain.partners import check_name
from server.http.auth import require_caller
from server.http.state import OPS, TOKENS
from server.ops import views as ops
from server.ops.models import DeliveryFilter


async def get_status(request: web.Request) -> web.Response:
    require_caller(request, request.app[TOKENS], admin=True)
    return _json((await ops.overview(request.app[OPS])).to_json())


async def get_propagation(request: web.Request) -> web.Response:
    require_caller(request, request.app[TOKENS], admin=True)
    since = None
    if "from" in request.query:
        try:
            since = parse_iso(request.query["from"])
        except ValueError:
            raise Problem("from must be an RFC 3339 date-time with a timezone.", parameter="from") from None
    return _json((await ops.propagation(request.app[OPS], since)).to_json())


async def get_deliveries(request: web.Request) -> web.Response:
    require_caller(request, request.app[TOKENS], admin=True)
    partner = request.query.get("partner")
    if partner is not None:
        check_name(partner)
    status = request.query.get("status")
    if status is not None and status not in tuple(DeliveryFilter):
        raise Problem("status must be failed or all.", parameter="status")
    report = await ops.deliveries(request.app[OPS], partner, failed_only=status == DeliveryFilter.FAILED)
    return _json(report.to_json())


async def retry_delivery(request: web.Request) -> web.Response:
    require_caller(request, request.app[TOKENS], admin=True)
    delivery = request.match_info["delivery_id"]
    if not (len(delivery) == 32 and all(c in "0123456789abcdef" for c in delivery)):
        raise Problem("A delivery id is 32 hexadecimal characters.", status=404, slug="not-found")
    return _json((await ops.retry(request.app[OPS], delivery)).to_json(), status=202)


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
