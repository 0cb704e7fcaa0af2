"""``schemas/openapi.yaml`` is exactly as strict as the server: for a set of requests, each just inside
or just outside a documented or enforced constraint, the request is valid per the description if and
only if the real server (on a real Redis) accepts it. A refused request must be refused with a 4xx
problem, never a 5xx; an accepted one answers 2xx.

The description's parameters and request bodies are checked with jsonschema (formats included); a
case names the operation (path template and method), the concrete path, the query and the JSON body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from conftest import ADMIN, AUTH
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parent.parent
SPEC = yaml.safe_load((ROOT / "schemas" / "openapi.yaml").read_text(encoding="utf-8"))
SPEC_URI = "urn:syndicate:openapi"
REGISTRY = Registry().with_resource(SPEC_URI, Resource.from_contents(SPEC, default_specification=DRAFT202012))
SEED_ID = "ley4gpdch3h7f7oi"


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    template: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None
    admin: bool = True
    # A refusal no static schema can express (it depends on configuration, DNS or the clock): the
    # server refuses, the schema accepts, and the description says so in these words.
    documented_as: str | None = None


def deref(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = REGISTRY.resolver(SPEC_URI).lookup(node["$ref"]).contents
    return node


def schema_errors(schema: Any, value: Any) -> list[str]:
    wrapped = {"$ref": f"{SPEC_URI}{schema['$ref']}"} if "$ref" in schema else schema
    validator = Draft202012Validator(wrapped, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]


def as_typed(raw: str, schema: dict[str, Any]) -> Any:
    """A query or path string as the type its schema declares (what an OpenAPI validator does)."""
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "integer" in kinds:
        try:
            return int(raw)
        except ValueError:
            return raw
    return raw


def description_errors(case: Case) -> list[str]:
    """Why the description says the request is invalid (empty: valid)."""
    item = SPEC["paths"][case.template]
    operation = item[case.method]
    parameters = [deref(p) for p in item.get("parameters", []) + operation.get("parameters", [])]
    errors: list[str] = []
    path_values = dict(zip((s.strip("{}") for s in case.template.split("/")), case.path.split("/"), strict=True))
    for parameter in parameters:
        schema = deref(parameter.get("schema", {}))
        if parameter["in"] == "path":
            value = path_values[parameter["name"]]
        elif parameter["in"] == "query" and parameter["name"] in case.query:
            value = case.query[parameter["name"]]
        else:
            if parameter["in"] == "query" and parameter.get("required"):
                errors.append(f"query {parameter['name']}: required")
            continue
        errors += [f"{parameter['in']} {parameter['name']}: {e}" for e in schema_errors(schema, as_typed(value, schema))]
    if case.body is not None:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        errors += [f"body {e}" for e in schema_errors(schema, case.body)]
    elif operation.get("requestBody", {}).get("required"):
        errors.append("body: required")
    return errors


PARTNERS = "/api/partners"
ENDPOINTS = "/api/partners/{name}/endpoints"
SECRET = "a-long-shared-secret-0123"


def partner(name: str, body: Any, documented_as: str | None = None) -> Case:
    return Case(name, "post", PARTNERS, PARTNERS, body=body, documented_as=documented_as)


CASES = [
    # creating a partner
    partner("partner ok", {"name": "p-ok", "feeds": ["latest"], "formats": ["atom"]}),
    partner("partner every field", {"name": "p.all_1", "feeds": ["*"], "formats": ["*"], "media": False,
                                    "contact": "desk@example.com", "notes": None, "rate_limit": 1,
                                    "expires_at": "2099-01-01T00:00:00Z"}),
    partner("partner name too long", {"name": "p" * 65, "feeds": ["latest"], "formats": ["atom"]}),
    partner("partner name 64", {"name": "p" * 64, "feeds": ["latest"], "formats": ["atom"]}),
    partner("partner name uppercase", {"name": "Acme", "feeds": ["latest"], "formats": ["atom"]}),
    partner("partner unknown feed", {"name": "p-feed", "feeds": ["nonexistent"], "formats": ["atom"]},
            documented_as="is not one of the server's feeds is 422"),
    partner("partner feed name not a name", {"name": "p-fname", "feeds": ["World News"], "formats": ["atom"]}),
    partner("partner unknown format", {"name": "p-fmt", "feeds": ["latest"], "formats": ["xml"]}),
    partner("partner no feeds", {"name": "p-none", "feeds": [], "formats": ["atom"]}),
    partner("partner feeds twice", {"name": "p-twice", "feeds": ["latest", "latest"], "formats": ["atom"]}),
    partner("partner rate limit 0", {"name": "p-rl0", "feeds": ["latest"], "formats": ["atom"], "rate_limit": 0}),
    partner("partner rate limit too big", {"name": "p-rlbig", "feeds": ["latest"], "formats": ["atom"],
                                           "rate_limit": 1000001}),
    partner("partner rate limit a string", {"name": "p-rls", "feeds": ["latest"], "formats": ["atom"],
                                            "rate_limit": "10"}),
    partner("partner rate limit 10.0", {"name": "p-rlf", "feeds": ["latest"], "formats": ["atom"], "rate_limit": 10.0}),
    partner("partner rate limit 10.5", {"name": "p-rlh", "feeds": ["latest"], "formats": ["atom"], "rate_limit": 10.5}),
    partner("partner expiry without timezone", {"name": "p-tz", "feeds": ["latest"], "formats": ["atom"],
                                                "expires_at": "2099-01-01T00:00:00"}),
    partner("partner expiry in the past", {"name": "p-past", "feeds": ["latest"], "formats": ["atom"],
                                           "expires_at": "2000-01-01T00:00:00Z"}, documented_as="in the future"),
    partner("partner expiry past year 9999 in UTC", {"name": "p-y10k", "feeds": ["latest"], "formats": ["atom"],
                                                     "expires_at": "9999-12-31T23:59:59-01:00"},
            documented_as="outside the years 1 to 9999 once in UTC"),
    partner("partner expiry at the end of year 9999", {"name": "p-y9999", "feeds": ["latest"], "formats": ["atom"],
                                                       "expires_at": "9999-12-31T23:59:59Z"}),
    partner("partner unknown field", {"name": "p-x", "feeds": ["latest"], "formats": ["atom"], "colour": "red"}),
    partner("partner camelCase field", {"name": "p-cc", "feeds": ["latest"], "formats": ["atom"], "rateLimit": 5}),
    partner("partner contact too long", {"name": "p-ct", "feeds": ["latest"], "formats": ["atom"],
                                         "contact": "x" * 2001}),
    partner("partner media a string", {"name": "p-ms", "feeds": ["latest"], "formats": ["atom"], "media": "yes"}),
    partner("partner not an object", ["p"]),
    # changing one
    Case("update ok", "patch", "/api/partners/{name}", "/api/partners/acme", body={"active": False, "rate_limit": None}),
    Case("update empty", "patch", "/api/partners/{name}", "/api/partners/acme", body={}),
    Case("update name", "patch", "/api/partners/{name}", "/api/partners/acme", body={"name": "other"}),
    Case("update active a string", "patch", "/api/partners/{name}", "/api/partners/acme", body={"active": "no"}),
    Case("update bad path name", "patch", "/api/partners/{name}", "/api/partners/ACME", body={"active": True}),
    Case("key ok", "post", "/api/partners/{name}/keys", "/api/partners/acme/keys",
         body={"expires_at": "2099-01-01T00:00:00+02:00"}),
    Case("key expiry before year 1 in UTC", "post", "/api/partners/{name}/keys", "/api/partners/acme/keys",
         body={"expires_at": "0001-01-01T00:00:00+01:00"}, documented_as="outside the years 1 to 9999 once in UTC"),
    Case("key unknown field", "post", "/api/partners/{name}/keys", "/api/partners/acme/keys", body={"expiry": "x"}),
    # webhook endpoints
    Case("endpoint ok", "post", ENDPOINTS, "/api/partners/acme/endpoints",
         body={"url": "http://127.0.0.1:9/hook", "format": "atom", "secret": SECRET}),
    Case("endpoint secret 15", "post", ENDPOINTS, "/api/partners/acme/endpoints",
         body={"url": "http://127.0.0.1:9/hook", "format": "atom", "secret": "x" * 15}),
    Case("endpoint secret 199", "post", ENDPOINTS, "/api/partners/acme/endpoints",
         body={"url": "http://127.0.0.1:9/hook", "format": "atom", "secret": "x" * 199}),
    Case("endpoint secret 200", "post", ENDPOINTS, "/api/partners/acme/endpoints",
         body={"url": "http://127.0.0.1:9/hook", "format": "atom", "secret": "x" * 200}),
    Case("endpoint format json", "post", ENDPOINTS, "/api/partners/acme/endpoints",
         body={"url": "http://127.0.0.1:9/hook", "format": "json", "secret": SECRET}),
    Case("endpoint no url", "post", ENDPOINTS, "/api/partners/acme/endpoints", body={"format": "atom", "secret": SECRET}),
    Case("endpoint relative url", "post", ENDPOINTS, "/api/partners/acme/endpoints",
         body={"url": "/hook", "format": "atom", "secret": SECRET}),
    Case("endpoint ftp url", "post", ENDPOINTS, "/api/partners/acme/endpoints",
         body={"url": "ftp://127.0.0.1/hook", "format": "atom", "secret": SECRET}),
    Case("endpoint url with credentials", "post", ENDPOINTS, "/api/partners/acme/endpoints",
         body={"url": "http://user:pw@127.0.0.1:9/hook", "format": "atom", "secret": SECRET}),
    Case("endpoint internal address", "post", ENDPOINTS, "/api/partners/acme/endpoints",
         body={"url": "http://10.0.0.1/hook", "format": "atom", "secret": SECRET},
         documented_as="resolves to an internal address, is 422 `unsafe-destination`"),
    Case("endpoint unknown field", "post", ENDPOINTS, "/api/partners/acme/endpoints",
         body={"url": "http://127.0.0.1:9/hook", "format": "atom", "secret": SECRET, "events": ["all"]}),
    # listing articles
    Case("articles ok", "get", "/api/articles", "/api/articles", {"limit": "200", "status": "usable"}),
    Case("articles limit 0", "get", "/api/articles", "/api/articles", {"limit": "0"}),
    Case("articles limit 201", "get", "/api/articles", "/api/articles", {"limit": "201"}),
    Case("articles limit a word", "get", "/api/articles", "/api/articles", {"limit": "ten"}),
    Case("articles unknown status", "get", "/api/articles", "/api/articles", {"status": "deleted"}),
    Case("articles since without timezone", "get", "/api/articles", "/api/articles", {"since": "2024-01-01T00:00:00"}),
    Case("articles since ok", "get", "/api/articles", "/api/articles", {"since": "2024-01-01T00:00:00Z"}),
    Case("articles cursor ok", "get", "/api/articles", "/api/articles", {"cursor": f"1714564800000000.{SEED_ID}"}),
    Case("articles cursor empty", "get", "/api/articles", "/api/articles", {"cursor": ""}),
    Case("articles cursor not ours", "get", "/api/articles", "/api/articles", {"cursor": "%\u00e9"}),
    Case("articles cursor bad id", "get", "/api/articles", "/api/articles", {"cursor": "1714564800000000.abc"}),
    Case("article bad id", "get", "/api/articles/{id}", "/api/articles/NOT-AN-ID"),
    Case("version 0", "get", "/api/articles/{id}/versions/{version}", f"/api/articles/{SEED_ID}/versions/0"),
    Case("version 1", "get", "/api/articles/{id}/versions/{version}", f"/api/articles/{SEED_ID}/versions/1"),
    Case("version a word", "get", "/api/articles/{id}/versions/{version}", f"/api/articles/{SEED_ID}/versions/one"),
    # the ops views
    Case("propagation ok", "get", "/api/propagation", "/api/propagation",
         {"from": "2024-01-01T00:00:00Z", "offset": "0", "limit": "1"}),
    Case("propagation from without timezone", "get", "/api/propagation", "/api/propagation", {"from": "2024-01-01"}),
    Case("propagation limit 0", "get", "/api/propagation", "/api/propagation", {"limit": "0"}),
    Case("propagation offset -1", "get", "/api/propagation", "/api/propagation", {"offset": "-1"}),
    Case("propagation offset 18 digits", "get", "/api/propagation", "/api/propagation", {"offset": "9" * 18}),
    Case("propagation offset 19 digits", "get", "/api/propagation", "/api/propagation", {"offset": "1" + "0" * 18}),
    Case("deliveries ok", "get", "/api/deliveries", "/api/deliveries", {"status": "failed", "partner": "acme"}),
    Case("deliveries unknown status", "get", "/api/deliveries", "/api/deliveries", {"status": "stuck"}),
    Case("deliveries bad partner", "get", "/api/deliveries", "/api/deliveries", {"partner": "NOT A NAME"}),
    Case("kill unknown field", "delete", "/api/articles/{id}", f"/api/articles/{SEED_ID}", body={"why": "x"}),
    Case("kill reason a number", "delete", "/api/articles/{id}", f"/api/articles/{SEED_ID}", body={"reason": 5}),
    Case("status with a bad name", "get", "/api/partners/{name}/status", "/api/partners/-acme/status"),
    Case("status ok", "get", "/api/partners/{name}/status", "/api/partners/acme/status"),
    Case("endpoints of a bad name", "get", ENDPOINTS, "/api/partners/Acme!/endpoints"),
    Case("retry bad id", "post", "/api/deliveries/{delivery_id}/retry", "/api/deliveries/xyz/retry"),
]


@pytest.fixture
async def api(push, seed_v1):
    """The app allowed to push to loopback (the endpoint cases' URLs), with the seed and a partner."""
    client = push
    response = await client.post("/api/articles", data=orjson.dumps(seed_v1),
                                 headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == 201
    response = await client.post(PARTNERS, json={"name": "acme", "feeds": ["latest"], "formats": ["atom", "json"]},
                                 headers=ADMIN)
    assert response.status == 201
    return client


async def test_the_description_accepts_exactly_what_the_server_accepts(api):
    spec_text = " ".join((ROOT / "schemas" / "openapi.yaml").read_text(encoding="utf-8").split())
    disagreements = []
    for case in CASES:
        errors = description_errors(case)
        kwargs: dict[str, Any] = {"params": case.query, "headers": ADMIN if case.admin else AUTH}
        if case.body is not None:
            kwargs["data"] = orjson.dumps(case.body)
            kwargs["headers"] = {**kwargs["headers"], "Content-Type": "application/json"}
        response = await api.request(case.method.upper(), case.path, **kwargs)
        assert response.status < 500, f"{case.name}: {response.status} {await response.text()}"
        accepted = response.status < 300
        if not accepted:
            assert response.status in (400, 404, 422), f"{case.name}: {response.status}"
            assert response.content_type == "application/problem+json", case.name
        if case.documented_as is not None:
            assert not errors and not accepted, f"{case.name}: expected a refusal beyond the schema ({errors})"
            assert case.documented_as in spec_text, f"{case.name}: schemas/openapi.yaml does not say it"
        elif accepted == bool(errors):
            detail = (await response.json()).get("detail") if not accepted else ""
            disagreements.append(f"{case.name}: server {response.status} {detail!r}; description "
                                 f"{'refuses: ' + '; '.join(errors) if errors else 'accepts'}")
    assert not disagreements, "\n".join(disagreements)
