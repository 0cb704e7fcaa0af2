"""Local tokens for a developer's machine: generated once, kept in a 0600 file under the data dir.

Used only when neither ``SYNDICATE_PUBLISHER_TOKENS`` nor ``SYNDICATE_ADMIN_TOKEN`` is set, so that
``make run`` works with no configuration and prints the same tokens on every run.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import orjson

from server.core.settings import PublisherToken, Settings

FILE_NAME = "credentials.json"


def with_local_credentials(settings: Settings) -> Settings:
    """Fill in missing tokens from (or into) ``<data dir>/credentials.json``."""
    if settings.publisher_tokens and settings.admin_token:
        return settings
    stored = load_or_create(settings.data_dir)
    publishers = settings.publisher_tokens or (PublisherToken("newsroom", stored["publisher_token"]),)
    return settings.with_tokens(publishers, settings.admin_token or stored["admin_token"])


def load_or_create(data_dir: Path) -> dict[str, str]:
    path = data_dir / FILE_NAME
    if path.exists():
        tokens: dict[str, str] = orjson.loads(path.read_bytes())
        return tokens
    data_dir.mkdir(parents=True, exist_ok=True)
    values = {"publisher_token": secrets.token_urlsafe(32), "admin_token": secrets.token_urlsafe(32)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps(values, option=orjson.OPT_INDENT_2))
    return values
