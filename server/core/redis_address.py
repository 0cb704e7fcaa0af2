"""Where a Redis is: one server by URL, or a service that Redis Sentinel watches over.

``REDIS_URL`` and ``SYNDICATE_CACHE_REDIS_URL`` take either form (parsed here, used by
:mod:`server.core.redis_connection`):

- ``redis://``, ``rediss://`` (TLS) or ``unix://``: one Redis, as redis-py reads the URL;
- ``redis+sentinel://[[user]:password@]host1[:port],host2[:port],.../<service>[/<db>][?options]``, or
  ``rediss+sentinel://`` for TLS to the sentinels and to the Redis servers alike. The user and password
  are the Redis servers'; a sentinel's port defaults to 26379 and ``db`` to 0; IPv6 hosts in brackets.
  Options: ``sentinel_password`` and ``sentinel_username`` (when the sentinels require their own
  authentication, ``requirepass`` in sentinel.conf); with ``rediss+sentinel://``, ``ssl_ca_certs`` (a
  PEM file of the CA that signed the servers' and sentinels' certificates, when it is not in the
  system's store), ``ssl_certfile`` and ``ssl_keyfile`` (a client certificate, for ``tls-auth-clients
  yes``). Characters special in a URL are percent-encoded.

A URL that is not one of these raises :class:`ValueError` with a one-line message (no password in it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

DIRECT_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")  # redis-py's own names for the files
_SENTINEL_OPTIONS = ("sentinel_password", "sentinel_username", *_TLS_OPTIONS)


@dataclass(frozen=True, slots=True)
class DirectRedis:
    """One Redis server, by its redis-py URL."""

    url: str = field(repr=False)

    def describe(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"


@dataclass(frozen=True, slots=True)
class SentinelRedis:
    """The current primary of ``service``, as the sentinels at ``sentinels`` name it."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls_files: tuple[tuple[str, str], ...] = ()  # (redis-py option, path): for sentinels and servers alike

    def describe(self) -> str:
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        return f"{'rediss' if self.tls else 'redis'}+sentinel://{hosts}/{self.service}/{self.db}"


RedisAddress = DirectRedis | SentinelRedis


def parse_redis_address(raw: str) -> RedisAddress:
    scheme = raw.partition(":")[0].lower()
    if scheme in DIRECT_SCHEMES:
        return DirectRedis(raw)
    if scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"expected a redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel:// URL, "
                         f"got scheme {scheme[:20]!r}")
    rest = raw[len(scheme) + 3:] if raw[len(scheme):len(scheme) + 3] == "://" else None
    if rest is None:
        raise ValueError(f"expected {scheme}://hosts/service[/db]")
    rest, _, query = rest.partition("?")
    if "#" in query or "#" in rest:
        raise ValueError("a Sentinel URL has no #fragment")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(entry) for entry in hosts.split(","))
    segments = path.split("/") if path else []
    if not segments or not segments[0]:
        raise ValueError("a Sentinel URL names the service after the hosts: .../<service>[/<db>]")
    if len(segments) > 2 or (len(segments) == 2 and not (segments[1].isascii() and segments[1].isdigit())):
        raise ValueError("after the service comes at most a database number: .../<service>[/<db>]")
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False) if query else {}
    unknown = sorted(set(options) - set(_SENTINEL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0][:30]!r} (known: {', '.join(_SENTINEL_OPTIONS)})")
    tls = scheme == "rediss+sentinel"
    tls_files = tuple((name, options[name][-1]) for name in _TLS_OPTIONS if options.get(name, [""])[-1])
    if tls_files and not tls:
        raise ValueError(f"{tls_files[0][0]} needs TLS: use rediss+sentinel://")
    if ("ssl_certfile" in dict(tls_files)) != ("ssl_keyfile" in dict(tls_files)):
        raise ValueError("a client certificate needs both ssl_certfile and ssl_keyfile")
    for name, path in tls_files:
        if not os.path.isfile(path):
            raise ValueError(f"{name}: no such file {path[:200]!r}")
    return SentinelRedis(
        sentinels=sentinels, service=unquote(segments[0]), db=int(segments[1]) if len(segments) == 2 else 0,
        tls=tls, username=username, password=password,
        sentinel_username=options.get("sentinel_username", [None])[-1] or None,
        sentinel_password=options.get("sentinel_password", [None])[-1] or None, tls_files=tls_files)


def _host_port(entry: str) -> tuple[str, int]:
    entry = entry.strip()
    if entry.startswith("["):
        host, bracket, port_part = entry[1:].partition("]")
        if not bracket or (port_part and not port_part.startswith(":")):
            raise ValueError(f"bad sentinel address {entry[:60]!r}")
        port_text = port_part[1:]
    else:
        host, _, port_text = entry.partition(":")
    if not host or any(c.isspace() or c in "/@?" for c in host):
        raise ValueError(f"bad sentinel address {entry[:60]!r} (expected host[:port], comma-separated)")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad sentinel port in {entry[:60]!r}")
    return host, int(port_text)
