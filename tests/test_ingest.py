"""The ingest API against a real Redis: revisions, idempotency, ordering, kills, listing and auth."""

from __future__ import annotations

import asyncio
import copy

import orjson
import pytest
from conftest import ADMIN, AUTH, snapshot

from server.domain.articles import article_id_for_uri, is_article_id

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}


async def post(client, doc, query="", headers=None):
    return await client.post(f"/api/articles{query}", data=orjson.dumps(doc), headers={**JSON_HEADERS, **(headers or {})})


def test_article_id_is_stable_short_and_url_safe(seed_v1):
    article_id = article_id_for_uri(seed_v1["uri"])
    assert article_id == article_id_for_uri(seed_v1["uri"])
    assert is_article_id(article_id)
    assert article_id != article_id_for_uri(seed_v1["uri"] + "x")


async def test_v1_then_correction_makes_version_2(client, seed_v1, seed_v2, sync_redis):
    first = await post(client, seed_v1)
    assert first.status == 201
    body = await first.json()
    article_id = body["id"]
    assert first.headers["Location"] == f"/api/articles/{article_id}"
    assert first.headers["ETag"] == '"1"'
    assert body["version"] == 1 and body["kind"] == "new" and body["signal"] is None
    assert body["publisher"] == "newsroom"

    second = await post(client, seed_v2, "?signal=correction")
    assert second.status == 200
    body = await second.json()
    assert body["outcome"] == "revised"
    assert body["version"] == 2
    assert body["signal"] == "correction" and body["kind"] == "correction"
    assert second.headers["ETag"] == '"2"'
    assert body["firstCreated"] == "2022-11-04T09:55:00Z"  # kept from version 1
    assert body["versionCreated"] == "2022-11-04T11:10:00Z"
    assert "200,000" in body["document"]["bodies"][0]["value"]
    assert body["edNote"].startswith("Corrects the number")

    versions = await (await client.get(f"/api/articles/{article_id}/versions", headers=AUTH)).json()
    assert [v["version"] for v in versions["versions"]] == [1, 2]
    assert [v["kind"] for v in versions["versions"]] == ["new", "correction"]

    stored_v1 = await client.get(f"/api/articles/{article_id}/versions/1", headers=AUTH)
    assert stored_v1.status == 200
    raw = await stored_v1.read()
    assert raw == sync_redis.hget(f"syn:article:{article_id}:revisions", "1").encode()
    assert "Nearly 200,00 people" in orjson.loads(raw)["document"]["bodies"][0]["value"]

    changes = sync_redis.xrange("syn:changelog")
    assert [(entry_id, f["kind"], f["version"]) for entry_id, f in changes] == [
        ("1-0", "new", "1"), ("2-0", "correction", "2")]


async def test_same_content_again_makes_no_revision(client, seed_v1, seed_v2, redis_url):
    assert (await post(client, seed_v1)).status == 201
    before = snapshot(redis_url)
    retry = await post(client, seed_v1)
    assert retry.status == 200
    assert (await retry.json())["outcome"] == "unchanged"
    assert snapshot(redis_url) == before

    assert (await post(client, seed_v2, "?signal=correction")).status == 200
    before = snapshot(redis_url)
    late_retry = await post(client, seed_v1)  # exactly version 1, arriving late
    assert late_retry.status == 200
    body = await late_retry.json()
    assert body["outcome"] == "unchanged" and body["version"] == 2
    assert snapshot(redis_url) == before


async def test_stale_revision_is_refused(client, seed_v1, seed_v2, redis_url):
    await post(client, seed_v1)
    await post(client, seed_v2, "?signal=correction")
    before = snapshot(redis_url)
    stale = copy.deepcopy(seed_v1)
    stale["headlines"][0]["value"] = "A different headline from an old draft"
    response = await post(client, stale)
    assert response.status == 409
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["status"] == 409 and "versionCreated" in problem["detail"]
    assert problem["errors"][0]["pointer"] == "/versionCreated"
    assert snapshot(redis_url) == before


