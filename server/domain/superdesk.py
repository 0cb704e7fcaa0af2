"""Superdesk as a CMS, pure: the ``http_push`` signature, and its ninjs items read into ours.

Superdesk's ``http_push`` transmitter POSTs each published item, formatted by its ninjs formatter
(``NINJSFormatter``, or ``NINJS2Formatter`` whose ``version`` is the correction sequence), as JSON, and
signs the raw body with the destination's secret: ``x-superdesk-signature: sha1=<hex HMAC-SHA1>``.
:class:`SuperdeskSecrets` checks that header against every publisher's secret in constant time.

The items are ninjs 1.x plus Superdesk's extensions. :func:`read_item` prepares one for the ninjs 1.x
reader of :mod:`server.domain.ninjs` (``guid`` to ``uri``, ``+0000`` offsets to ``+00:00``, schemes that
are not URIs set aside) and says what it is: a text (an article), a picture or other media (kept
until texts reference it), or a composite package (the text with its pictures). Superdesk's fields with
no home in ninjs 3.x (``priority``, ``service``, ``signal``, ``readtime``, ``extra``, ...) are kept as
the revision's ``extra`` at their JSON pointer. The table is in ``docs/superdesk.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from server.core.settings import Settings, SettingsError
from server.domain.ninjs import DocumentError, IncomingDocument, read_document
from server.domain.ninjs1 import CONCEPTS, MEDIA_TYPES, is_absolute_uri, pointer

SIGNATURE_HEADER = "x-superdesk-signature"
GUID_PREFIX = "urn:superdesk:"  # + the publisher's name + ":" + the guid, percent-encoded
CORRECTION = "correction"
CANCELED = "canceled"
# Superdesk's date-times (``config.DATE_FORMAT`` = ``%Y-%m-%dT%H:%M:%S+0000``), at every level.
DATE_FIELDS = ("versioncreated", "firstcreated", "contentcreated", "embargoed", "expires", "firstpublished",
               "publish_schedule")
_OFFSET_WITHOUT_COLON = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?)([+-]\d{2})(\d{2})$")
_NO_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?$")
# Superdesk's concept lists (``service`` is its ANPA category, with no ninjs home: kept in extra).
CONCEPT_LISTS = (*CONCEPTS, "service")
REFERENCE_FIELDS = frozenset({"guid", "uri", "type", "label", "version"})  # a package's bare reference


class ItemKind(StrEnum):
    TEXT = "text"
    MEDIA = "media"  # picture, graphic, video, audio
    COMPOSITE = "composite"


# ----- the signature ---------------------------------------------------------------------------------


class SuperdeskSecrets:
    """The publishers that take Superdesk pushes and their destination secrets. Every one must be a
    publisher the settings define (its name is recorded on the revisions it makes)."""

    def __init__(self, settings: Settings) -> None:
        publishers = {t.name for t in settings.publisher_tokens}
        for entry in settings.superdesk_secrets:
            if entry.publisher not in publishers:
                known = ", ".join(sorted(publishers)) or "none"
                raise SettingsError(f"SYNDICATE_SUPERDESK_SECRETS: {entry.publisher!r} is not a publisher of "
                                    f"SYNDICATE_PUBLISHER_TOKENS (publishers: {known})")
        self._entries = [(e.secret.encode("utf-8"), e.publisher) for e in settings.superdesk_secrets]

    @property
    def configured(self) -> bool:
        return bool(self._entries)

    def publisher_for(self, signature: str, body: bytes) -> str | None:
        """The publisher whose secret signed ``body`` so, or None. Every secret is tried, with
        ``hmac.compare_digest``, so timing says nothing about which (or whether one) matched."""
        presented = signature.strip().lower().encode("utf-8", "surrogatepass")
        found: str | None = None
        for secret, publisher in self._entries:
            if hmac.compare_digest(sign(secret, body).encode("ascii"), presented):
                found = publisher
        return found


def sign(secret: bytes, body: bytes) -> str:
    """What ``http_push`` sends: ``sha1=`` and the hex HMAC-SHA1 of the raw body."""
    return "sha1=" + hmac.new(secret, body, hashlib.sha1).hexdigest()


# ----- the items ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reference:
    """One item of a package: its association name, uri and type, and the item itself when the
    destination embeds package items (``packaged``), else None."""

    name: str
    uri: str
    type: str
    item: SuperdeskItem | None


@dataclass(frozen=True, slots=True)
class SuperdeskItem:
    kind: ItemKind
    uri: str
    canceled: bool
    signal: str | None  # "correction", or None (an update)
    ed_note: str | None
    incoming: IncomingDocument | None  # text and media, unless canceled: the checked 3.x document
    references: tuple[Reference, ...] = ()  # composite
    extra: dict[str, Any] | None = None  # composite: its own fields with no home

    @property
    def main_text(self) -> Reference | None:
        """The package's text: the first text of its ``main`` group, else its first text."""
        texts = [r for r in self.references if r.type == ItemKind.TEXT]
        main = [r for r in texts if r.name == "main" or r.name.startswith("main-")]
        chosen = main or texts
        return chosen[0] if chosen else None

    @property
    def media(self) -> tuple[Reference, ...]:
        return tuple(r for r in self.references if r.type in MEDIA_TYPES)


