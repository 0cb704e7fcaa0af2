"""Documents that once broke feeds: character references that decode to characters XML forbids
(``&#x1;``, ``&#xb;``, ``&#xFFFE;``) in an HTML body, and tabs, newlines or blanks in the one-line
fields of NewsML-G2 (names, slugline, creditline). Every feed in every format stays 200, well-formed,
and (NewsML-G2) valid against the XSD. The one-line fields are stored on one line (a blank one left
out), and a retry that differs from the stored document only there is recognised as the same."""

from __future__ import annotations

import orjson
import pytest
from conftest import ADMIN, AUTH, make_partner
from feed_validation import errors_for
from lxml import etree
from render_helpers import SAFE_PARSER, g2_schema

from server.domain.articles import article_id_for_uri
from server.domain.ninjs import read_document

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
NAR_NS = "http://iptc.org/std/nar/2006-10-01/"
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


async def stored_document(client, article_id: str, version: int = 1) -> dict:
    response = await client.get(f"/api/articles/{article_id}/versions/{version}", headers=ADMIN)
    assert response.status == 200, await response.text()
    return (await response.json())["document"]


def with_photo_credit(seed: dict, by: str) -> dict:
    photos = [{**association, "by": by} for association in seed["associations"]]
    return hostile(seed, associations=photos)


def with_photo_holder(seed: dict, holder: str) -> dict:
    photos = [{**association, "copyrightHolder": holder} for association in seed["associations"]]
    return hostile(seed, associations=photos)


# (the document, where the field is stored, what is stored there: None for left out, and the NewsML-G2
# elements, by path in the item's newsMessage, that show it)
ONE_LINE_CASES = {
    "a photo credit with a tab and a newline": (
        lambda seed: with_photo_credit(seed, "AP\tPhotos\n by Jo"), ("associations", 0, "by"), "AP Photos by Jo",
        ".//{NAR}newsItem[2]/{NAR}contentMeta/{NAR}creditline"),
    "a blank photo credit": (
        lambda seed: with_photo_credit(seed, " \n\t "), ("associations", 0, "by"), None,
        ".//{NAR}newsItem[2]/{NAR}contentMeta/{NAR}creditline"),
    "a blank slugline": (
        lambda seed: hostile(seed, slugline="\t \n"), ("slugline",), None,
        ".//{NAR}newsItem[1]/{NAR}contentMeta/{NAR}slugline"),
    "a blank copyright holder": (
        lambda seed: hostile(seed, copyrightHolder="   "), ("copyrightHolder",), None,
        ".//{NAR}newsItem[1]/{NAR}contentMeta/{NAR}creditline"),
    "a multi-line copyright holder": (
        lambda seed: hostile(seed, copyrightHolder="The\nAssociated\r\n\tPress "), ("copyrightHolder",),
        "The Associated Press", ".//{NAR}newsItem[1]/{NAR}rightsInfo/{NAR}copyrightHolder/{NAR}name"),
    "a multi-line photo copyright holder": (
        lambda seed: with_photo_holder(seed, "The\nAssociated\u2003Press"), ("associations", 1, "copyrightHolder"),
        "The Associated Press", ".//{NAR}newsItem[3]/{NAR}rightsInfo/{NAR}copyrightHolder/{NAR}name"),
}


@pytest.mark.parametrize("case", list(ONE_LINE_CASES))
async def test_a_one_line_field_is_stored_on_one_line_and_a_blank_one_left_out(client, redis_url, seed_v1, schema,
                                                                                case):
    make, path, expected, newsml_path = ONE_LINE_CASES[case]
    key = await make_partner(redis_url)
    document = make(seed_v1)
    response = await client.post("/api/articles", data=orjson.dumps(document), headers=JSON_HEADERS)
    assert response.status == 201, await response.text()
    article_id = article_id_for_uri(document["uri"])
    stored = await stored_document(client, article_id)
    *parents, field = path
    for part in parents:
        stored = stored[part]
    assert stored.get(field) == expected, stored
    await assert_every_feed_is_sound(client, key, schema, article_id)
    item = await client.get(f"/items/{article_id}/newsml", headers={"X-API-Key": key})
    shown = etree.fromstring(await item.read(), SAFE_PARSER).find(newsml_path.format(NAR=f"{{{NAR_NS}}}"))
    assert (shown.text if shown is not None else None) == expected


async def test_a_retry_that_differs_only_in_one_line_whitespace_is_unchanged(client, seed_v1):
    photos = [{**seed_v1["associations"][0], "by": "AP\nPhotos"}, *seed_v1["associations"][1:]]
    first = hostile(seed_v1, slugline="RUSSIA-\tCONVICTS", copyrightHolder=" ", associations=photos,
                    subjects=[{"name": "armed\nconflict", "literal": "a\tb"}])
    response = await client.post("/api/articles", data=orjson.dumps(first), headers=JSON_HEADERS)
    assert response.status == 201, await response.text()
    photos_again = [{**seed_v1["associations"][0], "by": " AP  Photos\t"}, *seed_v1["associations"][1:]]
    again = {**first, "slugline": "RUSSIA- CONVICTS ", "associations": photos_again,
             "subjects": [{"name": "armed conflict", "literal": "a b"}]}
    del again["copyrightHolder"]
    for retry in (first, again):
        response = await client.post("/api/articles", data=orjson.dumps(retry), headers=JSON_HEADERS)
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert (answer["outcome"], answer["version"]) == ("unchanged", 1)
    stored = await stored_document(client, article_id_for_uri(first["uri"]))
    assert stored["slugline"] == "RUSSIA- CONVICTS" and "copyrightHolder" not in stored
    assert stored["subjects"] == [{"name": "armed conflict", "literal": "a b"}]
    assert stored["associations"][0]["by"] == "AP Photos"


def test_the_one_line_rule_holds_for_every_dialect_and_nested_associations(seed_v1):
    picture = {"uri": "https://media.example.com/p", "type": "picture", "name": "inner", "by": "Jo\nSmith",
               "subjects": [{"name": "a\tb"}]}
    outer = {"uri": "https://media.example.com/o", "type": "picture", "name": "outer", "associations": [picture],
             "copyrightholder": " \n", "renditions": [{"name": "original", "href": "https://media.example.com/o.jpg"}]}
    version2 = {"uri": seed_v1["uri"] + "-v2", "type": "text", "versioncreated": "2024-01-01T00:00:00Z",
                "headlines": [{"value": "Head\nline"}], "slugline": "a\nb", "associations": [outer]}
    document = read_document(version2).document
    assert document["slugline"] == "a b" and document["headlines"] == [{"value": "Head\nline"}]  # not one line
    assert "copyrightHolder" not in document["associations"][0]
    inner = document["associations"][0]["associations"][0]
    assert inner["by"] == "Jo Smith" and inner["subjects"] == [{"name": "a b"}]


def test_a_control_character_in_a_feed_file_is_cleaned(tmp_path):
    from server.domain.feeds import load_feed_definitions

    (tmp_path / "odd.toml").write_text('title = "Odd\\u0001 feed\\nname"\ndescription = "Line one\\u000b\\tline two"\n'
                                       '[filters]\nsubjects = ["armed\\tconflict\\n", "war\\u0001"]\n')
    feed = load_feed_definitions(tmp_path)["odd"]
    assert feed.title == "Odd feed name" and feed.description == "Line one line two"
    assert feed.filters.subjects == ("armed conflict", "war")  # as ingest stores the names they match


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