async def test_put_and_if_match(client, seed_v1, seed_v2, redis_url):
    article_id = (await (await post(client, seed_v1)).json())["id"]
    url = f"/api/articles/{article_id}"
    before = snapshot(redis_url)
    conflict = await client.put(url, data=orjson.dumps(seed_v2), headers={**JSON_HEADERS, "If-Match": '"7"'})
    assert conflict.status == 412
    assert (await conflict.json())["currentVersion"] == 1
    assert snapshot(redis_url) == before

    ok = await client.put(url + "?signal=correction", data=orjson.dumps(seed_v2),
                          headers={**JSON_HEADERS, "If-Match": '"1"'})
    assert ok.status == 200
    assert ok.headers["ETag"] == '"2"'

    other = {**seed_v1, "uri": "https://news.example.com/another-story"}
    mismatch = await client.put(url, data=orjson.dumps(other), headers=JSON_HEADERS)
    assert mismatch.status == 422
    assert (await mismatch.json())["errors"][0]["pointer"] == "/uri"

    unknown_id = article_id_for_uri("https://news.example.com/never-posted")
    missing = await client.put(f"/api/articles/{unknown_id}",
                               data=orjson.dumps({**seed_v1, "uri": "https://news.example.com/never-posted"}),
                               headers=JSON_HEADERS)
    assert missing.status == 404


async def test_kill_keeps_history_but_no_body(client, seed_v1, seed_v2):
    article_id = (await (await post(client, seed_v1)).json())["id"]
    await post(client, seed_v2, "?signal=correction")
    kill = await client.delete(f"/api/articles/{article_id}", data=orjson.dumps({"reason": "Legal advice"}),
                               headers=JSON_HEADERS)
    assert kill.status == 200
    body = await kill.json()
    assert body["version"] == 3 and body["pubStatus"] == "canceled" and body["kind"] == "kill"
    assert body["killReason"] == "Legal advice"
    assert "bodies" not in body["document"] and "headlines" not in body["document"]
    assert body["firstCreated"] == "2022-11-04T09:55:00Z"

    again = await client.delete(f"/api/articles/{article_id}", headers=AUTH)
    assert again.status == 200 and (await again.json())["version"] == 3

    revived = await post(client, {**seed_v2, "versionCreated": "2030-01-01T00:00:00Z"})
    assert revived.status == 409
    assert (await revived.json())["type"].endswith("/killed")

    history = await (await client.get(f"/api/articles/{article_id}/versions", headers=ADMIN)).json()
    assert [v["hasBody"] for v in history["versions"]] == [True, True, True]


async def test_purge_leaves_a_tombstone(client, settings, seed_v1, seed_v2, sync_redis):
    from server.articles.store import ArticleStore
    from server.core.redis_connection import connect

    article_id = (await (await post(client, seed_v1)).json())["id"]
    await post(client, seed_v2, "?signal=correction")
    redis = await connect(settings.redis_address)
    try:
        store = ArticleStore(redis)
        article = await store.purge(article_id, "Court order 2024/17", "test")
        history = await store.history(article_id)
    finally:
        await redis.aclose()
    assert article.killed and article.purge_reason == "Court order 2024/17" and article.purged_at
    assert [r.version for r in history] == [1, 2, 3]
    assert all(r.document is None and r.body_dropped_at for r in history)
    raw_values = "".join(sync_redis.hvals(f"syn:article:{article_id}:revisions"))
    assert "Putin" not in raw_values and "200,00" not in raw_values
    assert sync_redis.xrange("syn:changelog")[-1][1]["kind"] == "purge"
    response = await client.get(f"/api/articles/{article_id}/versions/1", headers=AUTH)
    assert (await response.json())["document"] is None


