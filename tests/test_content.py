"""Content that once went missing: a plain-text-only body (empty in Atom and RSS), and the direction
and language of a passage (``dir="rtl"`` stripped at ingest)."""

from __future__ import annotations

import feedparser
import orjson
from conftest import AUTH, make_partner

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}


async def test_a_plain_text_body_is_carried_in_atom_and_rss(client, redis_url, seed_v1):
    key = await make_partner(redis_url)
    text = "First paragraph with <angle> & ampersand.\n\nSecond paragraph."
    document = {**seed_v1, "uri": seed_v1["uri"] + "-text", "bodies": [{"role": "main", "contentType": "text/plain",
                                                                         "value": text}]}
    response = await client.post("/api/articles", data=orjson.dumps(document), headers=JSON_HEADERS)
    assert response.status == 201, await response.text()
    for fmt in ("atom", "rss"):
        body = await (await client.get(f"/feeds/latest/{fmt}", headers={"X-API-Key": key})).read()
        [entry] = [e for e in feedparser.parse(body).entries if "-text" in (e.get("id") or e.get("guid") or "")]
        html = entry.content[0].value
        assert "<p>First paragraph with &lt;angle&gt; &amp; ampersand.</p>" in html, (fmt, html)
        assert "<p>Second paragraph.</p>" in html


async def test_the_direction_and_language_of_a_passage_are_kept(client, redis_url, seed_v1):
    key = await make_partner(redis_url)
    html = '<p>He said: <q dir="rtl" lang="ar">مرحبا</q>.</p><p dir="rtl">نص</p>'
    document = {**seed_v1, "uri": seed_v1["uri"] + "-rtl", "bodies": [{"role": "main", "contentType": "text/html",
                                                                        "value": html}]}
    response = await client.post("/api/articles", data=orjson.dumps(document), headers=JSON_HEADERS)
    assert response.status == 201, await response.text()
    feed = orjson.loads(await (await client.get("/feeds/latest/json", headers={"X-API-Key": key})).read())
    [item] = [i for i in feed["items"] if i["id"].endswith("-rtl")]
    assert 'dir="rtl" lang="ar"' in item["content_html"] and '<p dir="rtl">' in item["content_html"]
