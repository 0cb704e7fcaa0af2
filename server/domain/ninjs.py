"""Reading a CMS's ninjs document: parse, check, clean and normalise it into one internal form.

Accepts IPTC ninjs 3.x (camelCase property names), 2.x (lowercase) and 1.x (lowercase, with a plain
``headline``, ``body_*`` strings and objects keyed by name), each checked against our profile
(``schemas/ninjs-profile-3.json`` / ``-2.json`` / ``-1.json``: the official IPTC schema plus our own
rules). A 2.x document is renamed to 3.x names and a 1.x document converted (:mod:`server.domain.ninjs1`),
so the rest of the server sees one shape; what of a 1.x document has no 3.x home is kept as the
revision's ``extra`` (JSON pointer -> value), never dropped silently. Characters XML 1.0 forbids
are removed (and counted) so that no feed can ever be malformed, HTML bodies are sanitised with nh3,
and the fields the formats hold on one line (:data:`ONE_LINE_FIELDS`) are put on one line, last, on
the form that is stored.

Every problem raises :class:`DocumentError`, which names the field as a JSON pointer.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nh3
import orjson

from server.core.text import scrub_xml, single_line
from server.core.values import parse_iso
from server.domain import ninjs1

if TYPE_CHECKING:  # jsonschema is imported on the first validation: with its format checkers it takes
    # seconds to import (rfc3987-syntax builds a grammar), which every CLI command would otherwise pay.
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
MAX_DEPTH = 32
MAX_REPORTED_ERRORS = 20

# ninjs 2.x property names and their 3.x equivalents (3.0 renamed them to camelCase; ``embargoed``
# became ``embargoedUntil``). Names that are the same in both are not listed.
NAMES_2_TO_3 = {
    "altids": "altIds", "charcount": "charCount", "contactinfo": "contactInfo",
    "contentcreated": "contentCreated", "contenttype": "contentType", "copyrightholder": "copyrightHolder",
    "copyrightnotice": "copyrightNotice", "digitalsourcetype": "digitalSourceType", "ednote": "edNote",
    "embargoed": "embargoedUntil", "encodedrights": "encodedRights", "firstcreated": "firstCreated",
    "geojson": "geoJSON", "infosources": "infoSources", "langid": "langId", "linkedrights": "linkedRights",
    "postalcode": "postalCode", "pubstatus": "pubStatus", "representationtype": "representationType",
    "rightsinfo": "rightsInfo", "sizeinbytes": "sizeInBytes", "symboltype": "symbolType",
    "trustindicators": "trustIndicators", "usageterms": "usageTerms", "versioncreated": "versionCreated",
    "wordcount": "wordCount",
}
NAMES_3_TO_2 = {v: k for k, v in NAMES_2_TO_3.items()}

# Top-level names only ninjs 1.x has (2.x and 3.x hold lists of objects under other names), and the
# prefixes of its open-ended string properties.
NAMES_1_ONLY = frozenset({"headline", "byline", "subject", "place", "person", "organisation", "event", "object",
                          "infosource", "genre", "trustindicator", "mimetype", "$standard"})
PREFIXES_1_ONLY = ("body_", "description_", "headline_")
KEYED_IN_1 = ("renditions", "associations", "altids")  # objects keyed by name in 1.x, arrays after

# XML 1.0 allows tab, LF, CR, U+0020-U+D7FF, U+E000-U+FFFD and U+10000-U+10FFFF; everything else goes.

HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml", "body_xhtml")

# The fields the formats hold on one line, in the document and in each of its associations (a picture is
# a ninjs object too). NewsML-G2 writes them as g2normalizedString (the XSD's ``[\S ]*``: no tab, no
# newline): the slugline as ``slugline``, the copyright holder as ``copyrightHolder/@literal``, its
# ``name`` and the ``creditline``, a picture's ``by`` (its credit) as ``creditline`` and the provider's
# ``name``, subjects' and places' names as ``name`` and their literal codes as ``@literal``; and every
# format shows ``by`` as a person's name (Atom ``author/name``, RSS ``dc:creator``, JSON Feed
# ``authors[].name``). Headlines, descriptions, the edNote and the usage terms are not among them: no
# format limits them to one line (NewsML-G2's Label1Type and BlockType, Atom text constructs).
ONE_LINE_FIELDS = ("slugline", "by", "copyrightHolder")
ONE_LINE_CONCEPTS = ("subjects", "places")  # lists of concepts whose ``name`` and ``literal`` are one line
ONE_LINE_CONCEPT_FIELDS = ("name", "literal")


class DocumentError(Exception):
    """The document cannot be accepted. ``errors`` holds ``{"pointer", "detail"}`` dicts."""

    def __init__(self, detail: str, errors: list[dict[str, str]] | None = None, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.status = status


@dataclass(frozen=True, slots=True)
class IncomingDocument:
    """A checked, cleaned ninjs document in 3.x form, ready to be stored as a revision's body.

    ``extra``: what the CMS sent that has no home in ninjs 3.x (JSON pointer into the document as
    sent -> value), stored beside the document and hashed with it; None when there is nothing."""

    document: dict[str, Any]
    dialect: str  # "3", "2" or "1": what the CMS sent
    removed_characters: int
    content_hash: str
    extra: dict[str, Any] | None = None

    @property
    def uri(self) -> str:
        return str(self.document["uri"])


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Bytes to a JSON object, or a DocumentError saying exactly what is wrong with them."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"The body is not valid UTF-8 (byte {exc.start}).") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants,
                           parse_int=_int64)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"Malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}.") from None
    except RecursionError:
        raise DocumentError(f"The JSON is nested too deeply (at most {MAX_DEPTH} levels).") from None
    except ValueError as exc:  # raised by the hooks below
        raise DocumentError(str(exc)) from None
    if not isinstance(value, dict):
        raise DocumentError(f"Expected a JSON object (a ninjs document), got {type(value).__name__}.",
                            [{"pointer": "", "detail": "must be an object"}])
    _check_depth(value)
    return value


def read_document(value: dict[str, Any], *, dialect: str | None = None, keep_unknown: bool = False,
                  extra: dict[str, Any] | None = None, article: bool = True) -> IncomingDocument:
    """Check a parsed ninjs document against our profile and return it normalised to 3.x.

    The adapters of a CMS (:mod:`server.domain.superdesk`) name the ``dialect``, keep fields the
    schema does not know (``keep_unknown``: they go to ``extra`` instead of being refused), add their
    own ``extra``, and read items that are not articles (``article=False``: a picture, checked against
    the plain IPTC schema)."""
    dialect = dialect or detect_dialect(value)
    cleaned, removed = scrub_xml_forbidden(value)
    errors = _schema_errors(cleaned, dialect if article else f"{dialect}-any", keep_unknown=keep_unknown)
    if errors:
        raise DocumentError(_dialect_note(cleaned, dialect) + summary(errors), errors, status=422)
    leftovers = dict(extra or {})
    if dialect == "1":
        converted = ninjs1.to_ninjs3(cleaned)
        document = converted.document
        leftovers.update(converted.leftovers)
        errors = _schema_errors(document, "3" if article else "3-any")
        if errors:  # our conversion's fault, never the CMS's: say what came out
            raise DocumentError("The ninjs 1.x document converts to a ninjs 3.x document that is not valid: "
                                + summary(errors), errors, status=422)
    else:
        document = cleaned if dialect == "3" else rename_keys(cleaned, NAMES_2_TO_3)
    _check_moments(document)
    # The sanitiser decodes character references (``&#x1;``): clean again, on the form that is stored.
    document, removed_after = scrub_xml_forbidden(sanitise_bodies(document))
    document = one_line_fields(document)
    kept = leftovers or None
    return IncomingDocument(document, dialect, removed + removed_after, content_hash(document, kept), kept)


def _dialect_note(document: dict[str, Any], dialect: str) -> str:
    if dialect != "1":
        return ""
    note = "This is ninjs 1.x (read against the IPTC 1.4 schema and converted to 3.x); "
    if "guid" in document and "uri" not in document:
        note += ("it looks like Superdesk's ninjs: push it to POST /api/superdesk/items, signed with the "
                 "destination's secret (docs/superdesk.md); ")
    return note


def summary(errors: list[dict[str, str]]) -> str:
    """The problem's one-line detail: the first error, and how many more ``errors`` lists."""
    first = errors[0]
    where = first["pointer"] or "the document"
    more = f" (and {len(errors) - 1} more, each in errors)" if len(errors) > 1 else ""
    return f"{where}: {first['detail']}{more}"