async def test_retention_drops_old_bodies_of_superseded_revisions(settings, client, seed_v1, seed_v2):
    from datetime import timedelta

    from server.articles.store import ArticleStore
    from server.core.redis_connection import connect
    from server.core.values import utc_now

    article_id = (await (await post(client, seed_v1)).json())["id"]
    await post(client, seed_v2, "?signal=correction")
    redis = await connect(settings.redis_address)
    try:
        store = ArticleStore(redis)
        assert await store.drop_old_bodies(timedelta(days=90)) == 0
        assert await store.drop_old_bodies(timedelta(days=90), now=utc_now() + timedelta(days=91)) == 1
        history = await store.history(article_id)
        assert history[0].document is None and history[0].content_hash  # metadata kept
        assert history[1].document is not None  # the latest keeps its body
        assert await store.trim_changelog(timedelta(days=90)) == 0
        assert await store.trim_changelog(timedelta(days=1), now=utc_now() + timedelta(days=2)) == 1
        assert [c.seq for c in await store.changes_after(0, 10)] == [2]  # the newest entry stays
    finally:
        await redis.aclose()


async def test_ninjs_2x_is_normalised_to_3x(client):
    doc = {
        "uri": "https://news.example.com/2x-story",
        "type": "text",
        "versioncreated": "2024-05-01T10:00:00+02:00",
        "pubstatus": "usable",
        "ednote": "for editors",
        "headlines": [{"role": "main", "value": "A 2.x headline"}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>Body</p>"}],
    }
    response = await post(client, doc)
    assert response.status == 201
    stored = (await response.json())["document"]
    assert stored["versionCreated"] == "2024-05-01T10:00:00+02:00"
    assert stored["pubStatus"] == "usable" and stored["edNote"] == "for editors"
    assert stored["bodies"][0]["contentType"] == "text/html"
    assert "versioncreated" not in stored


async def test_xml_forbidden_characters_are_removed_and_counted(client):
    doc = {
        "uri": "https://news.example.com/control-chars",
        "headlines": [{"role": "main", "value": "Bad\u0001 head\ufffeline\u0007"}],
        "bodies": [{"role": "main", "contentType": "text/plain", "value": "tab\tand\nnewline stay\u000b"}],
    }
    response = await client.post("/api/articles", headers=JSON_HEADERS,
                                 data=orjson.dumps(doc).replace(b"line", b"line\\ud800", 1))
    assert response.status == 201
    body = await response.json()
    assert body["removedCharacters"] == 5
    assert body["document"]["headlines"][0]["value"] == "Bad headline"
    assert body["document"]["bodies"][0]["value"] == "tab\tand\nnewline stay"


async def test_html_bodies_are_sanitised(client):
    html = ('<p onclick="steal()">Text<script>alert(1)</script> <a href="javascript:alert(2)">x</a> '
            '<img src="https://img.example/a.jpg" onerror="bad()"></p>')
    doc = {"uri": "https://news.example.com/xss", "headlines": [{"role": "main", "value": "h"}],
           "bodies": [{"role": "main", "contentType": "text/html", "value": html}]}
    body = await (await post(client, doc)).json()
    stored = body["document"]["bodies"][0]["value"]
    for bad in ("script", "onclick", "onerror", "javascript:", "alert"):
        assert bad not in stored
    assert "Text" in stored and 'src="https://img.example/a.jpg"' in stored


async def test_listing_filters_and_pages(client, seed_v1):
    ids = []
    for n in range(5):
        doc = {**seed_v1, "uri": f"https://news.example.com/story-{n}"}
        ids.append((await (await post(client, doc)).json())["id"])
    await client.delete(f"/api/articles/{ids[0]}", headers=AUTH)

    page = await (await client.get("/api/articles?limit=2", headers=AUTH)).json()
    assert [a["id"] for a in page["items"]] == [ids[0], ids[4]]  # newest change first: the kill
    seen = [a["id"] for a in page["items"]]
    while page["next"]:
        response = await client.get(page["next"], headers=AUTH)
        assert response.status == 200
        page = await response.json()
        seen += [a["id"] for a in page["items"]]
    assert sorted(seen) == sorted(ids) and len(seen) == 5

    canceled = await (await client.get("/api/articles?status=canceled", headers=AUTH)).json()
    assert [a["id"] for a in canceled["items"]] == [ids[0]]
    by_uri = await (await client.get("/api/articles", params={"uri": "https://news.example.com/story-3"},
                                     headers=AUTH)).json()
    assert [a["id"] for a in by_uri["items"]] == [ids[3]]
    future = await (await client.get("/api/articles?since=2100-01-01T00:00:00Z", headers=AUTH)).json()
    assert future["items"] == []
    past = await (await client.get("/api/articles?since=2000-01-01T00:00:00%2B02:00", headers=AUTH)).json()
    assert len(past["items"]) == 5
    for bad in ("status=gone", "since=yesterday", "since=2024-01-01T00:00:00", "limit=0", "cursor=abc"):
        response = await client.get(f"/api/articles?{bad}", headers=AUTH)
        assert response.status == 400, bad
        assert response.content_type == "application/problem+json"


async def test_concurrent_revisions_get_consecutive_versions(client, seed_v1):
    await post(client, seed_v1)
    docs = []
    for n in range(12):
        doc = copy.deepcopy(seed_v1)
        doc["versionCreated"] = "2030-01-01T00:00:00Z"  # all newer than v1, equal among themselves
        doc["headlines"][0]["value"] = f"Revision {n}"
        docs.append(doc)
    responses = await asyncio.gather(*(post(client, d) for d in docs))
    assert sorted(r.status for r in responses) == [200] * 12
    versions = await (await client.get(f"/api/articles/{article_id_for_uri(seed_v1['uri'])}/versions",
                                       headers=AUTH)).json()
    assert [v["version"] for v in versions["versions"]] == list(range(1, 14))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-wrong-token"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}])
async def test_ingest_needs_a_publisher_token(client, seed_v1, headers, redis_url):
    empty_store = snapshot(redis_url)
    response = await client.post("/api/articles", data=orjson.dumps(seed_v1),
                                 headers={"Content-Type": "application/json", **headers})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.content_type == "application/problem+json"
    assert snapshot(redis_url) == empty_store


async def test_admin_token_may_ingest_and_read(client, seed_v1):
    response = await client.post("/api/articles", data=orjson.dumps(seed_v1),
                                 headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status == 201
    assert (await response.json())["publisher"] == "admin"


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"]["redis"] == "ok"


@pytest.mark.parametrize(("field", "value"), [("uri", "not a uri"), ("versionCreated", "2022-13-04T10:00:00Z"),
                                              ("firstCreated", "4 November 2022")])
def test_the_schema_formats_are_checked(seed_v1, field, value):
    """The ninjs schemas' two formats ("uri", "date-time") are checked by the validators installed for
    them (rfc3986-validator, rfc3339-validator), and a value that is not one is refused, naming the field
    (the ingest's own checks refuse these too: the checkers' presence is asserted on its own)."""
    from jsonschema import Draft202012Validator

    from server.domain.ninjs import DocumentError, read_document

    assert {"uri", "date-time"} <= set(Draft202012Validator.FORMAT_CHECKER.checkers)  # else unchecked
    read_document(seed_v1)
    with pytest.raises(DocumentError) as refused:
        read_document({**seed_v1, field: value})
    assert f"/{field}" in str(refused.value.errors)


def test_only_the_format_checkers_the_schemas_use_are_imported():
    """jsonschema without its format extra: no rfc3987-syntax (2 s of grammar at import) in the process."""
    import subprocess
    import sys

    code = "import jsonschema, sys; print('rfc3987_syntax' in sys.modules, 'rfc3986_validator' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "True"]
