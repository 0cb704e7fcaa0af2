"""Offline validity checks for the RSS and Atom documents the server makes (issue 12).

The W3C Feed Validation Service is not on PyPI, so nothing the suite installs can run it. What runs
instead, always and offline:

- **Atom** (:func:`atom_errors`): RFC 4287's Appendix B schema, written out as RELAX NG
  (``tests/schemas/atom-rfc4287.rng``), plus the rules of the RFC that the schema cannot say (its
  Schematron rules and the prose's MUSTs): an author for every entry, at most one ``alternate`` link
  per type and hreflang, content or an alternate link, a summary beside out-of-line content, an
  absolute IRI as ``atom:id``, RFC 3339 dates, a non-empty category term.
- **RSS 2.0** (:func:`rss_errors`): the RSS 2.0 specification's rules as the W3C validator applies
  them: one ``channel`` with one ``title``, ``link`` and ``description``; only elements the
  specification defines (or namespaced ones); each item a title or a description and at most one of
  each element; RFC 822 dates with a four-digit year; a ``guid`` that is a URL unless
  ``isPermaLink="false"``; enclosures with url, length and type; well-formed language tags
  (``language``, ``dc:language``); ``atom:link`` with ``href`` and ``rel``.

And, when a copy of the W3C validator is at hand (``SYNDICATE_FEEDVALIDATOR`` names its ``src``
directory, or ``feedvalidator`` is importable): :func:`w3c_errors`, its errors at the "A" level (what
the online service reports as errors); None when there is none.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from email.utils import parsedate_to_datetime
from functools import cache
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

from lxml import etree

ATOM_NS = "http://www.w3.org/2005/Atom"
DC_NS = "http://purl.org/dc/elements/1.1/"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
RNG = Path(__file__).resolve().parent / "schemas" / "atom-rfc4287.rng"
PARSER = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
LANGUAGE_TAG = re.compile(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
RFC822 = re.compile(r"((Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                    r"\d{4} \d\d:\d\d(:\d\d)? ([+-]\d{4}|GMT|UT|[ECMP][SD]T|Z)")
RSS_CHANNEL = {"title", "link", "description", "language", "copyright", "managingEditor", "webMaster", "pubDate",
               "lastBuildDate", "category", "generator", "docs", "cloud", "ttl", "image", "rating", "textInput",
               "skipHours", "skipDays", "item"}
RSS_ITEM = {"title", "link", "description", "author", "category", "comments", "enclosure", "guid", "pubDate",
            "source"}
RSS_ONCE = {"title", "link", "description", "author", "comments", "guid", "pubDate", "source", "enclosure"}


@cache
def _atom_schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(RNG), PARSER))


def _parse(data: bytes) -> etree._Element | str:
    try:
        return etree.fromstring(data, PARSER)
    except etree.XMLSyntaxError as exc:
        return f"not well-formed: {exc}"


def atom_errors(data: bytes) -> list[str]:
    """Why ``data`` is not a valid Atom feed or entry document (empty: valid)."""
    root = _parse(data)
    if isinstance(root, str):
        return [root]
    schema = _atom_schema()
    errors = [] if schema.validate(root) else [f"RFC 4287 schema: {e.message} (line {e.line})"
                                                  for e in schema.error_log]
    a = f"{{{ATOM_NS}}}"
    entries = [root] if root.tag == f"{a}entry" else root.findall(f"{a}entry")
    feed_has_author = root.tag == f"{a}feed" and root.find(f"{a}author") is not None
    for container in ([root] if root.tag == f"{a}feed" else []) + entries:
        where = "feed" if container.tag == f"{a}feed" else f"entry {container.findtext(f'{a}id')!r}"
        alternates = [(link.get("type"), link.get("hreflang")) for link in container.findall(f"{a}link")
                      if link.get("rel", "alternate") == "alternate"]
        if len(alternates) != len(set(alternates)):
            errors.append(f"{where}: more than one alternate link with the same type and hreflang")
        identifier = container.findtext(f"{a}id") or ""
        if not urlsplit(identifier).scheme:
            errors.append(f"{where}: atom:id {identifier!r} is not an absolute IRI")
        for name in ("updated", "published"):
            value = container.findtext(f"{a}{name}")
            if value is not None and not RFC3339.fullmatch(value):
                errors.append(f"{where}: atom:{name} {value!r} is not an RFC 3339 date-time")
        for category in container.findall(f"{a}category"):
            if not (category.get("term") or "").strip():
                errors.append(f"{where}: a category without a term")
        for link in container.findall(f"{a}link"):
            if not _iri(link.get("href", "")):
                errors.append(f"{where}: link href {link.get('href')!r} is not an IRI")
    for entry in entries:
        where = f"entry {entry.findtext(f'{a}id')!r}"
        if not feed_has_author and entry.find(f"{a}author") is None and entry.find(f"{a}source/{a}author") is None:
            errors.append(f"{where}: no atom:author, and the feed has none")
        content = entry.find(f"{a}content")
        has_alternate = any(link.get("rel", "alternate") == "alternate" for link in entry.findall(f"{a}link"))
        if content is None and not has_alternate:
            errors.append(f"{where}: neither atom:content nor an alternate link")
        if content is not None and entry.find(f"{a}summary") is None:
            kind = content.get("type", "text")
            textual = kind in ("text", "html", "xhtml") or kind.startswith("text/") or kind.endswith(("+xml", "/xml"))
            if content.get("src") is not None or not textual:
                errors.append(f"{where}: content is out of line or not text, and there is no atom:summary")
    return errors


def rss_errors(data: bytes) -> list[str]:
    """Why ``data`` is not a valid RSS 2.0 document (empty: valid)."""
    root = _parse(data)
    if isinstance(root, str):
        return [root]
    if root.tag != "rss" or root.get("version") != "2.0":
        return [f"the root is <{root.tag} version={root.get('version')!r}>, not <rss version=\"2.0\">"]
    channels = root.findall("channel")
    if len(channels) != 1:
        return [f"{len(channels)} channel elements"]
    channel = channels[0]
    errors = _unknown_or_repeated(channel, RSS_CHANNEL, {"title", "link", "description", "language", "pubDate",
                                                          "lastBuildDate", "generator", "docs", "ttl"}, "channel")
    for name in ("title", "link", "description"):
        if channel.find(name) is None:
            errors.append(f"channel: no {name}")
    errors += _url("channel link", channel.findtext("link"))
    errors += _language("channel language", channel.findtext("language"))
    for name in ("pubDate", "lastBuildDate"):
        errors += _rfc822(f"channel {name}", channel.findtext(name))
    for link in channel.findall(f"{{{ATOM_NS}}}link"):
        if not link.get("href") or not link.get("rel"):
            errors.append("channel: an atom:link without href or rel")
        errors += _url(f"atom:link rel={link.get('rel')!r}", link.get("href"))
    for position, item in enumerate(channel.findall("item"), 1):
        where = f"item {position}"
        errors += _unknown_or_repeated(item, RSS_ITEM, RSS_ONCE, where)
        if item.find("title") is None and item.find("description") is None:
            errors.append(f"{where}: neither a title nor a description")
        errors += _url(f"{where} link", item.findtext("link"))
        errors += _rfc822(f"{where} pubDate", item.findtext("pubDate"))
        guid = item.find("guid")
        if guid is not None:
            permalink = guid.get("isPermaLink", "true")
            if permalink not in ("true", "false"):
                errors.append(f"{where}: guid isPermaLink={permalink!r}")
            if not (guid.text or "").strip():
                errors.append(f"{where}: an empty guid")
            elif permalink == "true":
                errors += _url(f"{where} guid (a permalink)", guid.text)
        for enclosure in item.findall("enclosure"):
            if not (enclosure.get("url") and enclosure.get("type") and (enclosure.get("length") or "").isdigit()):
                errors.append(f"{where}: an enclosure without url, type or a whole-number length")
        for language in item.findall(f"{{{DC_NS}}}language"):
            errors += _language(f"{where} dc:language", language.text)
        for updated in item.findall(f"{{{ATOM_NS}}}updated"):
            if not RFC3339.fullmatch(updated.text or ""):
                errors.append(f"{where}: atom:updated {updated.text!r} is not an RFC 3339 date-time")
    return errors


def _unknown_or_repeated(parent: etree._Element, allowed: set[str], once: set[str], where: str) -> list[str]:
    errors, seen = [], set()
    for child in parent:
        if not isinstance(child.tag, str) or child.tag.startswith("{"):
            continue  # comments, and elements of other namespaces (extensions)
        if child.tag not in allowed:
            errors.append(f"{where}: <{child.tag}> is not an RSS 2.0 element here")
        if child.tag in once and child.tag in seen:
            errors.append(f"{where}: more than one <{child.tag}>")
        seen.add(child.tag)
    return errors


def _url(what: str, value: str | None) -> list[str]:
    if value is None:
        return []
    parts = urlsplit(value.strip())
    return [] if parts.scheme in ("http", "https") and parts.netloc and _iri(value) else [f"{what}: {value!r} is not a URL"]


def _iri(value: str) -> bool:
    return bool(value) and not any(c.isspace() or ord(c) < 0x20 or c in '<>"{}|\\^`' for c in value)


def _language(what: str, value: str | None) -> list[str]:
    if value is None or LANGUAGE_TAG.fullmatch(value):
        return []
    return [f"{what}: {value!r} is not a language tag"]


def _rfc822(what: str, value: str | None) -> list[str]:
    if value is None:
        return []
    try:
        parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return [f"{what}: {value!r} is not an RFC 822 date"]
    return [] if RFC822.fullmatch(value.strip()) else [f"{what}: {value!r} is not an RFC 822 date with a 4-digit year"]


# ----- the W3C validator, when a copy is at hand ------------------------------------------------------

@cache
def _w3c() -> ModuleType | None:
    path = os.environ.get("SYNDICATE_FEEDVALIDATOR")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        return importlib.import_module("feedvalidator")
    except ImportError:
        return None


def w3c_available() -> bool:
    return _w3c() is not None


def w3c_errors(data: bytes, url: str) -> list[str] | None:
    """The W3C feed validator's errors for ``data`` served at ``url``; None when it is not installed."""
    validator = _w3c()
    if validator is None:
        return None
    compatibility = importlib.import_module("feedvalidator.compatibility")
    try:
        events = validator.validateString(data, firstOccurrenceOnly=1, base=url)["loggedEvents"]
    except validator.logging.ValidationFailure as failure:
        events = [failure.event]
    return [f"{type(event).__name__}: {event.params}" for event in compatibility.A(events)]


def errors_for(fmt: str, data: bytes, url: str = "https://feeds.example.org/feed") -> list[str]:
    """Every check that applies to a document in ``fmt`` (rss or atom): ours, and the W3C's if at hand."""
    errors = atom_errors(data) if fmt == "atom" else rss_errors(data)
    return errors + (w3c_errors(data, url) or [])


JSON_FEED_SCHEMA = Path(__file__).resolve().parent / "schemas" / "jsonfeed-1.1.json"


@cache
def _json_feed_validator():  # type: ignore[no-untyped-def]
    import jsonschema
    import orjson

    schema = orjson.loads(JSON_FEED_SCHEMA.read_bytes())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def json_feed_errors(data: bytes) -> list[str]:
    """A JSON Feed 1.1 document against the schema written for the tests from the specification
    (tests/schemas/jsonfeed-1.1.json): each fault with its JSON path."""
    import orjson

    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return [f"not JSON: {exc}"]
    return [f"{error.json_path}: {error.message}" for error in _json_feed_validator().iter_errors(document)]
