"""``schemas/openapi.yaml`` is valid OpenAPI 3.1 and stays true to the server.

Three kinds of check: the file validates; its paths and methods are exactly the routes the application
registers (so a new endpoint fails here until it is described); and real responses, from the app on a
real Redis (and, for the WebSub hub, a real subscriber that verifies), match the documented schemas,
status codes, media types and headers, with no field the description does not name.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import yaml
from aiohttp import web
from conftest import ADMIN, ADMIN_TOKEN, AUTH
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from server.articles import store
from server.core import keys
from server.core.networks import parse_networks
from server.core.settings import Settings
from server.domain import articles as models
from server.http.app import create_app
from server.push.destinations import WEBHOOK, WEBHOOK_FORMATS, WEBSUB

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "schemas" / "openapi.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SPEC_URI = "urn:syndicate:openapi"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


def test_the_description_is_valid_openapi_3_1(spec):
    assert str(spec["openapi"]).startswith("3.1.")
    validate(spec, base_uri=SPEC_PATH.as_uri())


# ----- the description and the router agree ------------------------------------------------------


def registered_operations() -> set[tuple[str, str]]:
    """(path template, method) of every route the app registers; HEAD (added by aiohttp beside each
    GET) and static file routes left out. Creating the app does not connect to Redis."""
    app = create_app(Settings(feeds_dir=ROOT / "feeds"))
    operations = set()
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None or isinstance(resource, web.StaticResource):
            continue
        info = resource.get_info()
        operations.add((info.get("path") or info.get("formatter"), route.method.lower()))
    return operations


def described_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS}


def test_every_route_of_the_app_is_described(spec):
    missing = sorted(registered_operations() - described_operations(spec))
    assert not missing, f"routes registered in server/http/app.py but not in schemas/openapi.yaml: {missing}"


def test_every_described_operation_exists_in_the_app(spec):
    extra = sorted(described_operations(spec) - registered_operations())
    assert not extra, f"operations in schemas/openapi.yaml that the app does not serve: {extra}"


def test_every_operation_documents_what_any_route_may_answer(spec):
    """Statuses that come from the request wrapper, the connection caps, the failed-key throttle and
    Redis rather than from one handler: 429 and 503 (each with Retry-After) on every route but
    /healthz (which no cap refuses and which touches no Redis), and 400, 408 and 413 wherever a body is
    read. Found missing by the schemathesis run (tests/test_schemathesis.py)."""
    conformance = Conformance(spec)
    missing = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation["responses"]
            wanted = set() if path == "/healthz" else {"429", "503"}
            if "requestBody" in operation:
                wanted |= {"400", "408", "413"}
            missing += [f"{method.upper()} {path}: {status}" for status in sorted(wanted - set(responses))]
            for status in {"429", "503"} & set(responses):
                headers = conformance.deref(responses[status]).get("headers", {})
                if "Retry-After" not in headers:
                    missing.append(f"{method.upper()} {path}: Retry-After on {status}")
    assert not missing, f"schemas/openapi.yaml lacks: {missing}"


def test_operation_ids_are_unique(spec):
    ids = [op["operationId"] for item in spec["paths"].values() for m, op in item.items() if m in HTTP_METHODS]
    assert len(ids) == len(set(ids))


def test_files_the_description_points_to_exist(spec):
    """Relative ``$ref``s and ``externalDocs`` links (the ninjs profiles) name files next to it."""
    targets: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                targets.append(ref)
            docs = node.get("externalDocs")
            if isinstance(docs, dict) and not urlsplit(docs.get("url", "")).scheme:
                targets.append(docs["url"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert "ninjs-profile-3.json" in targets
    for target in targets:
        assert (SPEC_PATH.parent / urlsplit(target).path).is_file(), f"{target} does not exist"


def test_enumerations_match_the_code(spec):
    schemas = spec["components"]["schemas"]
    params = spec["components"]["parameters"]
    listing = {p["name"]: p for p in spec["paths"]["/api/articles"]["get"]["parameters"]}
    revision = schemas["RevisionFields"]["properties"]
    assert listing["status"]["schema"]["enum"] == list(keys.STATUSES)
    assert revision["pubStatus"]["enum"] == list(keys.STATUSES)
    assert params["Signal"]["schema"]["enum"] == list(store.SIGNALS)
    assert revision["kind"]["enum"] == [models.NEW, models.UPDATE, models.CORRECTION, models.KILL]
    outcome = schemas["IngestResult"]["allOf"][1]["properties"]["outcome"]
    assert outcome["enum"] == [store.CREATED, store.REVISED, store.UNCHANGED]
    assert listing["limit"]["schema"]["default"] == 50
    assert schemas["EndpointCreate"]["properties"]["format"]["enum"] == list(WEBHOOK_FORMATS)
    assert schemas["Destination"]["properties"]["kind"]["enum"] == [WEBHOOK, WEBSUB]


# ----- real responses match the description ------------------------------------------------------


class Conformance:
    """Checks a response against the operation the description gives for it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.registry = Registry().with_resource(SPEC_URI, Resource(contents=spec, specification=DRAFT202012))

    def deref(self, node: Any) -> Any:
        while isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
            target = self.spec
            for part in node["$ref"][2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def properties(self, schema: Any) -> dict[str, Any]:
        schema = self.deref(schema)
        found = dict(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            found.update(self.properties(part))
        return found

    def undocumented(self, value: Any, schema: Any, where: str = "") -> list[str]:
        """Members of ``value`` that the schema does not name (free-form objects are not descended)."""
        schema = self.deref(schema)
        if isinstance(value, list) and "items" in schema:
            return [f for i, item in enumerate(value) for f in self.undocumented(item, schema["items"], f"{where}/{i}")]
        named = self.properties(schema)
        if not isinstance(value, dict) or not named:
            return []
        found = [f"{where}/{k}" for k in value if k not in named]
        for k, v in value.items():
            if k in named:
                found += self.undocumented(v, named[k], f"{where}/{k}")
        return found

    async def check(self, response, path: str, method: str) -> Any:
        """The response's status, headers, media type and body as documented; the parsed JSON body
        (raw bytes for XML, None when none is documented)."""
        operation = self.spec["paths"][path][method]
        responses = operation["responses"]
        status = str(response.status)
        assert status in responses, f"{method.upper()} {path} answered {status}, which is not documented"
        documented = self.deref(responses[status])
        for name, header in documented.get("headers", {}).items():
            # Link is only present when there is a next page; headers marked `required: false` (the
            # rate-limit headers, sent only to a partner key) may be absent.
            if name != "Link" and self.deref(header).get("required") is not False:
                assert name in response.headers, f"{method.upper()} {path} {status}: no {name} header"
        raw = await response.read()
        if "content" not in documented:  # 204, 304
            assert raw == b"", f"{method.upper()} {path} {status}: a body where none is documented"
            return None
        media_type = response.content_type
        assert media_type in documented["content"], f"{method.upper()} {path} {status}: {media_type} not documented"
        schema = documented["content"][media_type]["schema"]
        if not media_type.endswith("json"):  # rendered XML: the renderer tests check the documents
            assert schema.get("type") == "string" and raw
            return raw
        body = orjson.loads(raw)
        if "$ref" not in schema:  # a free-form document (JSON Feed, ninjs): its type only
            assert Draft202012Validator(schema).is_valid(body), f"{method.upper()} {path} {status}: not {schema}"
            return body
        pointer = schema["$ref"]
        validator = Draft202012Validator({"$ref": f"{SPEC_URI}{pointer}"}, registry=self.registry)
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, f"{method.upper()} {path} {status} does not match {pointer}: {errors}"
        if pointer != "#/components/schemas/Problem":  # problems may carry more extension members
            extra = self.undocumented(body, schema)
            assert not extra, f"{method.upper()} {path} {status}: fields not in schemas/openapi.yaml: {extra}"
        return body


JSON_AUTH = {**AUTH, "Content-Type": "application/json"}


async def test_responses_match_the_description(spec, client, seed_v1, seed_v2):
    conformance = Conformance(spec)
    check = conformance.check
    articles, article = "/api/articles", "/api/articles/{id}"
    versions, version = "/api/articles/{id}/versions", "/api/articles/{id}/versions/{version}"

    await check(await client.get("/healthz"), "/healthz", "get")
    await check(await client.get("/readyz"), "/readyz", "get")

    created = await check(await client.post(articles, data=orjson.dumps(seed_v1), headers=JSON_AUTH), articles, "post")
    article_id = created["id"]
    assert created["outcome"] == "created"
    again = await check(await client.post(articles, data=orjson.dumps(seed_v1), headers=JSON_AUTH), articles, "post")
    assert again["outcome"] == "unchanged"
    corrected = await check(await client.put(f"{articles}/{article_id}?signal=correction", data=orjson.dumps(seed_v2),
                                             headers={**JSON_AUTH, "If-Match": '"1"'}), article, "put")
    assert corrected["version"] == 2 and corrected["signal"] == "correction"

    await check(await client.get(f"{articles}/{article_id}", headers=AUTH), article, "get")
    listing = await check(await client.get(f"{articles}?limit=1&status=usable", headers=AUTH), articles, "get")
    assert [a["id"] for a in listing["items"]] == [article_id]
    history = await check(await client.get(f"{articles}/{article_id}/versions", headers=AUTH), versions, "get")
    assert [v["version"] for v in history["versions"]] == [1, 2]
    await check(await client.get(f"{articles}/{article_id}/versions/1", headers=AUTH), version, "get")

    killed = await check(await client.delete(f"{articles}/{article_id}", data=orjson.dumps({"reason": "legal"}),
                                             headers=JSON_AUTH), article, "delete")
    assert killed["kind"] == "kill" and killed["killReason"] == "legal"

    # Problems: each documented status answers with the documented shape.
    stale = copy.deepcopy(seed_v1)
    stale["uri"] = seed_v1["uri"] + "-other"
    await check(await client.post(articles, data=orjson.dumps(stale), headers=JSON_AUTH), articles, "post")
    stale["versionCreated"] = "2000-01-01T00:00:00Z"
    problem = await check(await client.post(articles, data=orjson.dumps(stale), headers=JSON_AUTH), articles, "post")
    assert problem["status"] == 409 and problem["currentVersion"] == 1
    problem = await check(await client.post(articles, data=b"{", headers=JSON_AUTH), articles, "post")
    assert problem["status"] == 400
    problem = await check(await client.post(articles, data=orjson.dumps({"uri": "relative", "bogus": 1}),
                                            headers=JSON_AUTH), articles, "post")
    assert problem["status"] == 422 and {e["pointer"] for e in problem["errors"]} >= {"/uri", "/bogus"}
    problem = await check(await client.post(articles, data=b"{}", headers={**AUTH, "Content-Type": "text/plain"}),
                          articles, "post")
    assert problem["status"] == 415
    problem = await check(await client.post(articles, data=b" " * (2 * 1024 * 1024 + 1), headers=JSON_AUTH),
                          articles, "post")
    assert problem["status"] == 413
    changed = copy.deepcopy(seed_v2)
    changed["headlines"][0]["value"] = "A headline no revision has had"
    problem = await check(await client.put(f"{articles}/{article_id}", data=orjson.dumps(changed),
                                           headers={**JSON_AUTH, "If-Match": '"1"'}), article, "put")
    assert problem["status"] == 412
    problem = await check(await client.get(f"{articles}?limit=0", headers=AUTH), articles, "get")
    assert problem["parameter"] == "limit"
    await check(await client.get(articles), articles, "get")
    await check(await client.get(f"{articles}/{article_id}/versions/9", headers=AUTH), version, "get")
    await check(await client.get(f"{articles}/not-an-id", headers=AUTH), article, "get")


ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}


async def test_partner_and_feed_responses_match_the_description(spec, client, seed_v1, seed_v2):
    """A partner made with the admin API polls with its key, in each of the three ways; its status,
    and every documented problem of the partner and feed routes, match the description."""
    check = Conformance(spec).check
    partners, partner, keys_path = "/api/partners", "/api/partners/{name}", "/api/partners/{name}/keys"
    key_path, status_path = "/api/partners/{name}/keys/{key_id}", "/api/partners/{name}/status"
    feed, item, item_newsml = "/feeds/{name}/{format}", "/items/{id}", "/items/{id}/newsml"
    assert (await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_AUTH)).status == 201
    article_id = models.article_id_for_uri(seed_v1["uri"])

    body = {"name": "acme", "feeds": ["latest", "world"], "formats": ["atom", "newsml", "json"],
            "contact": "desk@acme.example"}
    created = await check(await client.post(partners, data=orjson.dumps(body), headers=ADMIN_JSON), partners, "post")
    key = created["key"]
    assert created["key_id"] == created["keys"][0]["keyId"] and key.startswith(f"syn_{created['key_id']}_")
    listing = await check(await client.get(partners, headers=ADMIN), partners, "get")
    assert [p["name"] for p in listing["items"]] == ["acme"]

    # A keyed poll, in each of the three ways, then a conditional one.
    first = await client.get("/feeds/latest/atom", headers={"Authorization": f"Bearer {key}"})
    assert b"<feed" in await check(first, feed, "get")
    assert first.headers["RateLimit-Policy"] == '"partner";q=600;w=60'
    await check(await client.get("/feeds/latest/json", headers={"X-API-Key": key}), feed, "get")
    again = await client.get(f"/feeds/latest/atom?key={key}", headers={"If-None-Match": first.headers["ETag"]})
    assert await check(again, feed, "get") is None and again.status == 304 and "RateLimit" in again.headers
    empty = await client.get(f"/feeds/latest/newsml?since={first.headers['Link'].split('since=')[1].split('>')[0]}",
                             headers={"X-API-Key": key})
    assert await check(empty, feed, "get") is None and empty.status == 204
    public = await client.get("/feeds/headlines/rss")  # public: no key, no rate-limit headers
    await check(public, feed, "get")
    assert "RateLimit" not in public.headers and public.headers["Cache-Control"].startswith("public")
    await check(await client.get(f"/items/{article_id}", headers={"X-API-Key": key}), item, "get")
    await check(await client.get(f"/items/{article_id}/newsml", headers={"X-API-Key": key}), item_newsml, "get")

    # The correction is outstanding until the partner polls again.
    assert (await client.post("/api/articles?signal=correction", data=orjson.dumps(seed_v2),
                              headers=JSON_AUTH)).status == 200
    status = await check(await client.get("/api/partners/acme/status", headers=ADMIN), status_path, "get")
    assert status["outstanding"] == 1 and status["articles"][0]["receivedVersion"] == 1
    await check(await client.get("/feeds/world/atom", headers={"X-API-Key": key}), feed, "get")
    status = await check(await client.get("/api/partners/acme/status", headers=ADMIN), status_path, "get")
    assert status["outstanding"] == 0 and status["articles"][0]["received"] is True

    # Admin changes.
    changed = await check(await client.patch("/api/partners/acme", data=orjson.dumps({"notes": "trial"}),
                                             headers=ADMIN_JSON), partner, "patch")
    assert changed["notes"] == "trial" and changed["rateLimit"] is None
    second = await check(await client.post("/api/partners/acme/keys", data=orjson.dumps(
        {"expires_at": "2999-01-01T00:00:00Z"}), headers=ADMIN_JSON), keys_path, "post")
    shown = await check(await client.get("/api/partners/acme", headers=ADMIN), partner, "get")
    assert [k["keyId"] for k in shown["keys"]] == [created["key_id"], second["key_id"]]
    revoked = await check(await client.delete(f"/api/partners/acme/keys/{created['key_id']}", headers=ADMIN),
                          key_path, "delete")
    assert revoked["keys"][0]["revokedAt"] is not None

    # Problems on the feed and item routes.
    problem = await check(await client.get("/feeds/latest/atom"), feed, "get")
    assert problem["status"] == 401
    problem = await check(await client.get("/feeds/latest/atom", headers={"X-API-Key": key}), feed, "get")
    assert problem["status"] == 401  # revoked
    other = {"X-API-Key": second["key"]}
    problem = await check(await client.get("/feeds/latest/rss", headers=other), feed, "get")
    assert problem["status"] == 403
    problem = await check(await client.get("/feeds/latest/atom?since=999999", headers=other), feed, "get")
    assert problem["status"] == 410
    problem = await check(await client.get("/items/aaaaaaaaaaaaaaaa", headers=other), item, "get")
    assert problem["status"] == 404
    assert (await client.patch("/api/partners/acme", data=orjson.dumps({"rate_limit": 1}),
                               headers=ADMIN_JSON)).status == 200
    for _attempt in range(3):  # one request a minute: at most one more gets through (a new window)
        response = await client.get(f"/items/{article_id}/newsml", headers=other)
        await check(response, item_newsml, "get")
        if response.status == 429:
            break
    assert response.status == 429 and response.headers["RateLimit-Policy"] == '"partner";q=1;w=60'

    # Problems on the admin API.
    problem = await check(await client.get(partners), partners, "get")
    assert problem["status"] == 401
    problem = await check(await client.get(partners, headers=AUTH), partners, "get")
    assert problem["status"] == 403
    problem = await check(await client.post(partners, data=orjson.dumps(body), headers=ADMIN_JSON), partners, "post")
    assert problem["status"] == 409
    problem = await check(await client.patch("/api/partners/acme", data=orjson.dumps({"rateLimit": 5}),
                                             headers=ADMIN_JSON), partner, "patch")
    assert problem["status"] == 422 and problem["errors"][0]["pointer"] == "/rateLimit"
    problem = await check(await client.patch("/api/partners/acme", data=b"[", headers=ADMIN_JSON), partner, "patch")
    assert problem["status"] == 400
    problem = await check(await client.get("/api/partners/ghost/status", headers=ADMIN), status_path, "get")
    assert problem["status"] == 404
    problem = await check(await client.get("/api/partners/Not%20A%20Name", headers=ADMIN), partner, "get")
    assert problem["status"] == 422
    problem = await check(await client.delete("/api/partners/acme/keys/00000000", headers=ADMIN), key_path, "delete")
    assert problem["status"] == 404


