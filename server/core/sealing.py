"""Sealing a short secret-bearing string for storage: AES-256-GCM under a key only the server holds.

The one use: a WebSub topic URL that carries a partner key (``.../feeds/latest/atom?key=syn_...``).
WebSub wants that exact string back in every verification, denial and content distribution
(``hub.topic``, ``Link: <topic>; rel="self"``), yet a partner key is never stored in clear. So the
subscription record keeps the topic without its key in clear, and the topic as the subscriber sent it
only sealed (:class:`Sealer`): a copy of Redis, a backup or an ops view shows no key; a server process,
which holds the sealing key, can open it.

The key is derived from ``SYNDICATE_TOPIC_SECRET``, else ``SYNDICATE_SESSION_SECRET``, else the admin
token (:func:`sealing_key`), so every process of a deployment agrees without more configuration. A
token sealed under another key (the secret changed) does not open: the caller falls back to the topic
without its key, and says so in the log. Each sealed value is bound to the record it belongs to (the
``context``, authenticated but not encrypted), so it cannot be moved to another record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "v1."
_NONCE_BYTES = 12
_LABEL = b"syndicate-topic-seal-v1"


def sealing_key(topic_secret: str | None, session_secret: str | None, admin_token: str | None) -> bytes | None:
    """The 32-byte key of :class:`Sealer`, from the first secret configured; None when there is none."""
    for secret in (topic_secret, session_secret, admin_token):
        if secret:
            return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()
    return None


class Sealer:
    """Seals and opens short strings with AES-256-GCM; a sealed value is ``v1.`` + base64url(nonce, ciphertext)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a sealing key is 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, text: str, context: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, text.encode(), context.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, token: str, context: str) -> str | None:
        """The text sealed in ``token`` for ``context``; None when it was sealed under another key or
        context, or is not a sealed value at all."""
        if not token.startswith(PREFIX):
            return None
        body = token[len(PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            if len(raw) <= _NONCE_BYTES:
                return None
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError):
            return None
