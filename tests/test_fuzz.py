"""Property-based fuzzing through the HTTP API of a real ``syndicate serve``: hypothesis makes ninjs
documents from the seed, some hostile (characters XML forbids, raw and as character references, odd
whitespace, lowercase ``z``, extreme dates, huge integers, right-to-left and astral text). After each
one: nothing answered 5xx; a refusal left the article as it was; after an accepted one every feed in
every format is well-formed, RSS and Atom are valid (:mod:`feed_validation`: RFC 4287's schema and
rules, the RSS 2.0 specification's, and the W3C validator's errors when ``SYNDICATE_FEEDVALIDATOR``
names a copy of it), NewsML-G2 is valid against the XSD, JSON Feed against the JSON Feed 1.1 schema
written from its specification (tests/schemas/jsonfeed-1.1.json), and the item's NewsML is
valid too. The newest RFC 5005 archive page (10 changes a page here) is checked the same way.

``SYNDICATE_FUZZ_EXAMPLES`` sets the number of documents (300 in ``make test``; ``make fuzz`` runs
10,000 and prints the figures).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import http_helpers as http
import orjson
import pytest
from conftest import ADMIN_TOKEN, PUBLISHER_TOKEN, ROOT, SEED_V1, cli_env, free_port, start_redis
from feed_validation import errors_for, json_feed_errors, w3c_available
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from render_helpers import SAFE_PARSER, g2_schema

from server.domain.articles import article_id_for_uri

ATOM_NS = "http://www.w3.org/2005/Atom"
EXAMPLES = int(os.environ.get("SYNDICATE_FUZZ_EXAMPLES", "300"))
PUBLISH = {"Authorization": f"Bearer {PUBLISHER_TOKEN}", "Content-Type": "application/json"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SEED = orjson.loads(SEED_V1.read_bytes())
OUTCOMES: Counter[str] = Counter()
CHECKED: Counter[str] = Counter()  # documents checked, by kind
pytestmark = pytest.mark.timeout(max(120, EXAMPLES // 5))  # about 40 ms a document, with slack

# Text a CMS might send, and text an attacker would: controls, non-characters, RTL, astral, entities.
HOSTILE_CHARACTERS = st.sampled_from(["\x00", "\x01", "\x0b", "\x0c", "\x1f", "\ufffe", "\uffff", "\t", "\n",
                                      "\r", "\u200f", "\u202e", "\U0001f600", "\U00010348", "\u0627", " ", "&",
                                      "<", ">", '"', "'", "]]>"])
TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(HOSTILE_CHARACTERS, st.text(max_size=5)), max_size=12).map("".join),
)
ENTITY = st.sampled_from(["&#x1;", "&#xb;", "&#xFFFE;", "&#xffff;", "&#0;", "&#xD800;", "&#x10FFFF;", "&amp;",
                          "&#x202E;", "&nbsp;", "&bogus;", "&#", "&#x;"])
HTML = st.lists(st.one_of(TEXT, ENTITY, st.sampled_from(["<p>", "</p>", "<b>", "<img src=x>", "<script>x</script>",
                                                          '<p dir="rtl">', "<figure>", "</figure>"])),
                max_size=15).map(lambda parts: "<p>" + "".join(parts) + "</p>")
MOMENT = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.sampled_from(["2024-01-01T00:00:00z", "2024-01-01t00:00:00Z", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59-01:00", "2024-02-30T00:00:00Z", "2024-01-01T00:00:00", "yesterday"]),
)
FRESH = "fresh"  # stands for the time the document is sent
NUMBER = st.one_of(st.integers(), st.integers(min_value=2**63 - 2, max_value=2**80), st.floats(allow_nan=False))


@st.composite
def documents(draw: st.DrawFn) -> dict:
    doc = json.loads(json.dumps(SEED))
    doc["uri"] = SEED["uri"] + "-fuzz-" + str(draw(st.integers(0, 3)))  # a few articles, revised again and again
    # Mostly a fresh time (set when it is sent: a revision must not be older than the stored one, so
    # hostile content gets past that check and reaches the feeds), sometimes the seed's or any moment.
    doc["versionCreated"] = draw(st.sampled_from([FRESH, FRESH, FRESH, SEED["versionCreated"], None]))
    if doc["versionCreated"] is None:
        doc["versionCreated"] = draw(MOMENT)
    if draw(st.booleans()):
        doc["headlines"] = [{"role": "main", "value": draw(TEXT)}]
    if draw(st.booleans()):
        doc["bodies"] = [{"role": "main", "contentType": draw(st.sampled_from(["text/html", "text/plain"])),
                          "value": draw(HTML)}]
    for field in ("slugline", "by", "copyrightHolder", "language", "edNote", "usageTerms"):
        if draw(st.integers(0, 4)) == 0:
            doc[field] = draw(TEXT)
    if draw(st.booleans()):
        doc["subjects"] = [{"name": draw(TEXT), **({"literal": draw(TEXT)} if draw(st.booleans()) else {})}
                           for _ in range(draw(st.integers(0, 3)))]
    if draw(st.integers(0, 5)) == 0:
        doc["embargoedUntil"] = draw(MOMENT)
    if draw(st.integers(0, 5)) == 0:
        doc[draw(st.sampled_from(["charCount", "wordCount", "priority", "urgency"]))] = draw(NUMBER)
    if draw(st.integers(0, 5)) == 0 and doc.get("associations"):  # a number the schema leaves open
        doc["associations"][0]["renditions"][0][draw(st.sampled_from(["width", "height"]))] = draw(NUMBER)
    return doc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz")
    redis, redis_port = start_redis(directory / "redis")
    port = free_port()
    env = cli_env(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", SYNDICATE_DATA_DIR=str(directory / "var"),
                  SYNDICATE_PORT=str(port), SYNDICATE_PUBLISHER_TOKENS=f"newsroom:{PUBLISHER_TOKEN}",
                  SYNDICATE_ADMIN_TOKEN=ADMIN_TOKEN, SYNDICATE_WORKERS="OFF", SYNDICATE_ARCHIVE_PAGE_CHANGES="10")
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while http.get(port, "/readyz")[0] != 200:
            assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(20)
        redis.terminate()
        redis.wait(10)
        print(f"\nfuzz: {sum(OUTCOMES.values())} documents, " + ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items())))
        print("checked: " + ", ".join(f"{k} {v}" for k, v in sorted(CHECKED.items())))


@pytest.fixture(scope="module")
def schema():
    return g2_schema()


def _versions(port: int, article_id: str) -> bytes:
    status, body = http.request(port, "GET", f"/api/articles/{article_id}/versions", None, ADMIN)
    assert status in (200, 404), (status, body[:300])
    return body if status == 200 else b""


def _check_feeds(port: int, schema: etree.XMLSchema, article_id: str) -> None:
    pages = [f"/feeds/latest/{fmt}" for fmt in ("rss", "atom", "newsml", "json")]
    status, body = http.request(port, "GET", "/feeds/latest/atom", None, ADMIN)
    assert status == 200, (status, body[:300])
    archive = etree.fromstring(body, SAFE_PARSER).find(f"{{{ATOM_NS}}}link[@rel='prev-archive']")
    if archive is not None:  # the newest archive page, in every format
        query = archive.get("href").rsplit("?", 1)[1]
        pages += [f"/feeds/latest/{fmt}?{query}" for fmt in ("rss", "atom", "newsml", "json")]
        CHECKED["archive pages"] += 4
    for path in pages:
        fmt = path.split("/")[3].split("?")[0]
        status, body = http.request(port, "GET", path, None, ADMIN)
        assert status in (200, 204), (path, status, body[:300])
        if status == 204:
            continue
        if fmt == "json":
            errors = json_feed_errors(body)
            assert not errors, (path, errors[:5])
            CHECKED["valid json (JSON Feed 1.1 schema)"] += 1
            continue
        document = etree.fromstring(body, SAFE_PARSER)
        if fmt == "newsml":
            assert schema.validate(document), schema.error_log.last_error
        else:
            errors = errors_for(fmt, body, f"http://127.0.0.1:{port}{path}")
            assert not errors, (path, errors[:5])
            CHECKED[f"valid {fmt}" + (" (W3C too)" if w3c_available() else "")] += 1
    status, body = http.request(port, "GET", f"/items/{article_id}/newsml", None, ADMIN)
    assert status in (200, 404), (status, body[:300])  # 404: under embargo or withheld
    if status == 200:
        assert schema.validate(etree.fromstring(body, SAFE_PARSER)), schema.error_log.last_error


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
@given(document=documents())
def test_no_document_breaks_a_feed(server, schema, document):
    port = server
    if document["versionCreated"] == FRESH:
        document = {**document, "versionCreated": datetime.now(UTC).isoformat()}
    article_id = article_id_for_uri(document["uri"])
    before = _versions(port, article_id)
    status, body = http.request(port, "POST", "/api/articles?signal=update", json.dumps(document).encode(), PUBLISH)
    if status == 404:  # the first revision of this uri: no signal
        status, body = http.request(port, "POST", "/api/articles", json.dumps(document).encode(), PUBLISH)
    assert status != 0, "no answer"
    assert status < 500, body[:500]
    OUTCOMES[str(status)] += 1
    if status >= 400:
        assert body and orjson.loads(body)["status"] == status  # a problem document
        assert _versions(port, article_id) == before  # a refusal changes nothing
        return
    _check_feeds(port, schema, article_id)
