"""ninjs 1.x to ninjs 3.x: the conversion of a document already checked against the IPTC 1.4 schema.

ninjs 1.x (IPTC 1.0 to 1.4, and the shape Superdesk's ninjs formatters emit) names its properties in
lowercase like 2.x, but holds a plain ``headline``, ``body_<format>`` and ``description_<format>``
strings, singular concept lists (``subject``, ``place``, ...) whose entries carry ``code`` and
``scheme``, and ``renditions``, ``associations`` and ``altids`` as objects keyed by name. 3.x holds
arrays of objects instead. :func:`to_ninjs3` builds the 3.x document the rest of the server reads; what
has no 3.x home is not dropped but returned as ``leftovers``: JSON pointer into the 1.x document
(as sent) to its value, which the store keeps beside the revision (its ``extra``).

The table of what maps where is in ``docs/superdesk.md``. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Same meaning, new name (or the same name) in 3.x.
RENAMED = {
    "uri": "uri", "type": "type", "representationtype": "representationType", "profile": "profile",
    "version": "version", "firstcreated": "firstCreated", "versioncreated": "versionCreated",
    "contentcreated": "contentCreated", "embargoed": "embargoedUntil", "expires": "expires",
    "pubstatus": "pubStatus", "copyrightholder": "copyrightHolder", "copyrightnotice": "copyrightNotice",
    "usageterms": "usageTerms", "ednote": "edNote", "language": "language", "title": "title", "byline": "by",
    "slugline": "slugline", "located": "located",
}
# Lists of concepts: 1.x name -> 3.x name.
CONCEPTS = {
    "subject": "subjects", "place": "places", "person": "people", "organisation": "organisations",
    "event": "events", "object": "objects", "genre": "genres", "infosource": "infoSources",
}
BODY_TYPES = {"body_text": "text/plain", "body_html": "text/html", "body_xhtml": "application/xhtml+xml"}
DESCRIPTION_TYPES = {"description_text": "text/plain", "description_html": "text/html",
                     "description_xhtml": "application/xhtml+xml"}
RENDITION_FIELDS = {"href": "href", "mimetype": "contentType", "title": "title", "width": "width",
                    "height": "height", "sizeinbytes": "sizeInBytes", "duration": "duration", "format": "format"}
RENDITION_INTEGERS = frozenset({"width", "height", "sizeinbytes"})
RIGHTS_FIELDS = {"langid": "langId", "linkedrights": "linkedRights", "encodedrights": "encodedRights"}
MEDIA_TYPES = frozenset({"picture", "graphic", "video", "audio"})
_ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")


@dataclass(frozen=True, slots=True)
class Converted:
    """A 3.x document, and what of the 1.x document has no home in it (pointer -> value)."""

    document: dict[str, Any]
    leftovers: dict[str, Any]


def to_ninjs3(document: Mapping[str, Any]) -> Converted:
    """The 3.x form of a checked 1.x document (see the module docstring)."""
    leftovers: dict[str, Any] = {}
    return Converted(_item(document, "", leftovers), leftovers)


def is_absolute_uri(value: str) -> bool:
    return bool(_ABSOLUTE_URI.match(value))


def pointer(base: str, name: str | int) -> str:
    return f"{base}/{str(name).replace('~', '~0').replace('/', '~1')}"


def _item(doc: Mapping[str, Any], base: str, leftovers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    headlines: list[dict[str, Any]] = []
    bodies: dict[str, dict[str, Any]] = {}
    descriptions: list[dict[str, Any]] = []
    media = doc.get("type") in MEDIA_TYPES  # a picture's description is its caption
    for key, value in doc.items():
        here = pointer(base, key)
        if key in RENAMED:
            out[RENAMED[key]] = value
        elif key == "urgency":
            _integer(out, "urgency", value, here, leftovers)
        elif key == "headline":
            headlines.insert(0, {"role": "main", "value": value})
        elif key.startswith("headline_"):
            headlines.append({"role": key.removeprefix("headline_"), "value": value})
        elif key in BODY_TYPES:
            bodies[key] = {"contentType": BODY_TYPES[key], "value": value}
        elif key in DESCRIPTION_TYPES:
            descriptions.append({"role": "caption" if media else "summary", "contentType": DESCRIPTION_TYPES[key],
                                 "value": value})
        elif key in CONCEPTS and isinstance(value, list):
            out[CONCEPTS[key]] = [_concept(entry, pointer(here, i), CONCEPTS[key], leftovers)
                                  for i, entry in enumerate(value) if isinstance(entry, dict)]
        elif key == "renditions" and isinstance(value, dict):
            out["renditions"] = [_rendition(name, entry, pointer(here, name), leftovers)
                                 for name, entry in value.items() if isinstance(entry, dict)]
        elif key == "associations" and isinstance(value, dict):
            out["associations"] = [{"name": name, **_item(entry, pointer(here, name), leftovers)}
                                   for name, entry in value.items() if isinstance(entry, dict)]
        elif key == "altids" and isinstance(value, dict):
            out["altIds"] = [{"role": role, "value": id_} for role, id_ in value.items() if isinstance(id_, str)]
            leftovers.update({pointer(here, r): v for r, v in value.items() if not isinstance(v, str)})
        elif key == "trustindicator" and isinstance(value, list):
            out["trustIndicators"] = [_trust_indicator(entry, pointer(here, i), leftovers)
                                      for i, entry in enumerate(value) if isinstance(entry, dict)]
        elif key == "rightsinfo" and isinstance(value, dict):
            out["rightsInfo"] = {RIGHTS_FIELDS[k]: v for k, v in value.items() if k in RIGHTS_FIELDS}
            leftovers.update({pointer(here, k): v for k, v in value.items() if k not in RIGHTS_FIELDS})
        elif key not in ("charcount", "wordcount"):
            leftovers[here] = value  # mimetype, $standard, other body_/description_ formats, extensions
    if headlines:
        out["headlines"] = headlines
    if descriptions:
        # The plain text first: readers of a summary or caption take the first of its role.
        out["descriptions"] = sorted(descriptions, key=lambda d: d["contentType"] != "text/plain")
    if bodies:
        ordered = [bodies[k] for k in ("body_html", "body_xhtml", "body_text") if k in bodies]
        _counts(doc, ordered[0], base, leftovers)
        out["bodies"] = ordered
    else:
        for name in ("charcount", "wordcount"):
            if name in doc:
                leftovers[pointer(base, name)] = doc[name]
    return out


def _counts(doc: Mapping[str, Any], body: dict[str, Any], base: str, leftovers: dict[str, Any]) -> None:
    """1.x counts the article's words and characters; 3.x counts those of a body: the main one."""
    for old, new in (("charcount", "charCount"), ("wordcount", "wordCount")):
        if old in doc:
            _integer(body, new, doc[old], pointer(base, old), leftovers)


