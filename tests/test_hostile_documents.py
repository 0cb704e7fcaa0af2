"""Documents that once broke feeds: character references that decode to characters XML forbids
(``&#x1;``, ``&#xb;``, ``&#xFFFE;``) in an HTML body, and tabs, newlines or blanks in the one-line
fields of NewsML-G2 (names, slugline, creditline). Every feed in every format stays 200, well-formed,
and (NewsML-G2) valid against the XSD."""

from __future__ import annotations

import orjson
import pytest
from conftest import AUTH, make_partner
from feed_validation import errors_for
from lxml import etree
from render_helpers import SAFE_PARSER, g2_schema

from server.domain.articles import article_id_for_uri
from server.domain.ninjs import read_document

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
XML_FORMATS = ("rss", "atom", "newsml")


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return g2_schema()


def hostile(seed: dict, **fields) -> dict:
    return {**seed, "uri": seed["uri"] + "-hostile", **fields}


@pytest.mark.parametrize("reference", ["&#x1;", "&#xb;", "&#xFFFE;", "&#0;", "&#xD800;"])
def test_a_forbidden_character_reference_in_html_is_not_stored(seed_v1, reference):
    body = [{"role": "main", "contentType": "text/html", "value": f"<p>before{reference}after</p>"}]
    document = read_document(hostile(seed_v1, bodies=body)).document
    stored = document["bodies"][0]["value"]
    assert "before" in stored and "after" in stored
    assert not any(ord(c) < 0x20 and c not in "\t\n\r" or c in "\ufffe\uffff" for c in stored), repr(stored)


async def assert_every_feed_is_sound(client, key: str, schema: etree.XMLSchema, article_id: str) -> None:
    for feed in ("latest", "world"):
        for fmt in (*XML_FORMATS, "json"):
            response = await client.get(f"/feeds/{feed}/{fmt}", headers={"X-API-Key": key})
            assert response.status == 200, (feed, fmt, await response.text())
            body = await response.read()
            if fmt == "json":
                orjson.loads(body)
                continue
            document = etree.fromstring(body, SAFE_PARSER)  # well-formed, or this raises
            if fmt in ("atom", "rss"):
                assert not errors_for(fmt, body), (feed, fmt, errors_for(fmt, body))
            if fmt == "newsml":
                assert schema.validate(document), (feed, schema.error_log.last_error)
    item = await client.get(f"/items/{article_id}/newsml", headers={"X-API-Key": key})
    assert item.status == 200
    assert schema.validate(etree.fromstring(await item.read(), SAFE_PARSER)), schema.error_log.last_error


async def test_character_references_in_a_body_break_no_feed(client, redis_url, seed_v1, schema):
    key = await make_partner(redis_url)
    body = [{"role": "main", "contentType": "text/html",
             "value": "<p>one&#x1; two&#xb; three&#xFFFE; four&#xffff;</p>"}]
    document = hostile(seed_v1, bodies=body)
    response = await client.post("/api/articles", data=orjson.dumps(document), headers=JSON_HEADERS)
    assert response.status == 201, await response.text()
    assert (await response.json())["removedCharacters"] >= 4
    await assert_every_feed_is_sound(client, key, schema, article_id_for_uri(document["uri"]))


async def test_tabs_newlines_and_blanks_in_one_line_fields_keep_newsml_valid(client, redis_url, seed_v1, schema):
    key = await make_partner(redis_url)
    subjects = [*seed_v1["subjects"], {"name": "Armed\tconflict\nlines"}, {"name": "   "},
                {"name": "\n", "literal": "a\tb"}, {"name": "\u3000", "literal": "\u2003"}]
    places = [{"name": "Kyiv\n"}, {"name": " \t "}]
    document = hostile(seed_v1, subjects=subjects, places=places, slugline="RUSSIA-\nCONVICTS\t",
                       copyrightHolder="The\nAgency", by="A\tReporter")
    response = await client.post("/api/articles", data=orjson.dumps(document), headers=JSON_HEADERS)
    assert response.status == 201, await response.text()
    await assert_every_feed_is_sound(client, key, schema, article_id_for_uri(document["uri"]))


def test_a_control_character_in_a_feed_file_is_cleaned(tmp_path):
    from server.domain.feeds import load_feed_definitions

    (tmp_path / "odd.toml").write_text('title = "Odd\\u0001 feed\\nname"\ndescription = "Line one\\u000b\\tline two"\n')
    feed = load_feed_definitions(tmp_path)["odd"]
    assert feed.title == "Odd feed name" and feed.description == "Line one line two"


async def test_a_lowercase_z_is_a_valid_date_time(client, seed_v1):
    document = hostile(seed_v1, versionCreated="2024-01-01t00:00:00z", firstCreated="2023-12-31T23:00:00z")
    response = await client.post("/api/articles", data=orjson.dumps(document), headers=JSON_HEADERS)
    assert response.status == 201, await response.text()
    created = await response.json()
    assert created["versionCreated"] == "2024-01-01T00:00:00Z" and created["firstCreated"] == "2023-12-31T23:00:00Z"


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
async def test_a_date_time_outside_years_1_to_9999_in_utc_is_422_and_stores_nothing(client, seed_v1, redis_url,
                                                                                     moment):
    from conftest import snapshot

    before = snapshot(redis_url)
    for field in ("versionCreated", "embargoedUntil"):
        response = await client.post("/api/articles", data=orjson.dumps(hostile(seed_v1, **{field: moment})),
                                     headers=JSON_HEADERS)
        assert response.status == 422, await response.text()
        assert (await response.json())["errors"][0]["pointer"] == f"/{field}"
    assert snapshot(redis_url) == before


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
async def test_extreme_date_times_in_queries_are_400s(client, moment):
    from urllib.parse import quote

    from conftest import ADMIN
    for path in (f"/api/propagation?from={quote(moment)}", f"/api/articles?since={quote(moment)}"):
        response = await client.get(path, headers=ADMIN)
        assert response.status == 400, (path, await response.text())


@pytest.mark.parametrize("number", [10**30, 2**63, -(2**63) - 1])
async def test_an_integer_outside_64_bits_is_a_400_not_a_500(client, seed_v1, redis_url, number):
    import json

    from conftest import snapshot

    document = json.loads(json.dumps(seed_v1))
    document["associations"][0]["renditions"][0]["width"] = number
    before = snapshot(redis_url)
    response = await client.post("/api/articles", data=json.dumps(document).encode(), headers=JSON_HEADERS)
    assert response.status == 400, await response.text()
    assert "64-bit" in (await response.json())["detail"]
    assert snapshot(redis_url) == before
