"""Logging: one JSON object per line (or readable text with ``SYNDICATE_LOG_FORMAT=text``), a request id
in every line logged while a request is handled, and one access line per request.

The request middleware (:mod:`server.http.middleware`) takes the client's ``X-Request-Id`` when it is sane
(1 to 64 of ``A-Z a-z 0-9 . _ : -``), else makes one, echoes it in the response and keeps it (and the
partner, once its key is recognised) in a context variable that both formatters read. Keys never reach a log: the access line
names the partner, and every line has ``key=`` values in URLs and queries, and anything shaped like a
partner key, replaced by ``[redacted]``.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import IO, Any
from urllib.parse import unquote

import orjson

from server.core.settings import Settings
from server.domain.partners import KEY_PREFIX

REQUEST_ID_HEADER = "X-Request-Id"
access_log = logging.getLogger("syndicate.access")

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# key=<value> in a query or URL, also percent-encoded inside another URL's query (a WebSub topic).
_KEY_IN_URL = re.compile(
    r"(?i)((?:^|(?<=[?&;\s\"'/])|%3F|%26)(?:key|api[_-]?key)(?:=|%3D))(?:%(?!26)[0-9A-Fa-f]{2}|[^&\s\"'#%,])+")
# A partner key anywhere (pasted into a path, a header echoed in an error): its id is kept, not its secret.
_PARTNER_KEY = re.compile(re.escape(KEY_PREFIX) + r"([0-9a-f]{8})_[A-Za-z0-9_-]{16,}")
# The same, percent-encoded in part or whole (``syn%5F...``): the server decodes it, so the log must too.
_ENCODED_PARTNER_KEY = re.compile(r"(?i)syn(?:_|%5F)([0-9a-f]{8})(?:_|%5F)(?:[A-Za-z0-9_-]|%[0-9A-F]{2}){16,}")
# Any query parameter, for names that decode to a key parameter (``k%65y``, ``%6B%65%79``, any case).
_QUERY_PARAMETER = re.compile(r"([?&;])([^=&#\s\"']+)=([^&#\s\"']*)")
_KEY_PARAMETERS = frozenset({"key", "api_key", "api-key", "apikey"})
# A request header that carries a secret, quoted whole (aiohttp's 400 for a malformed request quotes the
# raw header line): its whole value goes. Then any other credential after "Bearer": the admin and
# publisher tokens have no prefix of their own to recognise them by (a partner key there has already
# lost its secret and keeps its id, as everywhere else).
_SECRET_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|(?:set-)?cookie)([ \t]*:[ \t]*)[^\r\n'\"\\]+")
_BEARER = re.compile(
    r"(?i)\b(bearer[ \t]+)(?!realm=|" + re.escape(KEY_PREFIX) + r"[0-9a-f]{8}_\[redacted\])[^\s'\"\\,]+")
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


@dataclass(slots=True)
class RequestContext:
    request_id: str
    partner: str | None = None


current_context: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("syndicate_request", default=None)


def note_partner(name: str) -> None:
    """The request being handled was made with a key of this partner (called by the access check)."""
    context = current_context.get()
    if context is not None:
        context.partner = name


def redact(text: str) -> str:
    """``key=<anything>`` becomes ``key=[redacted]`` (in plain and percent-encoded query strings), a
    partner key anywhere else ``syn_<key id>_[redacted]``, the value of a quoted ``Authorization``,
    ``X-API-Key`` or ``Cookie`` header ``[redacted]``, and ``Bearer <anything>`` ``Bearer [redacted]``."""
    if KEY_PREFIX in text:
        text = _PARTNER_KEY.sub(KEY_PREFIX + r"\1_[redacted]", text)
    lowered = text.lower()
    if "authorization" in lowered or "api-key" in lowered or "cookie" in lowered:
        text = _SECRET_HEADER.sub(r"\1\2[redacted]", text)
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1[redacted]", text)
    if "%" in text:
        text = _ENCODED_PARTNER_KEY.sub(KEY_PREFIX + r"\1_[redacted]", text)
        text = _QUERY_PARAMETER.sub(_redact_encoded_key_parameter, text)
    if "key" not in lowered:
        return text
    return _KEY_IN_URL.sub(r"\1[redacted]", text)


def _redact_encoded_key_parameter(match: re.Match[str]) -> str:
    separator, name, value = match.groups()
    if "%" in name and unquote(name).lower() in _KEY_PARAMETERS and value != "[redacted]":
        return f"{separator}{name}=[redacted]"
    return match.group(0)


# Made request ids: 16 random hex digits for this process, then a 16-digit counter (32 characters in
# all). Unique without asking the operating system for randomness on every request, and cheap to make.
_PROCESS_PREFIX = secrets.token_hex(8)
_request_numbers = itertools.count(10**15)


def request_id_for(presented: str | None) -> str:
    if presented is not None and _sane_request_id(presented):
        return presented
    return _PROCESS_PREFIX + str(next(_request_numbers))


_sane_request_id = _SANE_REQUEST_ID.fullmatch


# ----- formatters ----------------------------------------------------------------------------------


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """``{"timestamp", "level", "logger", "message", "request_id"?, "partner"?, ...extras, "exc"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        context = current_context.get()
        if context is not None:
            entry["request_id"] = context.request_id
            if context.partner is not None:
                entry["partner"] = context.partner
        for name, value in _extras(record).items():
            entry[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``2025-01-01T12:00:00.000Z INFO syndicate.access [request id, partner] message key=value...``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name]
        context = current_context.get()
        if context is not None:
            parts.append(f"[{context.request_id}" + (f" partner={context.partner}]" if context.partner else "]"))
        line = " ".join(parts) + ": " + record.getMessage()
        extras = _extras(record)
        if extras and record.name != access_log.name:  # the access line's message already says it all
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact(line)


class AccessLines:
    """JSON access lines, made in bulk off the request path: a request only appends a tuple; every
    flush interval (and at shutdown) they become JSON lines in one write to the log stream, their paths
    redacted then. The lines are exactly what the logging path would write; with the text format they
    go through logging."""

    def __init__(self) -> None:
        self.stream: IO[str] | None = None  # set by configure() for the JSON format
        self._pending: list[tuple] = []

    def add(self, *fields: Any) -> None:
        self._pending.append(fields)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        stream = self.stream
        if not pending or stream is None:
            return
        lines = []
        for created, request_id, partner, method, route, raw_path, status, elapsed, client in pending:
            path = _redacted_path(raw_path)
            latency_ms = round(elapsed * 1000, 2)
            entry: dict[str, Any] = {
                "timestamp": _timestamp_of(created), "level": "INFO", "logger": access_log.name,
                "message": f"{method} {path} {status} {latency_ms:.2f} ms", "request_id": request_id,
            }
            if partner is not None:
                entry["partner"] = partner
            entry.update(method=method, route=route, path=path, status=status, latency_ms=latency_ms, client=client)
            lines.append(orjson.dumps(entry).decode())
        stream.write("\n".join(lines) + "\n")
        stream.flush()


@lru_cache(maxsize=1024)
def _redacted_path(raw_path: str) -> str:
    # Memoised: pollers send the same few URLs over and over, and the key patterns cost about 9 us a
    # line. The raw paths stay in this process's memory only (as the key table's memo of accepted keys
    # does); what is written is always the redacted form.
    return redact(raw_path)


def _timestamp_of(created: float) -> str:
    """ISO 8601 in UTC to the millisecond, as the JSON formatter writes it (the second part memoised)."""
    second = int(created)
    return f"{_second_of(second)}.{int((created - second) * 1000):03d}Z"


@lru_cache(maxsize=4)
def _second_of(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


ACCESS_LINES = AccessLines()


def configure(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log line to stderr (or ``stream``) in the configured format, at the configured level.
    Replaces the root logger's handlers (like ``logging.basicConfig(force=True)``)."""
    ACCESS_LINES.flush()
    ACCESS_LINES.stream = None if settings.log_format == "text" else (stream if stream is not None else sys.stderr)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(TextFormatter() if settings.log_format == "text" else JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the middleware writes the access lines
    return handler


def access_line(request_id: str, partner: str | None, method: str, route: str, path_qs: str, status: int,
                elapsed: float, client: str = "unknown") -> None:
    """Log one answered request: with the JSON format, buffered for :data:`ACCESS_LINES`; with the text
    format, through logging (with the request's context, whoever answered it). ``client`` is the
    client's address (:mod:`server.core.forwarding`: behind a trusted balancer, the one it forwarded)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    if ACCESS_LINES.stream is not None:
        ACCESS_LINES.add(time.time(), request_id, partner, method, route, path_qs, status, elapsed, client)
        return
    latency_ms = round(elapsed * 1000, 2)
    path = redact(path_qs)
    token = current_context.set(RequestContext(request_id, partner))
    try:
        access_log.info("%s %s %d %.2f ms", method, path, status, latency_ms,
                        extra={"method": method, "route": route, "path": path, "status": status,
                               "latency_ms": latency_ms, "client": client})
    finally:
        current_context.reset(token)
