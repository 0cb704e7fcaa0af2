"""Typed settings, read from environment variables in one place.

Every setting is an environment variable (``REDIS_URL`` or ``SYNDICATE_*``); the settings table of
docs/operations.md lists them all with their defaults. A bad value raises :class:`SettingsError` whose message is one
line naming the variable, which the CLI prints before exiting non-zero.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from server.core.forwarding import ForwardedHeader, TrustedProxies
from server.core.networks import Network, parse_networks
from server.core.redis_address import RedisAddress, parse_redis_address


class SettingsError(ValueError):
    """A setting has a value the server cannot use; the message names the variable."""


@dataclass(frozen=True, slots=True)
class PublisherToken:
    """A bearer token a CMS uses to ingest; ``name`` is recorded on every revision it creates."""

    name: str
    token: str


@dataclass(frozen=True, slots=True)
class SuperdeskSecret:
    """The secret of a Superdesk ``http_push`` destination (its ``secret_token``), and the publisher
    whose revisions its pushes make."""

    publisher: str
    secret: str


@dataclass(frozen=True, slots=True)
class Settings:
    redis_address: RedisAddress | None = None  # REDIS_URL; None: the embedded redis-server
    cache_redis_address: RedisAddress | None = None
    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = 8080
    base_url_setting: str | None = None
    publisher_tokens: tuple[PublisherToken, ...] = ()
    admin_token: str | None = None
    superdesk_secrets: tuple[SuperdeskSecret, ...] = ()  # SYNDICATE_SUPERDESK_SECRETS
    session_secret: str | None = None  # /ops cookies and CSRF; default: derived from admin_token
    topic_secret: str | None = None  # seals keyed WebSub topics; default: session_secret, else admin_token
    max_body_bytes: int = 2 * 1024 * 1024
    retention_days: float = 90.0
    changelog_retention_days: float = 90.0
    maintenance_interval_seconds: float = 3600.0
    redis_server_bin: str = "redis-server"
    feeds_dir: Path = Path("feeds")
    feed_cache_ttl_seconds: int = 3600
    feed_max_age_seconds: int = 60
    kill_visible_days: float = 7.0
    since_page_limit: int = 100
    archive_page_changes: int = 100  # RFC 5005 archive pages: changes of the change log per page
    memory_cache_bytes: int = 256 * 1024 * 1024
    default_rate_limit: int = 600
    flush_interval_seconds: float = 0.1
    push_allow_networks: tuple[Network, ...] = ()
    push_timeout_seconds: float = 10.0
    push_concurrency_per_destination: int = 4
    push_give_up_seconds: float = 24 * 3600.0
    push_lease_seconds: float = 60.0
    push_max_in_flight: int = 200
    redis_pool_size: int = 64
    redis_timeout_seconds: float = 1.0
    min_replicas_acked: int | None = None  # None: 1 when the primary has replicas, else 0
    replica_ack_timeout_seconds: float = 0.5
    websub_lease_default: int = 10 * 24 * 3600
    websub_lease_min: int = 60
    websub_lease_max: int = 30 * 24 * 3600
    run_workers: bool = True
    fast_path: bool = True  # cached feed polls answered beneath aiohttp (server.http.fast_path)
    log_level: str = "INFO"
    log_format: str = "json"
    heartbeat_seconds: float = 5.0
    # Limits (docs/limits-and-security.md)
    max_connections: int = 10_000  # open connections per process
    max_connections_per_address: int = 256  # open connections per client address bucket, per process
    header_timeout_seconds: float = 10.0  # a request's head, from its first byte (a new connection: from the accept)
    body_timeout_seconds: float = 60.0  # a request's body, from its head
    failed_keys_per_address: int = 20  # failed partner keys a minute from one address bucket, then 429
    failed_keys_per_key: int = 20  # failed attempts a minute at one key id, then 429
    failed_tokens_per_address: int = 10  # failed bearer tokens a minute from one address bucket, then 429
    hub_requests_per_address: int = 60  # POST /hub a minute from one address bucket
    hub_requests_per_topic: int = 120  # POST /hub a minute for one topic
    hub_max_verifications: int = 64  # verifications of intent running at once, per process
    redis_maxmemory_mb: int = 0  # the embedded redis-server's maxmemory (0: a quarter of the machine's memory)
    processes: int = 1  # `syndicate serve`: 1 is this process alone; N, a supervisor and N children
    worker_processes: int = 1  # the same for `syndicate worker`
    trusted_proxies: TrustedProxies = TrustedProxies()  # whose X-Forwarded-For / Forwarded is believed

    @property
    def base_url(self) -> str:
        """Public base URL for self links, without a trailing slash."""
        if self.base_url_setting:
            return self.base_url_setting.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def with_tokens(self, publisher_tokens: tuple[PublisherToken, ...], admin_token: str) -> Settings:
        return replace(self, publisher_tokens=publisher_tokens, admin_token=admin_token)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        settings = cls(
            redis_address=_redis_address(env, "REDIS_URL"),
            cache_redis_address=_redis_address(env, "SYNDICATE_CACHE_REDIS_URL"),
            data_dir=Path(env.get("SYNDICATE_DATA_DIR") or "var"),
            host=env.get("SYNDICATE_HOST") or "127.0.0.1",
            port=parse_port(env.get("SYNDICATE_PORT") or "8080", "SYNDICATE_PORT"),
            base_url_setting=_base_url(env),
            publisher_tokens=_publisher_tokens(env),
            admin_token=_token(env, "SYNDICATE_ADMIN_TOKEN"),
            superdesk_secrets=_superdesk_secrets(env),
            session_secret=_token(env, "SYNDICATE_SESSION_SECRET"),
            topic_secret=_token(env, "SYNDICATE_TOPIC_SECRET"),
            max_body_bytes=_int(env, "SYNDICATE_MAX_BODY_BYTES", 2 * 1024 * 1024, low=1024),
            retention_days=_float(env, "SYNDICATE_RETENTION_DAYS", 90.0, low=0.0),
            changelog_retention_days=_float(env, "SYNDICATE_CHANGELOG_RETENTION_DAYS", 90.0, low=0.0),
            maintenance_interval_seconds=_float(env, "SYNDICATE_MAINTENANCE_INTERVAL", 3600.0, low=1.0),
            redis_server_bin=env.get("SYNDICATE_REDIS_SERVER") or "redis-server",
            feeds_dir=Path(env.get("SYNDICATE_FEEDS_DIR") or "feeds"),
            feed_cache_ttl_seconds=_int(env, "SYNDICATE_FEED_CACHE_TTL", 3600, low=1),
            feed_max_age_seconds=_int(env, "SYNDICATE_FEED_MAX_AGE", 60, low=0),
            kill_visible_days=_float(env, "SYNDICATE_KILL_VISIBLE_DAYS", 7.0, low=0.0),
            since_page_limit=_int(env, "SYNDICATE_SINCE_PAGE_LIMIT", 100, low=1, high=1000),
            archive_page_changes=_int(env, "SYNDICATE_ARCHIVE_PAGE_CHANGES", 100, low=1, high=1000),
            memory_cache_bytes=_int(env, "SYNDICATE_MEMORY_CACHE_MB", 256, low=1) * 1024 * 1024,
            default_rate_limit=_int(env, "SYNDICATE_DEFAULT_RATE_LIMIT", 600, low=1),
            flush_interval_seconds=_int(env, "SYNDICATE_FLUSH_INTERVAL_MS", 100, low=10, high=100) / 1000,
            push_allow_networks=_networks(env),
            push_timeout_seconds=_float(env, "SYNDICATE_PUSH_TIMEOUT", 10.0, low=0.1),
            push_concurrency_per_destination=_int(env, "SYNDICATE_PUSH_CONCURRENCY", 4, low=1, high=100),
            push_give_up_seconds=_float(env, "SYNDICATE_PUSH_GIVE_UP_HOURS", 24.0, low=0.0) * 3600,
            push_lease_seconds=_float(env, "SYNDICATE_PUSH_LEASE_SECONDS", 60.0, low=1.0),
            push_max_in_flight=_int(env, "SYNDICATE_PUSH_MAX_IN_FLIGHT", 200, low=1, high=5000),
            redis_pool_size=_int(env, "SYNDICATE_REDIS_POOL_SIZE", 64, low=4, high=10000),
            redis_timeout_seconds=_int(env, "SYNDICATE_REDIS_TIMEOUT_MS", 1000, low=50, high=60000) / 1000,
            min_replicas_acked=_min_replicas(env),
            replica_ack_timeout_seconds=_int(env, "SYNDICATE_REPLICA_ACK_TIMEOUT_MS", 500, low=10,
                                             high=60000) / 1000,
            websub_lease_default=_int(env, "SYNDICATE_WEBSUB_LEASE_DEFAULT", 10 * 24 * 3600, low=1),
            websub_lease_min=_int(env, "SYNDICATE_WEBSUB_LEASE_MIN", 60, low=1),
            websub_lease_max=_int(env, "SYNDICATE_WEBSUB_LEASE_MAX", 30 * 24 * 3600, low=1),
            run_workers=_choice(env, "SYNDICATE_WORKERS", "ON", ("ON", "OFF")) == "ON",
            fast_path=_choice(env, "SYNDICATE_FAST_PATH", "ON", ("ON", "OFF")) == "ON",
            log_level=_choice(env, "SYNDICATE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=_choice(env, "SYNDICATE_LOG_FORMAT", "JSON", ("JSON", "TEXT")).lower(),
            heartbeat_seconds=_float(env, "SYNDICATE_HEARTBEAT_SECONDS", 5.0, low=0.1),
            max_connections=_int(env, "SYNDICATE_MAX_CONNECTIONS", 10_000, low=1),
            max_connections_per_address=_int(env, "SYNDICATE_MAX_CONNECTIONS_PER_ADDRESS", 256, low=1),
            header_timeout_seconds=_float(env, "SYNDICATE_HEADER_TIMEOUT", 10.0, low=0.1),
            body_timeout_seconds=_float(env, "SYNDICATE_BODY_TIMEOUT", 60.0, low=0.1),
            failed_keys_per_address=_int(env, "SYNDICATE_FAILED_KEYS_PER_ADDRESS", 20, low=1),
            failed_keys_per_key=_int(env, "SYNDICATE_FAILED_KEYS_PER_KEY", 20, low=1),
            failed_tokens_per_address=_int(env, "SYNDICATE_FAILED_TOKENS_PER_ADDRESS", 10, low=1),
            hub_requests_per_address=_int(env, "SYNDICATE_HUB_REQUESTS_PER_ADDRESS", 60, low=1),
            hub_requests_per_topic=_int(env, "SYNDICATE_HUB_REQUESTS_PER_TOPIC", 120, low=1),
            hub_max_verifications=_int(env, "SYNDICATE_HUB_MAX_VERIFICATIONS", 64, low=1, high=10_000),
            redis_maxmemory_mb=_int(env, "SYNDICATE_REDIS_MAXMEMORY_MB", 0, low=0, high=1024 * 1024),
            processes=_int(env, "SYNDICATE_PROCESSES", 1, low=1, high=256),
            worker_processes=_int(env, "SYNDICATE_WORKER_PROCESSES", 1, low=1, high=256),
            trusted_proxies=_trusted_proxies(env),
        )
        if settings.websub_lease_min > settings.websub_lease_max:
            raise SettingsError("SYNDICATE_WEBSUB_LEASE_MIN: it is larger than SYNDICATE_WEBSUB_LEASE_MAX")
        if settings.replica_ack_timeout_seconds >= settings.redis_timeout_seconds:
            raise SettingsError("SYNDICATE_REPLICA_ACK_TIMEOUT_MS: it must be shorter than SYNDICATE_REDIS_TIMEOUT_MS "
                                "(a commit and its wait share one answer)")
        return settings


_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,18}")


def parse_port(text: str, name: str) -> int:
    """A TCP port, 1 to 65535: ``SYNDICATE_PORT`` and ``syndicate serve --port`` alike (a blank one is an
    error here: an unset ``SYNDICATE_PORT`` arrives as 8080)."""
    if not text.strip():
        raise SettingsError(f"{name}: expected a port from 1 to 65535, got nothing")
    return _int({name: text}, name, 8080, low=1, high=65535)


def _int(env: Mapping[str, str], name: str, default: int, low: int | None = None, high: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    if not _WHOLE_NUMBER.fullmatch(raw.strip()):  # int() also takes "18_438" and non-ASCII digits
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}")
    value = int(raw.strip())
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"from {low}" + (f" to {high}" if high is not None else " up")
        raise SettingsError(f"{name}: {value} is out of range ({bounds})")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float | None = None) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")) or (low is not None and value < low):
        raise SettingsError(f"{name}: {raw!r} is out of range (a finite number >= {low})")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().upper()
    if raw not in choices:
        raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def _networks(env: Mapping[str, str]) -> tuple[Network, ...]:
    try:
        return parse_networks(env.get("SYNDICATE_PUSH_ALLOW_NETWORKS") or "")
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _trusted_proxies(env: Mapping[str, str]) -> TrustedProxies:
    try:
        networks = parse_networks(env.get("SYNDICATE_TRUSTED_PROXIES") or "", "SYNDICATE_TRUSTED_PROXIES")
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    raw = (env.get("SYNDICATE_FORWARDED_HEADER") or ForwardedHeader.X_FORWARDED_FOR).strip().lower()
    try:
        header = ForwardedHeader(raw)
    except ValueError:
        raise SettingsError(f"SYNDICATE_FORWARDED_HEADER: expected {ForwardedHeader.X_FORWARDED_FOR} or "
                            f"{ForwardedHeader.FORWARDED}, got {raw!r}") from None
    return TrustedProxies(networks, header)


def _redis_address(env: Mapping[str, str], name: str) -> RedisAddress | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        return parse_redis_address(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _min_replicas(env: Mapping[str, str]) -> int | None:
    raw = (env.get("SYNDICATE_MIN_REPLICAS_ACKED") or "").strip()
    if raw.lower() in ("", "auto"):
        return None
    return _int(env, "SYNDICATE_MIN_REPLICAS_ACKED", 0, low=0, high=16)


def _base_url(env: Mapping[str, str]) -> str | None:
    raw = (env.get("SYNDICATE_BASE_URL") or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise SettingsError(f"SYNDICATE_BASE_URL: expected an absolute http(s) URL without query, got {raw!r}")
    return raw.rstrip("/")


def _token(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if len(raw) < 16 or any(c.isspace() or c == "," for c in raw):
        raise SettingsError(f"{name}: a token must be at least 16 characters without spaces or commas")
    return raw


def _publisher_tokens(env: Mapping[str, str]) -> tuple[PublisherToken, ...]:
    """Parse ``name:token`` pairs (or bare tokens, named ``publisher1``, ``publisher2``... by position)."""
    name = "SYNDICATE_PUBLISHER_TOKENS"
    raw = (env.get(name) or "").strip()
    if not raw:
        return ()
    tokens: list[PublisherToken] = []
    for position, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            raise SettingsError(f"{name}: entry {position} is empty")
        label, sep, secret = entry.partition(":")
        if not sep:
            label, secret = f"publisher{position}", entry
        label = label.strip()
        secret = secret.strip()
        if not label or not all(c.isalnum() or c in "-_." for c in label):
            raise SettingsError(f"{name}: entry {position} has an invalid name (letters, digits, - _ . only)")
        if len(secret) < 16 or any(c.isspace() for c in secret):
            raise SettingsError(f"{name}: the token of {label!r} must be at least 16 characters without spaces")
        if any(t.name == label for t in tokens):
            raise SettingsError(f"{name}: the name {label!r} is used twice")
        tokens.append(PublisherToken(label, secret))
    return tuple(tokens)


def _superdesk_secrets(env: Mapping[str, str]) -> tuple[SuperdeskSecret, ...]:
    """Parse ``publisher:secret`` pairs: the publishers that take Superdesk ``http_push`` pushes at
    ``POST /api/superdesk/items``, each with its destination's secret. A publisher named without a
    secret is an error: an unsigned push is never accepted."""
    name = "SYNDICATE_SUPERDESK_SECRETS"
    raw = (env.get(name) or "").strip()
    if not raw:
        return ()
    entries: list[SuperdeskSecret] = []
    for position, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        label, _, secret = entry.partition(":")
        label, secret = label.strip(), secret.strip()
        if not label or not all(c.isalnum() or c in "-_." for c in label):
            raise SettingsError(f"{name}: entry {position} has an invalid publisher name (letters, digits, - _ . "
                                "only), in the form publisher:secret")
        if not secret:
            raise SettingsError(f"{name}: publisher {label!r} is configured for Superdesk without a secret; write "
                                f"{label}:<secret>, the secret token of its Superdesk HTTP Push destination")
        if len(secret) < 16 or any(c.isspace() for c in secret):
            raise SettingsError(f"{name}: the secret of {label!r} must be at least 16 characters without spaces")
        if any(e.publisher == label for e in entries):
            raise SettingsError(f"{name}: the publisher {label!r} is named twice")
        entries.append(SuperdeskSecret(label, secret))
    return tuple(entries)