async def test_push_responses_match_the_description(spec, aiohttp_client, aiohttp_server, settings):
    """The hub's answers (202, and its plain-text refusals), and the webhook endpoint routes, match the
    description; a subscription verified by a real subscriber shows in the endpoint listing."""
    check = Conformance(spec).check
    endpoints, endpoint = "/api/partners/{name}/endpoints", "/api/partners/{name}/endpoints/{endpoint_id}"

    async def verify(request: web.Request) -> web.Response:
        return web.Response(text=request.query.get("hub.challenge", ""))

    async def receive(_request: web.Request) -> web.Response:
        return web.Response(status=204)

    subscriber_app = web.Application()
    subscriber_app.router.add_get("/callback", verify)
    subscriber_app.router.add_post("/callback", receive)
    subscriber = await aiohttp_server(subscriber_app, host="127.0.0.1")
    callback = f"http://127.0.0.1:{subscriber.port}/callback"

    app = create_app(replace(settings, push_allow_networks=parse_networks("127.0.0.0/8")))
    client = await aiohttp_client(app)
    created = await client.post("/api/partners", data=orjson.dumps(
        {"name": "acme", "feeds": ["world"], "formats": ["atom", "json"]}), headers=ADMIN_JSON)
    assert created.status == 201
    key = (await created.json())["key"]

    # The hub (aiohttp form-encodes a dict body): plain-text refusals, then an accepted subscription
    # that the subscriber verifies.
    feeds_base = f"{settings.base_url}/feeds"
    await check(await client.post("/hub", data=b"{}", headers={"Content-Type": "application/json"}), "/hub", "post")
    refused = await client.post("/hub", data={"hub.mode": "watch", "hub.topic": f"{feeds_base}/world/atom",
                                              "hub.callback": callback})
    assert await check(refused, "/hub", "post") and refused.status == 400
    refused = await client.post("/hub", data={"hub.mode": "subscribe", "hub.topic": "https://elsewhere.example/x",
                                              "hub.callback": callback})
    assert refused.status == 400
    await check(refused, "/hub", "post")
    refused = await client.post("/hub", data={"hub.mode": "subscribe", "hub.topic": f"{feeds_base}/world/atom",
                                              "hub.callback": callback})
    assert refused.status == 403
    await check(refused, "/hub", "post")
    accepted = await client.post("/hub", data={"hub.mode": "subscribe", "hub.topic": f"{feeds_base}/world/atom",
                                               "hub.callback": callback, "hub.secret": "s" * 20,
                                               "hub.ignored": "x"},
                                 headers={"Authorization": f"Bearer {key}"})
    assert accepted.status == 202 and await check(accepted, "/hub", "post") is None
    for _ in range(100):
        listing = await check(await client.get("/api/partners/acme/endpoints", headers=ADMIN), endpoints, "get")
        if listing["subscriptions"]:
            break
        await asyncio.sleep(0.05)
    subscription = listing["subscriptions"][0]
    assert subscription["kind"] == "websub" and subscription["secret"] == "set"
    assert subscription["topic"] == f"{feeds_base}/world/atom" and subscription["expiresAt"] is not None

    # Webhook endpoints.
    body = {"url": callback, "format": "ninjs", "secret": "a-secret-of-20-bytes"}
    added = await client.post("/api/partners/acme/endpoints", data=orjson.dumps(body), headers=ADMIN_JSON)
    made = await check(added, endpoints, "post")
    assert added.status == 201 and made["kind"] == "webhook" and made["secret"] == "set"
    assert added.headers["Location"] == f"/api/partners/acme/endpoints/{made['id']}"
    listing = await check(await client.get("/api/partners/acme/endpoints", headers=ADMIN), endpoints, "get")
    assert [e["id"] for e in listing["items"]] == [made["id"]]
    removed = await client.delete(f"/api/partners/acme/endpoints/{made['id']}", headers=ADMIN)
    assert removed.status == 204 and await check(removed, endpoint, "delete") is None
    problem = await check(await client.delete(f"/api/partners/acme/endpoints/{made['id']}", headers=ADMIN),
                          endpoint, "delete")
    assert problem["status"] == 404

    # Problems on the endpoint routes.
    post = "/api/partners/acme/endpoints"
    problem = await check(await client.post(post, data=orjson.dumps(body), headers=JSON_AUTH), endpoints, "post")
    assert problem["status"] == 403
    problem = await check(await client.post(post, data=orjson.dumps(body)), endpoints, "post")
    assert problem["status"] == 401
    problem = await check(await client.post(post, data=b"[", headers=ADMIN_JSON), endpoints, "post")
    assert problem["status"] == 400
    problem = await check(await client.post("/api/partners/ghost/endpoints", data=orjson.dumps(body),
                                            headers=ADMIN_JSON), endpoints, "post")
    assert problem["status"] == 404
    problem = await check(await client.post(post, data=orjson.dumps({**body, "format": "rss"}), headers=ADMIN_JSON),
                          endpoints, "post")
    assert problem["status"] == 422 and problem["errors"][0]["pointer"] == "/format"
    # newsml is not granted to acme, but the public headlines feed is readable in every format
    public = await check(await client.post(post, data=orjson.dumps({**body, "format": "newsml"}),
                                           headers=ADMIN_JSON), endpoints, "post")
    assert public["format"] == "newsml"
    await client.delete(f"/api/partners/acme/endpoints/{public['id']}", headers=ADMIN)
    problem = await check(await client.post(post, data=orjson.dumps({**body, "url": "http://10.0.0.7/hook"}),
                                            headers=ADMIN_JSON), endpoints, "post")
    assert problem["status"] == 422 and problem["type"].endswith("/unsafe-destination")
    problem = await check(await client.get("/api/partners/Not%20A%20Name/endpoints", headers=ADMIN), endpoints, "get")
    assert problem["status"] == 422


