"""A partner's own view, with its own key: ``GET /api/me/status`` ("what have I missed?").

The key is checked, throttled and rate-limited as for feeds (:meth:`AccessControl.authorise_self`); the
answer is built from that partner's summaries only, so a key never sees another partner's data.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from server.http.api.ops import paging
from server.http.clients import client_address
from server.http.state import ACCESS, FEED_BUILDER, OPS
from server.ops import views as ops


async def get_my_status(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    grant = access.authorise_self(request, client_address(request))
    assert grant.partner is not None
    offset, limit = paging(request, ops.MY_STATUS_PAGE)
    status = await ops.my_status(request.app[OPS], grant.partner, request.app[FEED_BUILDER].item_url, offset, limit)
    response = web.Response(body=orjson.dumps(status.to_json()), content_type="application/json",
                            headers={"Cache-Control": "private, no-store"})
    access.charged(grant, response)
    return response