def _integer(out: dict[str, Any], name: str, value: Any, here: str, leftovers: dict[str, Any]) -> None:
    """1.x numbers that 3.x holds as integers; a fraction has no home and is kept as it was."""
    if isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer():
        out[name] = int(value)
    else:
        leftovers[here] = value


def _concept(entry: Mapping[str, Any], here: str, target: str, leftovers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    code = entry.get("code")
    for key, value in entry.items():
        if key == "name":
            out["name"] = value
        elif key == "rel" and target == "infoSources":
            out["role"] = value
        elif key == "rel" and target != "genres":
            out["rel"] = value
        elif key == "code" and isinstance(value, str):
            out["literal"] = value
        elif key == "symbols" and target == "organisations" and isinstance(value, list):
            out["symbols"] = [_symbol(s, pointer(pointer(here, key), i), leftovers)
                              for i, s in enumerate(value) if isinstance(s, dict)]
        elif key == "scheme" and concept_uri(value, code) is not None:
            out["uri"] = concept_uri(value, code)
        else:
            leftovers[pointer(here, key)] = value  # geometry_*, a scheme without a code, extensions
    return out


def _symbol(entry: Mapping[str, Any], here: str, leftovers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "ticker":
            out["symbol"] = value
        elif key == "exchange":
            out["exchange"] = value
        else:
            leftovers[pointer(here, key)] = value
    return out


def _rendition(name: str, entry: Mapping[str, Any], here: str, leftovers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    for key, value in entry.items():
        if key in RENDITION_INTEGERS:
            _integer(out, RENDITION_FIELDS[key], value, pointer(here, key), leftovers)
        elif key in RENDITION_FIELDS:
            out[RENDITION_FIELDS[key]] = value
        else:
            leftovers[pointer(here, key)] = value  # e.g. Superdesk's poi and media
    return out


def _trust_indicator(entry: Mapping[str, Any], here: str, leftovers: dict[str, Any]) -> dict[str, Any]:
    """3.x names a trust indicator's kind by a URI (``role``): its scheme's URI and its code."""
    out: dict[str, Any] = {}
    role = concept_uri(entry.get("scheme"), entry.get("code"))
    if role is not None:
        out["role"] = role
    for key, value in entry.items():
        if key in ("title", "href"):
            out[key] = value
        elif role is None or key not in ("scheme", "code"):
            leftovers[pointer(here, key)] = value
    return out


def concept_uri(scheme: Any, code: Any) -> str | None:
    """A concept's URI: its scheme's URI followed by its code (so IPTC NewsCodes work); None unless the
    scheme is an absolute URI and the code a string."""
    if not (isinstance(scheme, str) and isinstance(code, str) and is_absolute_uri(scheme)):
        return None
    return scheme + code if scheme.endswith(("/", "#", ":")) else f"{scheme}/{code}"