def uri_for_guid(guid: str, publisher: str) -> str:
    """A Superdesk guid that is an absolute URI (``urn:newsml:...``, ``tag:...``) is the uri; any other
    gets ``urn:superdesk:<publisher>:`` in front, percent-encoded."""
    if is_absolute_uri(guid) and len(guid) <= 2048:
        return guid
    return f"{GUID_PREFIX}{quote(publisher, safe='')}:{quote(guid, safe='')}"


def read_item(value: dict[str, Any], publisher: str, *, base: str = "") -> SuperdeskItem:
    """One pushed item, checked and read (DocumentError, 422, for what cannot be)."""
    kind_name = value.get("type")
    if kind_name == "preformatted":
        kind_name = ItemKind.TEXT
    if kind_name not in (ItemKind.TEXT, ItemKind.COMPOSITE, *MEDIA_TYPES):
        raise DocumentError(f"{base}/type: Superdesk items are text, picture, graphic, video, audio or composite, "
                            f"got {kind_name!r}.", [{"pointer": f"{base}/type", "detail": "unknown item type"}],
                            status=422)
    kind = ItemKind.MEDIA if kind_name in MEDIA_TYPES else ItemKind(kind_name)
    uri = _uri(value, publisher, base)
    canceled = value.get("pubstatus") == CANCELED
    signal = CORRECTION if _has_correction_signal(value.get("signal")) else None
    ed_note = value.get("ednote") if isinstance(value.get("ednote"), str) else None
    if kind is ItemKind.COMPOSITE:
        return _composite(value, publisher, uri, canceled, signal, ed_note, base)
    if canceled:  # a kill: nothing of the item is stored (our kill keeps a tombstone)
        return SuperdeskItem(kind, uri, True, signal, ed_note, None)
    extra: dict[str, Any] = {}
    prepared = prepare(value, publisher, "", extra)
    try:
        incoming = read_document(prepared, dialect="1", keep_unknown=True, extra=extra,
                                 article=kind is ItemKind.TEXT)
    except DocumentError as exc:
        raise _under(exc, base) from None
    return SuperdeskItem(kind, uri, False, signal, ed_note, incoming)


def prepare(value: Mapping[str, Any], publisher: str, base: str, extra: dict[str, Any]) -> dict[str, Any]:
    """A Superdesk item (and its associations) as a ninjs 1.x document: ``uri`` from ``guid`` (an altid
    ``guid`` keeps one that was prefixed), date-times with a ``+00:00`` offset (Superdesk's are UTC),
    and concept schemes that are not URIs set aside in ``extra``."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        here = pointer(base, key)
        if key in DATE_FIELDS and isinstance(item, str):
            out[key] = normalise_date(item)
        elif key in CONCEPT_LISTS and isinstance(item, list):
            out[key] = [_concept(entry, pointer(here, i), extra) for i, entry in enumerate(item)]
        elif key == "associations" and isinstance(item, dict):
            out[key] = {name: prepare(entry, publisher, pointer(here, name), extra)
                        for name, entry in item.items() if isinstance(entry, dict)}
        else:
            out[key] = item
    guid = value.get("guid")
    if "uri" not in out and isinstance(guid, str):
        out["uri"] = uri_for_guid(guid, publisher)
        del out["guid"]
        if out["uri"] != guid:
            altids = out.get("altids")
            out["altids"] = {**(altids if isinstance(altids, dict) else {}), "guid": guid}
    return out


def normalise_date(value: str) -> str:
    """``2015-07-23T00:15:00+0000`` -> ``2015-07-23T00:15:00+00:00``; no offset at all -> UTC."""
    found = _OFFSET_WITHOUT_COLON.match(value)
    if found:
        return f"{found[1]}{found[2]}:{found[3]}"
    if _NO_OFFSET.match(value):
        return value + "+00:00"
    return value


def with_media(document: dict[str, Any], media: Mapping[str, dict[str, Any] | None],
               package: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """The document with its media associations filled from ``media`` (uri -> the stored item's 3.x
    document; None: killed, so the association goes), then the package's (name, uri) media it does not
    hold yet appended (a bare reference until the item arrives)."""
    associations: list[dict[str, Any]] = []
    held: set[str] = set()
    for association in document.get("associations") or ():
        uri = association.get("uri")
        if association.get("type") in MEDIA_TYPES and uri in media:
            stored = media[uri]
            if stored is None:
                continue
            association = _associated(association["name"], stored, association.get("rel"))
        held.add(uri)
        associations.append(association)
    for name, uri in package:
        if uri in held or (uri in media and media[uri] is None):
            continue
        stored = media.get(uri)
        associations.append(_associated(name, stored, None) if stored else {"name": name, "uri": uri,
                                                                            "type": "picture"})
        held.add(uri)
    out = {k: v for k, v in document.items() if k != "associations"}
    if associations:
        out["associations"] = associations
    return out


def media_uris(document: Mapping[str, Any]) -> list[str]:
    """The uris of the media a document's associations hold or reference."""
    return [a["uri"] for a in document.get("associations") or ()
            if a.get("type") in MEDIA_TYPES and isinstance(a.get("uri"), str)]


