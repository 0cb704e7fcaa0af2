"""Every kind of bad input gets an RFC 9457 problem that names the field, never a 5xx, and leaves the
store exactly as it was."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest
from conftest import AUTH, snapshot

from server.core.values import utc_now
from server.domain.articles import article_id_for_uri

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
URI = "https://news.example.com/bad-input"


def doc(**fields):
    base = {"uri": URI, "headlines": [{"role": "main", "value": "Headline"}]}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


CASES = [
    # (name, body bytes, status, text the problem must contain (detail or an error pointer))
    ("malformed JSON", b'{"uri": "https://x.example/a", ', 400, "Malformed JSON"),
    ("trailing garbage", doc() + b"}", 400, "Malformed JSON"),
    ("duplicate key", b'{"uri": "https://x.example/a", "uri": "https://x.example/b"}', 400, "'uri' appears twice"),
    ("NaN", b'{"uri": "https://x.example/a", "urgency": NaN}', 400, "NaN"),
    ("not an object", b'["uri"]', 400, "Expected a JSON object"),
    ("a string", b'"hello"', 400, "Expected a JSON object"),
    ("empty body", b"", 400, "Malformed JSON"),
    ("invalid UTF-8", b'{"uri": "https://x.example/\xff\xfe"}', 400, "not valid UTF-8"),
    ("absurd nesting", b'{"uri": "https://x.example/a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
     "nested too deeply"),
    ("nesting within limits of JSON but not ours", b'{"uri": "https://x.example/a", "people": '
     + b'[{"name": "a", "x": ' * 40 + b"1" + b"}]" * 40 + b"}", 400, "nested too deeply"),
    ("unknown field", doc(flavour="vanilla"), 422, "/flavour"),
    ("unknown nested field", doc(headlines=[{"role": "main", "value": "h", "colour": "red"}]), 422,
     "/headlines/0/colour"),
    ("wrong type", doc(headlines="Headline"), 422, "/headlines"),
    ("wrong type in array", doc(subjects=[{"name": 5}]), 422, "/subjects/0/name"),
    ("bad pubStatus", doc(pubStatus="published"), 422, "/pubStatus"),
    ("date without timezone", doc(versionCreated="2024-05-01T10:00:00"), 422, "/versionCreated"),
    ("date without seconds", doc(firstCreated="2024-05-01T10:00Z"), 422, "/firstCreated"),
    ("not a date", doc(embargoedUntil="tomorrow"), 422, "/embargoedUntil"),
    ("missing uri", orjson.dumps({"headlines": [{"role": "main", "value": "h"}]}), 422, "/uri"),
    ("relative uri", doc(uri="/world/story"), 422, "/uri"),
    ("uri with spaces", doc(uri="https://x.example/a story"), 422, "/uri"),
    ("non-string uri", doc(uri=42), 422, "/uri"),
    ("no headline", orjson.dumps({"uri": URI}), 422, "headlines"),
    ("picture item", doc(type="picture"), 422, "/type"),
    ("2.x and 3.x names mixed", doc(versioncreated="2024-05-01T10:00:00Z", pubStatus="usable"), 422, "mixes"),
]


@pytest.mark.parametrize(("name", "body", "status", "needle"), CASES, ids=[c[0] for c in CASES])
async def test_bad_document_is_refused_and_store_unchanged(client, seed_v1, redis_url, name, body, status, needle):
    seeded = await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_HEADERS)
    assert seeded.status == 201
    before = snapshot(redis_url)
    response = await client.post("/api/articles", data=body, headers=JSON_HEADERS)
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["status"] == status and problem["title"] and problem["type"]
    text = problem["detail"] + " " + " ".join(e["pointer"] + " " + e["detail"] for e in problem.get("errors", []))
    assert needle in text
    assert snapshot(redis_url) == before


async def test_body_over_the_limit_is_413(client, redis_url):
    empty_store = snapshot(redis_url)
    big = doc(bodies=[{"role": "main", "contentType": "text/plain", "value": "x" * (3 * 1024 * 1024)}])
    response = await client.post("/api/articles", data=big, headers=JSON_HEADERS)
    assert response.status == 413
    assert response.content_type == "application/problem+json"
    assert "2097152" in (await response.json())["detail"]
    assert snapshot(redis_url) == empty_store


async def test_wrong_content_type_is_415(client, redis_url):
    empty_store = snapshot(redis_url)
    response = await client.post("/api/articles", data=doc(), headers={**AUTH, "Content-Type": "text/plain"})
    assert response.status == 415
    assert snapshot(redis_url) == empty_store


@pytest.mark.parametrize(("path", "status"), [
    ("/api/articles/not-an-id", 404),
    ("/api/articles/AAAAAAAAAAAAAAAA", 404),
    (f"/api/articles/{article_id_for_uri('https://never.example/x')}", 404),
    (f"/api/articles/{article_id_for_uri('https://never.example/x')}/versions", 404),
    (f"/api/articles/{article_id_for_uri(URI)}/versions/1", 404),
    (f"/api/articles/{article_id_for_uri(URI)}/versions/zero", 404),
    ("/api/nothing-here", 404),
])
async def test_unknown_ids_and_paths_are_problems(client, path, status):
    response = await client.get(path, headers=AUTH)
    assert response.status == status
    assert response.content_type == "application/problem+json"
    assert (await response.json())["detail"]


async def test_bad_query_and_headers_name_the_parameter(client, seed_v1, redis_url):
    await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_HEADERS)
    before = snapshot(redis_url)
    bad_signal = await client.post("/api/articles?signal=retraction", data=orjson.dumps(seed_v1),
                                   headers=JSON_HEADERS)
    assert bad_signal.status == 400 and (await bad_signal.json())["parameter"] == "signal"
    bad_if_match = await client.put(f"/api/articles/{article_id_for_uri(seed_v1['uri'])}",
                                    data=orjson.dumps(seed_v1), headers={**JSON_HEADERS, "If-Match": "W/\"1\""})
    assert bad_if_match.status == 400 and (await bad_if_match.json())["parameter"] == "If-Match"
    bad_kill = await client.delete(f"/api/articles/{article_id_for_uri(seed_v1['uri'])}",
                                   data=b'{"reason": 5}', headers=JSON_HEADERS)
    assert bad_kill.status == 422 and (await bad_kill.json())["errors"][0]["pointer"] == "/reason"
    unknown_kill = await client.delete(f"/api/articles/{article_id_for_uri(seed_v1['uri'])}",
                                       data=b'{"why": "x"}', headers=JSON_HEADERS)
    assert unknown_kill.status == 422
    wrong_method = await client.patch("/api/articles", headers=AUTH)
    assert wrong_method.status == 405 and wrong_method.content_type == "application/problem+json"
    assert snapshot(redis_url) == before


# "²" is a digit to str.isdigit() but not to int(), and int() refuses more than 4,300 digits: numbers
# in requests must be a few ASCII digits.
@pytest.mark.parametrize("number", ["%C2%B2", "1" * 4301], ids=["superscript", "4301-digits"])
async def test_numbers_that_are_not_a_few_ascii_digits_are_400s(partner_client, seed_v1, redis_url, number):
    client = partner_client
    created = await client.post("/api/articles", data=orjson.dumps(seed_v1), headers=JSON_HEADERS)
    article_id = (await created.json())["id"]
    before = snapshot(redis_url)
    for path, parameter, headers in [
        (f"/feeds/latest/atom?since={number}", "since", {}),
        (f"/feeds/latest/atom?since={number}", "since", {"Connection": "close"}),
        (f"/api/articles?limit={number}", "limit", AUTH),
        (f"/api/articles/{article_id}/versions/{number}", None, AUTH),
        (f"/items/{article_id}/newsml?version={number}", "version", {}),
    ]:
        response = await client.get(path, headers=headers)
        assert response.status in (400, 404), (path, response.status)
        assert response.content_type == "application/problem+json"
        if parameter:
            assert (await response.json())["parameter"] == parameter, path
    if_match = '"\u00b2"'.encode().decode("latin-1") if number.startswith("%") else f'"{number}"'
    stale = await client.put(f"/api/articles/{article_id}", data=orjson.dumps(seed_v1),
                             headers={**JSON_HEADERS, "If-Match": if_match})
    assert stale.status == 400
    assert snapshot(redis_url) == before


def test_a_retry_after_that_is_not_ascii_digits_is_ignored():
    from server.push.retry import parse_retry_after

    now = utc_now()
    assert parse_retry_after("\u00b2", now) is None and parse_retry_after("7", now) == timedelta(seconds=7)