MOMENT_FIELDS = ("versionCreated", "firstCreated", "contentCreated", "embargoedUntil")


def _check_moments(document: dict[str, Any]) -> None:
    """The date-times the store reads must be ones it can hold (the schema's format check admits years
    that leave 1 to 9999 once converted to UTC)."""
    for name in MOMENT_FIELDS:
        value = document.get(name)
        if isinstance(value, str):
            try:
                parse_iso(value)
            except ValueError as exc:
                raise DocumentError(f"/{name}: {exc}", [{"pointer": f"/{name}", "detail": str(exc)}],
                                    status=422) from None


def detect_dialect(value: dict[str, Any]) -> str:
    """"1" when the document uses any 1.x-only name at its top (or an object where 2.x and 3.x hold a
    list), else "2" when it uses any 2.x-only (lowercase) name, else "3"; 3.x names beside 1.x or 2.x
    ones are an error."""
    names = _all_keys(value)
    new = sorted(names & NAMES_3_TO_2.keys())
    first = sorted(k for k in value if k in NAMES_1_ONLY or k.startswith(PREFIXES_1_ONLY)
                   or (k in KEYED_IN_1 and isinstance(value[k], dict)))
    if first:
        if new:
            raise DocumentError(
                f"The document mixes ninjs 1.x names ({', '.join(first[:3])}) with 3.x names "
                f"({', '.join(new[:3])}); send one version.",
                [{"pointer": f"/{first[0]}", "detail": "1.x name in a 3.x document"}], status=422)
        return "1"
    old = sorted(names & NAMES_2_TO_3.keys())
    if old and new:
        raise DocumentError(
            f"The document mixes ninjs 2.x names ({', '.join(old[:3])}) with 3.x names ({', '.join(new[:3])}); "
            "send one version.",
            [{"pointer": f"/{old[0]}", "detail": "2.x name in a 3.x document"}], status=422)
    return "2" if old else "3"


