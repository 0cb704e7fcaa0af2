"""Superdesk's HTTP Push, end to end through a real server on a real Redis: items signed as
``http_push`` signs them (``x-superdesk-signature: sha1=<HMAC-SHA1 of the raw body>``), read into
articles, and seen in every feed format; corrections, kills, pictures and packages; refusals (401,
422) that change nothing; the start-up errors of the setting. Also ninjs 1.x at ``POST /api/articles``
and every unknown field reported at once.

The items are written here after superdesk-core's ``NINJSFormatter`` and its tests (the shape, not
their files): ninjs 1.x plus Superdesk's extensions, dates as ``%Y-%m-%dT%H:%M:%S+0000``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from dataclasses import replace

import feedparser
import orjson
import pytest
from aiohttp.test_utils import TestClient
from conftest import ADMIN, AUTH, ROOT, SHARED, app_server, make_partner, snapshot
from render_helpers import newsml_errors

from server.core.settings import Settings, SettingsError, SuperdeskSecret
from server.domain.articles import article_id_for_uri
from server.domain.ninjs import read_document
from server.domain.superdesk import sign, uri_for_guid

SECRET = "superdesk-destination-secret-0123"
URL = "/api/superdesk/items"
TEXT_GUID = "tag:example.com,2024:harbour-fire"
PICTURE_GUID = "urn:newsml:example.com:2024-05-01:harbour-dawn"
PACKAGE_GUID = "urn:newsml:example.com:2024-05-01:harbour-package"
SIGNAL_SCHEME = "http://cv.iptc.org/newscodes/signal/"


def picture(guid: str = PICTURE_GUID, **changes) -> dict:
    item = {
        "guid": guid, "version": "1", "type": "picture", "pubstatus": "usable", "priority": 5,
        "versioncreated": "2024-05-01T09:50:00+0000", "headline": "The harbour at dawn",
        "byline": "Sam Photographer", "description_text": "Smoke over the harbour at dawn.",
        "copyrightholder": "Example News", "slugline": "harbour-dawn",
        "renditions": {
            "original": {"href": "https://media.example.com/harbour-dawn/original.jpg", "mimetype": "image/jpeg",
                         "width": 3000, "height": 2000, "media": "5b0e1c", "poi": {"x": 1500, "y": 900}},
            "thumbnail": {"href": "https://media.example.com/harbour-dawn/thumb.jpg", "mimetype": "image/jpeg",
                          "width": 120, "height": 80, "media": "5b0e1d"},
        },
    }
    item.update(changes)
    return item


def text(**changes) -> dict:
    item = {
        "guid": TEXT_GUID, "version": "1", "type": "text", "pubstatus": "usable", "profile": "story",
        "versioncreated": "2024-05-01T10:00:00+0000", "firstcreated": "2024-05-01T09:30:00+0000",
        "headline": "Fire at the harbour is under control", "slugline": "harbour-fire", "byline": "Jo Reporter",
        "language": "en", "located": "Sydney", "urgency": 3, "priority": 2, "source": "EX",
        "body_html": "<p>Firefighters brought the blaze under control before dawn.</p><script>x()</script>",
        "description_text": "Crews worked through the night.",
        "description_html": "<p>Crews worked through the <b>night</b>.</p>",
        "subject": [{"code": "03000000", "name": "disaster, accident and emergency incident",
                     "scheme": "http://cv.iptc.org/newscodes/subjectcode/"},
                    {"code": "fire", "name": "Fire", "scheme": "topics_custom"}],
        "place": [{"code": "NSW", "name": "New South Wales", "state": "New South Wales", "country": "Australia"}],
        "service": [{"code": "a", "name": "Domestic"}],
        "genre": [{"code": "article", "name": "Article"}],
        "organisation": [{"name": "Harbour Authority", "rel": "Securities Identifier",
                          "symbols": [{"ticker": "HBR", "exchange": "ASX"}]}],
        "signal": [{"name": "Content Warning", "code": "cwarn", "scheme": SIGNAL_SCHEME}],
        "keywords": ["harbour", "fire"], "charcount": 58, "wordcount": 9, "readtime": 0,
        "copyrightholder": "Example News", "copyrightnotice": "(c) Example News", "usageterms": "No archiving",
        "ednote": "First take", "extra": {"sponsor": "none"},
        "authors": [{"code": "u1", "name": "Jo Reporter", "role": "writer", "biography": ""}],
        "embargoed": "2024-05-01T09:45:00+00:00",
        "associations": {"featuremedia": picture()},
    }
    item.update(changes)
    return item


def correction() -> dict:
    return text(version="2", versioncreated="2024-05-01T11:00:00+0000",
                body_html="<p>Firefighters brought the blaze under control shortly after midnight.</p>",
                signal=[{"name": "Correction", "code": "correction", "scheme": SIGNAL_SCHEME}])


def kill() -> dict:
    return {"guid": TEXT_GUID, "version": "3", "type": "text", "pubstatus": "canceled", "priority": 5,
            "versioncreated": "2024-05-01T12:00:00+0000", "headline": "KILL: harbour fire",
            "body_html": "<p>Please kill this story.</p>", "ednote": "Withdrawn for legal reasons"}


def package(*, embedded: bool = False, **changes) -> dict:
    main = {"guid": TEXT_GUID, "type": "text"}
    sidebar = {"guid": PICTURE_GUID, "type": "picture"}
    if embedded:  # a destination with 'packaged' on embeds each item's ninjs
        main, sidebar = {**text(associations={}), **main}, {**picture(), **sidebar}
    item = {"guid": PACKAGE_GUID, "version": "1", "type": "composite", "pubstatus": "usable", "priority": 5,
            "versioncreated": "2024-05-01T10:05:00+0000", "headline": "Harbour fire", "language": "en",
            "slugline": "harbour-fire", "associations": {"main": main, "sidebars": sidebar}}
    item.update(changes)
    return item


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    """What http_push sends (HTTPPushService._get_headers / _get_data_hash)."""
    digest = hmac.new(secret.encode(), msg=body, digestmod="sha1").hexdigest()
    return {"Content-Type": "application/json", "Accept": "application/json",
            "x-superdesk-signature": "sha1=" + digest}


async def push(client: TestClient, item: dict, secret: str = SECRET):
    body = json.dumps(item).encode()  # http_push sends json.dumps of the formatted item
    return await client.post(URL, data=body, headers=signed(body, secret))


@pytest.fixture
def sd_settings(settings: Settings) -> Settings:
    return replace(settings, superdesk_secrets=(SuperdeskSecret("newsroom", SECRET),))


@pytest.fixture
async def sd(aiohttp_client, sd_settings: Settings, redis_url: str):
    key = await make_partner(redis_url)
    return await aiohttp_client(app_server(sd_settings), headers={"X-API-Key": key})


async def feeds(client: TestClient) -> dict[str, bytes]:
    found = {}
    for fmt in ("rss", "atom", "newsml", "json"):
        response = await client.get(f"/feeds/latest/{fmt}")
        assert response.status == 200, fmt
        found[fmt] = await response.read()
    return found


async def article(client: TestClient, guid: str = TEXT_GUID) -> dict:
    response = await client.get(f"/api/articles/{article_id_for_uri(guid)}", headers=ADMIN)
    assert response.status == 200
    return await response.json()


# ----- the whole path --------------------------------------------------------------------------------


async def test_a_signed_text_push_is_an_article_in_every_feed_format(sd):
    response = await push(sd, text())
    assert response.status == 201, await response.text()
    body = await response.json()
    assert body["outcome"] == "created" and body["superdesk"]["kind"] == "text"
    assert body["uri"] == TEXT_GUID and body["publisher"] == "newsroom"

    out = await feeds(sd)
    headline, body_text, photo = "Fire at the harbour is under control", "under control before dawn", \
        "https://media.example.com/harbour-dawn/original.jpg"
    for fmt, data in out.items():
        assert headline.encode() in data and body_text.encode() in data and photo.encode() in data, fmt
        assert b"<script>" not in data, fmt
    assert newsml_errors(out["newsml"]) == []
    assert feedparser.parse(out["atom"]).entries[0].title == headline
    assert feedparser.parse(out["rss"]).entries[0].title == headline
    item = orjson.loads(out["json"])["items"][0]
    assert item["title"] == headline and item["_syndicate"]["photos"][0]["caption"] == "Smoke over the harbour at dawn."

    again = await push(sd, text())  # http_push retries: the same body is no new revision
    assert again.status == 200 and (await again.json())["outcome"] == "unchanged"


async def test_every_field_maps_or_is_kept_in_extra(sd):
    assert (await push(sd, text())).status == 201
    stored = await article(sd)
    document, extra = stored["document"], stored["extra"]
    assert document["uri"] == TEXT_GUID and document["type"] == "text" and document["version"] == "1"
    assert document["headlines"] == [{"role": "main", "value": "Fire at the harbour is under control"}]
    assert document["by"] == "Jo Reporter" and document["located"] == "Sydney" and document["urgency"] == 3
    assert document["versionCreated"] == "2024-05-01T10:00:00+00:00"
    assert document["firstCreated"] == "2024-05-01T09:30:00+00:00"
    assert document["embargoedUntil"] == "2024-05-01T09:45:00+00:00"
    assert document["bodies"] == [{"contentType": "text/html", "charCount": 58, "wordCount": 9,
                                   "value": "<p>Firefighters brought the blaze under control before dawn.</p>"}]
    assert document["descriptions"][0] == {"role": "summary", "contentType": "text/plain",
                                           "value": "Crews worked through the night."}
    assert document["subjects"] == [
        {"name": "disaster, accident and emergency incident", "literal": "03000000",
         "uri": "http://cv.iptc.org/newscodes/subjectcode/03000000"},
        {"name": "Fire", "literal": "fire"}]
    assert document["places"] == [{"name": "New South Wales", "literal": "NSW"}]
    assert document["genres"] == [{"name": "Article", "literal": "article"}]
    assert document["organisations"][0]["symbols"] == [{"symbol": "HBR", "exchange": "ASX"}]
    assert document["copyrightNotice"] == "(c) Example News" and document["usageTerms"] == "No archiving"
    [image] = document["associations"]
    assert image["name"] == "featuremedia" and image["uri"] == PICTURE_GUID and image["type"] == "picture"
    assert image["descriptions"] == [{"role": "caption", "contentType": "text/plain",
                                      "value": "Smoke over the harbour at dawn."}]
    assert image["renditions"][0] == {"name": "original", "href": "https://media.example.com/harbour-dawn/original.jpg",
                                      "contentType": "image/jpeg", "width": 3000, "height": 2000}
    # No home in ninjs 3.x: kept, at its pointer in the item as Superdesk sent it.
    assert extra["/priority"] == 2 and extra["/service"] == [{"code": "a", "name": "Domestic"}]
    assert extra["/signal"][0]["code"] == "cwarn" and extra["/readtime"] == 0 and extra["/source"] == "EX"
    assert extra["/keywords"] == ["harbour", "fire"] and extra["/extra"] == {"sponsor": "none"}
    assert extra["/subject/1/scheme"] == "topics_custom" and extra["/place/0/country"] == "Australia"
    assert extra["/authors"][0]["name"] == "Jo Reporter"
    assert extra["/associations/featuremedia/priority"] == 5
    assert extra["/associations/featuremedia/renditions/original/media"] == "5b0e1c"
    assert extra["/associations/featuremedia/renditions/original/poi"] == {"x": 1500, "y": 900}
    assert read_document(document)  # what is stored is valid against our ninjs 3.x profile


async def test_a_guid_that_is_not_a_uri_gets_the_documented_prefix(sd):
    response = await push(sd, text(guid="20150723001158606583", associations={}))
    assert response.status == 201
    body = await response.json()
    assert body["uri"] == "urn:superdesk:newsroom:20150723001158606583" == uri_for_guid("20150723001158606583",
                                                                                         "newsroom")
    assert {"role": "guid", "value": "20150723001158606583"} in body["document"]["altIds"]
    assert uri_for_guid("a b/c", "news room") == "urn:superdesk:news%20room:a%20b%2Fc"


async def test_correction_and_kill_propagate_to_every_format(sd):
    assert (await push(sd, text())).status == 201
    response = await push(sd, correction())
    assert response.status == 200
    corrected = await response.json()
    assert corrected["outcome"] == "revised" and corrected["kind"] == "correction"
    assert corrected["signal"] == "correction" and corrected["version"] == 2
    for fmt, data in (await feeds(sd)).items():
        assert b"shortly after midnight" in data and b"before dawn" not in data, fmt

    response = await push(sd, kill())
    assert response.status == 200
    killed = await response.json()
    assert killed["kind"] == "kill" and killed["pubStatus"] == "canceled" and killed["version"] == 3
    assert killed["killReason"] == "Withdrawn for legal reasons"
    out = await feeds(sd)
    for fmt, data in out.items():
        assert b"Withdrawn" in data and b"midnight" not in data and b"Please kill" not in data, fmt
    assert newsml_errors(out["newsml"]) == []
    again = await push(sd, kill())  # a retried kill
    assert again.status == 200 and (await again.json())["outcome"] == "unchanged"


async def test_pictures_pushed_on_their_own_and_a_package_make_the_text_with_its_pictures(sd):
    assert (await push(sd, text(associations={}))).status == 201
    response = await push(sd, picture())  # http_push sends a package's items before the package
    assert response.status == 200
    assert (await response.json())["superdesk"] == {"kind": "media", "uri": PICTURE_GUID, "revised": []}

    response = await push(sd, package())
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["uri"] == TEXT_GUID and body["outcome"] == "revised" and body["version"] == 2
    [image] = body["document"]["associations"]
    assert image["name"] == "sidebars" and image["renditions"][0]["href"].endswith("original.jpg")
    assert body["extra"]["package"]["uri"] == PACKAGE_GUID
    for fmt, data in (await feeds(sd)).items():
        assert b"harbour-dawn/original.jpg" in data, fmt
    assert (await (await sd.get("/feeds/latest/json")).json())["items"].__len__() == 1  # one story, not two

    # The picture is corrected: the text that holds it is revised with it.
    response = await push(sd, picture(version="2", headline="The harbour at first light",
                                      versioncreated="2024-05-01T10:10:00+0000"))
    assert (await response.json())["superdesk"]["revised"] == [article_id_for_uri(TEXT_GUID)]
    assert (await article(sd))["document"]["associations"][0]["headlines"][0]["value"] == "The harbour at first light"

    # The text is corrected on its own: it keeps its package's picture.
    response = await push(sd, {**correction(), "associations": {}})
    assert response.status == 200
    assert [a["uri"] for a in (await response.json())["document"]["associations"]] == [PICTURE_GUID]

    # The picture is killed: the text loses it.
    response = await push(sd, picture(pubstatus="canceled", version="3", versioncreated="2024-05-01T11:30:00+0000"))
    assert response.status == 200
    assert "associations" not in (await article(sd))["document"]


async def test_a_packaged_destination_embeds_the_items_in_the_package(sd):
    response = await push(sd, package(embedded=True))
    assert response.status == 201, await response.text()
    body = await response.json()
    assert body["uri"] == TEXT_GUID and body["version"] == 1
    assert [a["name"] for a in body["document"]["associations"]] == ["sidebars"]
    assert (await push(sd, package(pubstatus="canceled", version="2"))).status == 200
    assert (await article(sd))["pubStatus"] == "canceled"


# ----- refusals ------------------------------------------------------------------------------------------


async def test_a_missing_or_wrong_signature_is_401_and_changes_nothing(sd, redis_url):
    before = snapshot(redis_url)
    body = json.dumps(text()).encode()
    for headers in ({"Content-Type": "application/json"}, signed(body, "another-secret-0123456789"),
                    {**signed(body), "x-superdesk-signature": "sha1=" + "0" * 40},
                    signed(body + b" ")):  # the signature covers the exact bytes
        response = await sd.post(URL, data=body, headers=headers)
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        assert "x-superdesk-signature" in (await response.json())["detail"]
    bearer = await sd.post(URL, data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert bearer.status == 401  # a publisher token is not a Superdesk signature
    assert snapshot(redis_url) == before


async def test_bad_items_are_4xx_problems_that_change_nothing(sd, redis_url):
    before = snapshot(redis_url)
    cases = [
        (text(headline=7), 422, "/headline"),
        (text(versioncreated="yesterday"), 422, "/versioncreated"),
        ({k: v for k, v in text().items() if k != "guid"}, 422, "/guid"),
        (text(type="event"), 422, "/type"),
        (text(headline=None, pubstatus="usable"), 422, "/headline"),
        (package(associations={"sidebars": {"guid": PICTURE_GUID, "type": "picture"}}), 422, "/associations"),
        (package(), 409, "/associations/main"),  # its text was never pushed
    ]
    for item, status, where in cases:
        response = await push(sd, item)
        assert response.status == status, (where, await response.text())
        problem = await response.json()
        assert response.content_type == "application/problem+json"
        assert where in [e["pointer"] for e in problem["errors"]], problem
    for raw in (b"{", b"[]", b'{"guid": "x", "guid": "y"}'):
        response = await sd.post(URL, data=raw, headers=signed(raw))
        assert response.status == 400
    assert (await push(sd, kill())).status == 404  # nothing to kill
    assert snapshot(redis_url) == before


async def test_without_the_setting_the_url_says_how_to_turn_it_on(client):
    response = await client.post(URL, data=b"{}", headers=signed(b"{}"))
    assert response.status == 404
    assert "SYNDICATE_SUPERDESK_SECRETS" in (await response.json())["detail"]


def test_a_publisher_configured_without_a_secret_is_a_start_up_error():
    for value in ("newsroom", "newsroom:", "newsroom:  "):
        with pytest.raises(SettingsError, match="configured for Superdesk without a secret"):
            Settings.from_env({"SYNDICATE_SUPERDESK_SECRETS": value})
    with pytest.raises(SettingsError, match="at least 16"):
        Settings.from_env({"SYNDICATE_SUPERDESK_SECRETS": "newsroom:short"})
    parsed = Settings.from_env({"SYNDICATE_SUPERDESK_SECRETS": f"newsroom:{SECRET}, desk:{SECRET}x"})
    assert parsed.superdesk_secrets == (SuperdeskSecret("newsroom", SECRET), SuperdeskSecret("desk", SECRET + "x"))


async def test_a_secret_for_an_unknown_publisher_stops_the_start(aiohttp_client, settings):
    unknown = replace(settings, superdesk_secrets=(SuperdeskSecret("wire", SECRET),))
    with pytest.raises(SettingsError, match="'wire' is not a publisher"):
        await aiohttp_client(app_server(unknown))


# ----- ninjs 1.x and every error at once ------------------------------------------------------------------


IPTC_1_4 = {  # the shape of IPTC's ninjs 1.4 examples
    "uri": "http://ninjs.example.com/newsitems/20240501-harbour", "type": "text", "version": "1",
    "versioncreated": "2024-05-01T10:00:00Z", "pubstatus": "usable", "language": "en",
    "headline": "Fire at the harbour", "headline_short": "Harbour fire", "byline": "Jo Reporter",
    "body_text": "Firefighters brought the blaze under control.", "description_text": "Crews worked all night.",
    "subject": [{"name": "fire", "scheme": "http://cv.iptc.org/newscodes/mediatopic/", "code": "20000139"}],
    "altids": {"agency": "EX-123"}, "mimetype": "text/plain",
    "renditions": {"web": {"href": "http://ninjs.example.com/20240501-harbour.html", "mimetype": "text/html"}},
}


async def test_ninjs_1x_is_accepted_and_normalised_to_3x(client):
    response = await client.post("/api/articles", json=IPTC_1_4, headers=AUTH)
    assert response.status == 201, await response.text()
    document = (await response.json())["document"]
    assert document["headlines"] == [{"role": "main", "value": "Fire at the harbour"},
                                     {"role": "short", "value": "Harbour fire"}]
    assert document["bodies"] == [{"contentType": "text/plain", "value": "Firefighters brought the blaze under control."}]
    assert document["subjects"][0]["uri"] == "http://cv.iptc.org/newscodes/mediatopic/20000139"
    assert document["altIds"] == [{"role": "agency", "value": "EX-123"}]
    assert document["renditions"] == [{"name": "web", "href": "http://ninjs.example.com/20240501-harbour.html",
                                       "contentType": "text/html"}]
    assert (await response.json())["extra"] == {"/mimetype": "text/plain"}
    official = SHARED / "standards" / "ninjs" / "examples" / "2.2" / "004_simple_text_article.json"
    if official.exists():  # the same story in 2.x still reads as 2.x
        assert read_document(orjson.loads(official.read_bytes())).dialect == "2"


async def test_ninjs_1x_with_faults_names_the_version_and_every_fault(client, redis_url):
    before = snapshot(redis_url)
    superdesk_item = text()
    response = await client.post("/api/articles", json=superdesk_item, headers=AUTH)
    assert response.status == 422
    problem = await response.json()
    assert problem["detail"].startswith("This is ninjs 1.x")
    assert "POST /api/superdesk/items" in problem["detail"]
    pointers = {e["pointer"] for e in problem["errors"]}
    assert {"/guid", "/priority", "/service", "/signal", "/readtime", "/keywords", "/extra", "/authors",
            "/associations/featuremedia/guid", "/associations/featuremedia/priority",
            "/associations/featuremedia/renditions/original/media", "/place/0/state", "/uri"} <= pointers
    mixed = await client.post("/api/articles", json={**IPTC_1_4, "versionCreated": "2024-05-01T10:00:00Z"},
                              headers=AUTH)
    assert mixed.status == 422 and "mixes ninjs 1.x names" in (await mixed.json())["detail"]
    assert snapshot(redis_url) == before


async def test_every_unknown_field_of_every_object_is_reported_with_its_pointer(client, seed_v1):
    doc = copy.deepcopy(seed_v1)
    doc.update(priority=5, service=[{"code": "a"}])
    doc["headlines"][0]["colour"] = "red"
    doc["headlines"][0]["size"] = 3
    doc["bodies"][0]["words"] = 9
    response = await client.post("/api/articles", json=doc, headers=AUTH)
    assert response.status == 422
    problem = await response.json()
    unknown = sorted(e["pointer"] for e in problem["errors"] if e["detail"].startswith("unknown field"))
    assert unknown == ["/bodies/0/words", "/headlines/0/colour", "/headlines/0/size", "/priority", "/service"]
    assert "(and 4 more, each in errors)" in problem["detail"]


# ----- the commands docs/superdesk.md shows ---------------------------------------------------------------


# They run in order against a live server in tests/test_docs_commands.py, like every page's.


def test_the_setting_in_docs_superdesk_md_parses():
    docs = (ROOT / "docs" / "superdesk.md").read_text(encoding="utf-8")
    [value] = re.findall(r"SYNDICATE_SUPERDESK_SECRETS=(\S+)", docs)[:1]
    assert Settings.from_env({"SYNDICATE_SUPERDESK_SECRETS": value}).superdesk_secrets


def test_the_signature_is_what_http_push_computes():
    body = b'{"guid": "x"}'
    assert sign(SECRET.encode(), body) == "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
