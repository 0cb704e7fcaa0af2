"""Time and number helpers every layer uses: UTC now, RFC 3339 text, whole numbers from requests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


def whole_number(text: str | None, max_digits: int = 18) -> int | None:
    """``text`` as a whole number if it is 1 to ``max_digits`` ASCII digits, else None. (``str.isdigit``
    alone admits digits ``int`` refuses, such as "²", and ``int`` refuses more than 4,300 digits.)"""
    if text is None or not 0 < len(text) <= max_digits or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def iso(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, microseconds only when present."""
    if moment is None:
        return None
    text = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


@overload
def parse_iso(text: str) -> datetime: ...
@overload
def parse_iso(text: None) -> None: ...
@overload
def parse_iso(text: str | None) -> datetime | None: ...
def parse_iso(text: str | None) -> datetime | None:
    """An RFC 3339 date-time (``Z`` or ``z``, or an offset) in UTC; ValueError if it is not one, has no
    timezone, or falls outside the years 1 to 9999 once in UTC."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is outside the years 1 to 9999 in UTC") from None