def bare_media(document: Mapping[str, Any]) -> list[str]:
    """The uris of media associations that are only references (no renditions yet)."""
    return [a["uri"] for a in document.get("associations") or ()
            if a.get("type") in MEDIA_TYPES and not a.get("renditions") and isinstance(a.get("uri"), str)]


def _associated(name: str, stored: dict[str, Any], rel: Any) -> dict[str, Any]:
    association = {"name": name, **{k: v for k, v in stored.items() if k not in ("associations", "name")}}
    if isinstance(rel, str):
        association["rel"] = rel
    return association


def _composite(value: dict[str, Any], publisher: str, uri: str, canceled: bool, signal: str | None,
               ed_note: str | None, base: str) -> SuperdeskItem:
    associations = value.get("associations")
    if not isinstance(associations, dict):
        associations = {}
    references = []
    for name, entry in associations.items():
        if not isinstance(entry, dict):
            continue
        here = pointer(pointer(base, "associations"), name)
        kind = entry.get("type", ItemKind.TEXT)
        ref_uri = _uri(entry, publisher, here)
        embedded = bool(set(entry) - REFERENCE_FIELDS) and not canceled
        item = read_item(entry, publisher, base=here) if embedded else None
        references.append(Reference(name, ref_uri, str(kind), item))
    extra = {pointer(base, k): v for k, v in value.items() if k not in ("associations", "guid", "type")}
    return SuperdeskItem(ItemKind.COMPOSITE, uri, canceled, signal, ed_note, None, tuple(references),
                         extra or None)


def _uri(value: Mapping[str, Any], publisher: str, base: str) -> str:
    uri, guid = value.get("uri"), value.get("guid")
    if isinstance(uri, str) and uri:
        return uri
    if isinstance(guid, str) and guid:
        return uri_for_guid(guid, publisher)
    raise DocumentError(f"{base}/guid: a Superdesk item needs its guid.",
                        [{"pointer": f"{base}/guid", "detail": "is required"}], status=422)


def _concept(entry: Any, here: str, extra: dict[str, Any]) -> Any:
    if not isinstance(entry, dict):
        return entry
    scheme = entry.get("scheme")
    if scheme is None or (isinstance(scheme, str) and is_absolute_uri(scheme)):
        return entry
    extra[pointer(here, "scheme")] = scheme  # a Superdesk vocabulary id, not a URI
    return {k: v for k, v in entry.items() if k != "scheme"}


def _has_correction_signal(signals: Any) -> bool:
    return isinstance(signals, list) and any(
        isinstance(s, dict) and isinstance(s.get("code"), str) and s["code"].lower() == CORRECTION for s in signals)


def _under(exc: DocumentError, base: str) -> DocumentError:
    """An error of a package's embedded item, its pointers put under the item's place in the package."""
    if not base:
        return exc
    errors = [{**e, "pointer": base + e["pointer"]} for e in exc.errors]
    return DocumentError(f"{base}: {exc.detail}", errors, status=exc.status)
