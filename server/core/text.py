"""What every string we store or emit must be: free of the characters XML 1.0 forbids (all the C0
controls but tab, newline and carriage return; lone surrogates; U+FFFE and U+FFFF), and, for the fields
the formats restrict to one line (NewsML-G2's ``g2normalizedString``: names, slugline, creditline),
without tabs or newlines. Ingest cleans with these after every transformation, and the renderers
clean again with them, so no stored value can make a feed ill-formed."""

from __future__ import annotations

import re

XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def scrub_xml(text: str) -> tuple[str, int]:
    """``text`` without the characters XML forbids, and how many were removed."""
    return XML_FORBIDDEN.subn("", text)


def xml_safe(text: str) -> str:
    return XML_FORBIDDEN.sub("", text) if XML_FORBIDDEN.search(text) else text


def single_line(text: str) -> str:
    """Runs of whitespace (tabs and newlines included) as one space, trimmed."""
    return " ".join(text.split())
