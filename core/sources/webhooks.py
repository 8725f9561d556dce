"""Pure helpers the connectors share for webhooks: header lookup and HMAC signatures."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from core.errors import InvalidWebhook


def header(headers: Mapping[str, str], name: str) -> str:
    """Case-insensitive header lookup on a plain dict or Starlette's Headers; "" when absent."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value or ""


def hmac_sha256(secret: str, message: bytes) -> str:
    """Hex HMAC-SHA256 of ``message`` keyed with ``secret``."""
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def check_sha256_signature(
    headers: Mapping[str, str], body: bytes, *, secret: str, header_name: str, source: str
) -> None:
    """Raise InvalidWebhook unless ``header_name`` is ``sha256=<hex HMAC-SHA256(secret, raw body)>``.

    The scheme Jira, GitHub, Notion and Fireflies share; the compare is constant-time and runs
    over the raw bytes (a re-serialised body would not verify).
    """
    given = header(headers, header_name).strip()
    if not given.startswith("sha256="):
        raise InvalidWebhook(f"{source}: missing or malformed {header_name}")
    expected = "sha256=" + hmac_sha256(secret, body)
    if not hmac.compare_digest(given.lower().encode(), expected.encode()):
        raise InvalidWebhook(f"{source}: {header_name} does not match the body")