def scrub_xml_forbidden(value: Any) -> tuple[Any, int]:
    """Remove characters XML 1.0 forbids from every string (keys too); return the copy and the count."""
    removed = 0

    def clean(node: Any) -> Any:
        nonlocal removed
        if isinstance(node, str):
            cleaned, count = scrub_xml(node)
            removed += count
            return cleaned
        if isinstance(node, dict):
            cleaned_dict = {clean(k): clean(v) for k, v in node.items()}
            if len(cleaned_dict) != len(node):
                raise DocumentError("Two keys of one object differ only by characters XML forbids.",
                                    [{"pointer": "", "detail": "duplicate key after cleaning"}])
            return cleaned_dict
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return clean(value), removed


def one_line_fields(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with each of :data:`ONE_LINE_FIELDS` (and the names and literals of its subjects and
    places) on one line: every run of whitespace, tabs and newlines included, as one space, trimmed; a
    field left blank is dropped, as absent. The same in each association, at any depth. What is stored
    (and hashed) is this form, so a retry that differs only there is recognised as the same document."""
    cleaned = _one_line(document, ONE_LINE_FIELDS)
    for name in ONE_LINE_CONCEPTS:
        concepts = cleaned.get(name)
        if isinstance(concepts, list):
            cleaned[name] = [_one_line(c, ONE_LINE_CONCEPT_FIELDS) if isinstance(c, dict) else c for c in concepts]
    associations = cleaned.get("associations")
    if isinstance(associations, list):
        cleaned["associations"] = [one_line_fields(a) if isinstance(a, dict) else a for a in associations]
    return cleaned


def _one_line(node: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    cleaned = dict(node)
    for name in fields:
        value = cleaned.get(name)
        if isinstance(value, str):
            line = single_line(value)
            if line:
                cleaned[name] = line
            else:
                del cleaned[name]
    return cleaned


def rename_keys(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {names.get(k, k): rename_keys(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [rename_keys(v, names) for v in value]
    return value


# nh3's defaults, plus the direction and language of any element (an Arabic quote in an English story).
_BODY_ATTRIBUTES = {**nh3.ALLOWED_ATTRIBUTES, "*": {"dir", "lang"}}


def sanitise_html(html: str) -> str:
    """No script, no event handlers, no ``javascript:`` URLs: nh3's defaults, which allow figure,
    figcaption and img (the seed article's inline photo)."""
    return nh3.clean(html, attributes=_BODY_ATTRIBUTES)


_PICTURE_TAGS = frozenset({"img", "figure", "figcaption", "picture", "source", "map", "area"})


@lru_cache(maxsize=2048)
def without_pictures(html: str) -> str:
    """A sanitised HTML body with its pictures gone, and their captions and credits with them (the
    whole ``figure``): what a partner without photo rights gets."""
    return nh3.clean(html, tags=set(nh3.ALLOWED_TAGS) - _PICTURE_TAGS, attributes=_BODY_ATTRIBUTES,
                     clean_content_tags={"figure", "picture", "map"})


def document_without_pictures(document: dict[str, Any]) -> dict[str, Any]:
    """The ninjs document for a partner without photo rights: no associations, no picture in a body."""
    bodies = [{**body, "value": without_pictures(body["value"])}
              if body.get("contentType", "text/html") in HTML_CONTENT_TYPES and isinstance(body.get("value"), str)
              else body for body in document.get("bodies") or ()]
    stripped = {k: v for k, v in document.items() if k != "associations"}
    if bodies:
        stripped["bodies"] = bodies
    return stripped


def sanitise_bodies(document: dict[str, Any]) -> dict[str, Any]:
    bodies = document.get("bodies")
    if not bodies:
        return document
    cleaned = []
    for body in bodies:
        if body.get("contentType", "text/html") in HTML_CONTENT_TYPES and isinstance(body.get("value"), str):
            body = {**body, "value": sanitise_html(body["value"])}
        cleaned.append(body)
    return {**document, "bodies": cleaned}


def content_hash(document: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """SHA-256 of the canonical JSON (sorted keys) of the normalised document (and of its ``extra``,
    when there is one: a change only there is a new revision too)."""
    hashed = document if not extra else {"document": document, "extra": extra}
    return "sha256:" + hashlib.sha256(orjson.dumps(hashed, option=orjson.OPT_SORT_KEYS)).hexdigest()


def load_validators() -> None:
    """Build the schema validators now (a server does at start-up, so no request waits for the import)."""
    _validators()


@cache
def _validators() -> dict[str, Draft202012Validator]:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    def load(name: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((SCHEMAS_DIR / name).read_text(encoding="utf-8"))
        return loaded

    official = {"3": "ninjs-schema_3.1.json", "2": "ninjs-schema_2.2.json", "1": "ninjs-schema_1.4.json"}
    registry = Registry().with_resources([
        ("https://geojson.org/schema/GeoJSON.json", Resource.from_contents(load("iptc/GeoJSON-schema.json"))),
        *((f"http://www.iptc.org/std/ninjs/{name}", Resource.from_contents(load(f"iptc/{name}")))
          for name in official.values()),
    ])

    def validator(schema: dict[str, Any]) -> Draft202012Validator:
        return Draft202012Validator(schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)

    # "<dialect>": our profile of an article; "<dialect>-any": the plain IPTC schema (a picture).
    return {
        **{dialect: validator(load(f"ninjs-profile-{dialect}.json")) for dialect in official},
        **{f"{dialect}-any": validator({"$ref": f"http://www.iptc.org/std/ninjs/{name}#"})
           for dialect, name in official.items()},
    }


def _schema_errors(document: dict[str, Any], schema: str, *, keep_unknown: bool = False) -> list[dict[str, str]]:
    """Every unknown field of every object, each with its own pointer (none with ``keep_unknown``),
    then up to ``MAX_REPORTED_ERRORS`` other errors; ordered by pointer."""
    unknown: dict[tuple[str, str], None] = {}
    other: dict[tuple[str, str], None] = {}
    for error in _validators()[schema].iter_errors(document):
        for leaf in _leaves(error):
            if keep_unknown and leaf.validator in UNKNOWN_FIELD_VALIDATORS:
                continue
            found = unknown if leaf.validator in UNKNOWN_FIELD_VALIDATORS else other
            for pointer in _pointers(leaf):
                found.setdefault((pointer, _describe(leaf)), None)
    ordered = sorted(unknown) + sorted(other)[:MAX_REPORTED_ERRORS]
    ordered.sort(key=lambda item: item[0])
    return [{"pointer": p, "detail": d} for p, d in ordered]


def _leaves(error: ValidationError) -> list[ValidationError]:
    """The most specific errors under a combinator error (allOf/oneOf), which name real fields."""
    if not error.context:
        return [error]
    deepest = max(len(e.absolute_path) for e in error.context)
    leaves: list[ValidationError] = []
    for sub in error.context:
        if len(sub.absolute_path) == deepest:
            leaves.extend(_leaves(sub))
    return leaves


UNKNOWN_FIELD_VALIDATORS = ("unevaluatedProperties", "additionalProperties")


def _pointers(error: ValidationError) -> list[str]:
    """The JSON pointer(s) an error is about: one per unknown field, the missing field of a
    ``required``, else the value's own."""
    parts = [_escape(str(p)) for p in error.absolute_path]
    if error.validator in UNKNOWN_FIELD_VALIDATORS:
        names = unknown_fields(error)
        if names:
            return [_join([*parts, _escape(name)]) for name in names]
    if error.validator == "required":
        named = re.findall(r"'([^']*)'", error.message)
        if named:
            parts.append(_escape(named[0]))
    return [_join(parts)]


def unknown_fields(error: ValidationError) -> list[str]:
    """Every field an ``unevaluatedProperties``/``additionalProperties`` error is about (jsonschema
    makes one error per object, naming them all in its message)."""
    instance = error.instance
    if not isinstance(instance, dict):
        return []
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        known = schema.get("properties") or {}
        patterns = list(schema.get("patternProperties") or {})
        return sorted(k for k in instance if k not in known and not any(re.search(p, k) for p in patterns))
    listed = error.message.partition("(")[2]
    return sorted(k for k in instance if repr(k) in listed)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _join(parts: list[str]) -> str:
    return "/" + "/".join(parts) if parts else ""


def _describe(error: ValidationError) -> str:
    if error.validator in UNKNOWN_FIELD_VALIDATORS:
        return "unknown field (ninjs does not define it here)"
    if error.validator == "pattern" and isinstance(error.instance, str):
        if "T" in error.validator_value or "[Tt ]" in error.validator_value:
            return f"{error.instance!r} is not a date-time with seconds and a timezone (RFC 3339)"
        if error.absolute_path and error.absolute_path[-1] == "uri":
            return f"{error.instance!r} is not an absolute URI"
    if error.validator == "format":
        return f"{error.instance!r} is not a valid {error.validator_value}"
    if error.validator == "required":
        return str(error.message).replace(" is a required property", " is required")
    return str(error.message)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"Malformed JSON: the key {key!r} appears twice in one object.")
        result[key] = value
    return result


def _int64(text: str) -> int:
    """JSON integers as the stores and the formats can hold them: signed 64-bit."""
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"The integer {text[:30]}{'...' if len(text) > 30 else ''} is outside the signed 64-bit "
                         "range.")
    return value


def _no_constants(name: str) -> None:
    raise ValueError(f"Malformed JSON: {name} is not a JSON number.")


def _check_depth(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DocumentError(f"The JSON is nested too deeply (at most {MAX_DEPTH} levels).")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _all_keys(value: Any) -> set[str]:
    keys: set[str] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            keys.update(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return keys