async def test_ops_responses_match_the_description(spec, aiohttp_client, aiohttp_server, settings, seed_v1, seed_v2):
    """The ops API, /metrics and the /ops dashboard's pages and forms match the description, for a
    partner whose webhook refuses every delivery (so there are failed attempts, a delivery given up on
    to retry, and a correction and a kill the partner has not received)."""
    from prometheus_client.parser import text_string_to_metric_families

    check = Conformance(spec).check
    status, propagation, deliveries = "/api/status", "/api/propagation", "/api/deliveries"
    retry, ops_retry = "/api/deliveries/{delivery_id}/retry", "/ops/deliveries/{delivery_id}/retry"

    async def refuse(_request: web.Request) -> web.Response:
        return web.Response(status=400)  # not retried: given up at once

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", refuse)
    receiver = await aiohttp_server(receiver_app, host="127.0.0.1")
    client = await aiohttp_client(create_app(replace(settings, push_allow_networks=parse_networks("127.0.0.0/8"))))
    created = await client.post("/api/partners", data=orjson.dumps(
        {"name": "acme", "feeds": ["latest"], "formats": ["atom", "json"]}), headers=ADMIN_JSON)
    key = (await created.json())["key"]
    hook = await client.post("/api/partners/acme/endpoints", headers=ADMIN_JSON, data=orjson.dumps(
        {"url": f"http://127.0.0.1:{receiver.port}/hook", "format": "ninjs", "secret": "a-secret-of-20-bytes"}))
    endpoint_id = (await hook.json())["id"]
    assert (await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_AUTH)).status == 201
    article_id = models.article_id_for_uri(seed_v1["uri"])
    assert (await client.get("/feeds/latest/atom", headers={"X-API-Key": key})).status == 200  # v1 by poll
    assert (await client.post("/api/articles?signal=correction", data=orjson.dumps(seed_v2),
                              headers=JSON_AUTH)).status == 200
    assert (await client.delete(f"/api/articles/{article_id}", data=orjson.dumps({"reason": "legal"}),
                                headers=JSON_AUTH)).status == 200

    for _ in range(200):  # the kill (v3) is pushed, refused and given up on
        listing = await check(await client.get(f"{deliveries}?status=failed&partner=acme", headers=ADMIN),
                              deliveries, "get")
        if listing["failed"] and listing["failed"][0]["version"] == 3:
            break
        await asyncio.sleep(0.05)
    [failure] = listing["failed"]
    assert failure["lastStatus"] == 400 and failure["destination"] == endpoint_id and failure["partner"] == "acme"
    assert listing["attempts"] and all(not a["ok"] and a["status"] == 400 for a in listing["attempts"])
    everything = await check(await client.get(deliveries, headers=ADMIN), deliveries, "get")
    assert len(everything["attempts"]) >= len(listing["attempts"])
    ghost = await check(await client.get(f"{deliveries}?partner=ghost&status=all", headers=ADMIN), deliveries, "get")
    assert ghost == {"attempts": [], "failed": []}

    overview = await check(await client.get(status, headers=ADMIN), status, "get")
    [row] = overview["partners"]
    assert row["partner"] == "acme" and row["state"] == "failing" and row["failingEndpoints"] == [endpoint_id]
    assert row["lag"]["revisions"] == 2 and row["lastPoll"] is not None and overview["queue"]["failed"] == 1

    flow = await check(await client.get(propagation, headers=ADMIN), propagation, "get")
    assert [(i["kind"], i["version"]) for i in flow["items"]] == [("kill", 3), ("correction", 2)]
    assert flow["outstanding"] == 2 and flow["items"][1]["partners"][0]["receivedVersion"] == 1
    older = await check(await client.get(f"{propagation}?from=2000-01-01T00:00:00Z", headers=ADMIN),
                        propagation, "get")
    assert older["from"] == "2000-01-01T00:00:00Z" and len(older["items"]) == 2

    scrape = await client.get("/metrics", headers=ADMIN)
    text = (await check(scrape, "/metrics", "get")).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"syndicate_http_requests", "syndicate_push_deliveries", "syndicate_outstanding_oldest_seconds",
            "syndicate_push_oldest_pending_seconds", "syndicate_redis_errors"} <= families.keys()
    assert [s.value for s in families["syndicate_outstanding_revisions"].samples
            if s.labels == {"partner": "acme", "kind": "kill"}] == [1.0]

    retried = await client.post(f"/api/deliveries/{failure['delivery']}/retry", headers=ADMIN)
    result = await check(retried, retry, "post")
    assert retried.status == 202 and result["version"] == 3 and result["requeued"] is True

    # Problems.
    for path in (status, propagation, deliveries, "/metrics"):
        assert (await check(await client.get(path), path, "get"))["status"] == 401
        assert (await check(await client.get(path, headers=AUTH), path, "get"))["status"] == 403
    problem = await check(await client.get(f"{propagation}?from=yesterday", headers=ADMIN), propagation, "get")
    assert problem["status"] == 400 and problem["parameter"] == "from"
    problem = await check(await client.get(f"{deliveries}?status=bogus", headers=ADMIN), deliveries, "get")
    assert problem["status"] == 400 and problem["parameter"] == "status"
    problem = await check(await client.get(f"{deliveries}?partner=Not%20A%20Name", headers=ADMIN), deliveries, "get")
    assert problem["status"] == 422
    for unknown in ("0" * 32, "nope"):
        problem = await check(await client.post(f"/api/deliveries/{unknown}/retry", headers=ADMIN), retry, "post")
        assert problem["status"] == 404
    assert (await check(await client.post(retry.replace("{delivery_id}", failure["delivery"]), headers=AUTH),
                        retry, "post"))["status"] == 403

    # The dashboard: HTML pages, 303s, the session cookie, CSRF and the login throttle.
    async def page(method: str, path: str, template: str, **options):
        response = await client.request(method, path, allow_redirects=False, **options)
        await check(response, template, method.lower())
        return response

    assert (await page("GET", "/ops", "/ops")).headers["Location"] == "/ops/login"
    assert (await page("GET", "/ops/login", "/ops/login")).status == 200
    assert (await page("POST", "/ops/login", "/ops/login", data={"token": "not-the-admin-token"})).status == 401
    assert (await page("POST", "/ops/login", "/ops/login", data={"token": ADMIN_TOKEN},
                       headers={"Origin": "https://elsewhere.example"})).status == 403
    signed_in = await page("POST", "/ops/login", "/ops/login", data={"token": ADMIN_TOKEN})
    assert signed_in.status == 303 and signed_in.headers["Location"] == "/ops"
    assert "HttpOnly" in signed_in.headers["Set-Cookie"] and "SameSite=Strict" in signed_in.headers["Set-Cookie"]
    assert (await page("GET", "/ops/login", "/ops/login")).headers["Location"] == "/ops"
    dashboard = await page("GET", "/ops", "/ops")
    html = await dashboard.text()
    assert dashboard.status == 200 and 'data-partner="acme" data-state="failing"' in html
    csrf = html.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    button = ops_retry.replace("{delivery_id}", failure["delivery"])
    assert (await page("POST", button, ops_retry, data={"csrf": "forged"})).status == 403
    pressed = await page("POST", button, ops_retry, data={"csrf": csrf})
    assert pressed.status == 303 and pressed.headers["Location"] == "/ops#failed"
    assert (await page("POST", "/ops/logout", "/ops/logout", data={})).status == 403
    signed_out = await page("POST", "/ops/logout", "/ops/logout", data={"csrf": csrf})
    assert signed_out.status == 303 and signed_out.headers["Location"] == "/ops/login"
    assert (await page("GET", "/ops", "/ops")).status == 303
    assert (await page("POST", button, ops_retry, data={"csrf": csrf})).headers["Location"] == "/ops/login"
    # Wrong tokens: 401 until the failed-key throttle's token limit (the test's earlier wrong tokens count too).
    statuses = [(await page("POST", "/ops/login", "/ops/login", data={"token": "not-the-admin-token"})).status
                for _ in range(settings.failed_tokens_per_address)]
    assert statuses[0] == 401 and statuses == sorted(statuses) and set(statuses) <= {401, 429}
    throttled = await page("POST", "/ops/login", "/ops/login", data={"token": "not-the-admin-token"})
    assert throttled.status == 429 and int(throttled.headers["Retry-After"]) > 0
