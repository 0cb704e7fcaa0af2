"""``POST /api/superdesk/items``: the ingest URL of a Superdesk HTTP Push destination (its
``resource_url``). Thin: check the signature, read the item (domain), push it (the article store),
answer as ``http_push`` expects: 2xx when stored, a 4xx problem (which Superdesk logs) otherwise.

See ``docs/superdesk.md``.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from server.core.errors import Problem, Unauthorised
from server.domain.ninjs import DocumentError, parse_json_object
from server.domain.superdesk import SIGNATURE_HEADER, read_item
from server.http.api.articles import document_problem, ingest_response, read_json_body
from server.http.state import SUPERDESK, SUPERDESK_SECRETS

CHALLENGE = {"WWW-Authenticate": 'Signature realm="syndicate", header="x-superdesk-signature"'}


async def push_item(request: web.Request) -> web.Response:
    secrets = request.app[SUPERDESK_SECRETS]
    if not secrets.configured:
        raise Problem("No publisher takes Superdesk pushes here: set SYNDICATE_SUPERDESK_SECRETS "
                      "(publisher:secret) and restart.", status=404, slug="not-found")
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
        raise Unauthorised(f"A Superdesk push is signed: set the destination's secret token, which makes "
                           f"Superdesk send '{SIGNATURE_HEADER}: sha1=<HMAC-SHA1 of the body>'.", headers=CHALLENGE)
    raw = await read_json_body(request)
    publisher = secrets.publisher_for(signature, raw)
    if publisher is None:
        raise Unauthorised(f"The {SIGNATURE_HEADER} header does not match the body signed with any publisher's "
                           "Superdesk secret.", headers=CHALLENGE)
    try:
        item = read_item(parse_json_object(raw), publisher)
    except DocumentError as exc:
        raise document_problem(exc) from None
    result = await request.app[SUPERDESK].push(item, publisher)
    members = {"superdesk": {"kind": result.kind.value, "uri": result.uri, "revised": list(result.revised)}}
    if result.article is None:  # a media item: kept for the texts that reference it
        body = {"outcome": result.outcome, "removedCharacters": result.removed_characters, **members}
        return web.Response(body=orjson.dumps(body), content_type="application/json")
    return ingest_response(request, result.article, result.outcome, result.removed_characters, **members)
