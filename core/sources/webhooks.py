"""Pure helpers the connectors share for webhooks: header lookup, HMAC signatures, and safe,
typed reading of payloads."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from core import jsonsafe
from core.errors import InvalidWebhook, MalformedWebhook
from core.sources.base import WebhookResult


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


# --- reading payloads safely ----------------------------------------------------------------
#
# Every parser reads its payload through these: one JSON loader (depth-limited, no NaN or
# infinity; core.jsonsafe) and typed field readers, so a field of the wrong type is a
# MalformedWebhook (400) naming the field, never an AttributeError (500). Absent or null
# optional fields read as empty, as the parsers always treated them.

#: Longest id, delivery id or scope key taken from a webhook (longer is refused).
MAX_ID_CHARS = 1024
#: Event times outside [1970, 2100) are refused: no real event carries one.
EARLIEST_EVENT, LATEST_EVENT = 0.0, 4102444800.0


def load_object(body: bytes, source: str) -> dict[str, Any]:
    """The webhook body as a JSON object, or MalformedWebhook saying why not.

    Strings are not checked for NUL here: a webhook is a notification, and its text is never
    stored; the ids it yields are checked by ``check_result``.
    """
    try:
        payload = jsonsafe.loads(body, strict_strings=False, what=f"{source} webhook body")
    except jsonsafe.BadJSON as exc:
        raise MalformedWebhook(str(exc)) from None
    if not isinstance(payload, dict):
        raise MalformedWebhook(f"{source} webhook body is not a JSON object")
    return payload


def obj(parent: Mapping[str, Any], key: str, source: str, path: str = "") -> Mapping[str, Any]:
    """``parent[key]`` as an object; {} when absent or null."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedWebhook(f"{source}: '{path or key}' must be an object, not {_kind(value)}")
    return value


def text(parent: Mapping[str, Any], key: str, source: str, path: str = "") -> str:
    """``parent[key]`` as a string; "" when absent or null."""
    value = parent.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedWebhook(f"{source}: '{path or key}' must be a string, not {_kind(value)}")
    return value


def ident(parent: Mapping[str, Any], key: str, source: str, path: str = "") -> str:
    """An id that providers send as a string or a whole number; "" when absent or null."""
    value = parent.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedWebhook(f"{source}: '{path or key}' must be a string or whole number, not {_kind(value)}")
    return str(value)


def number(parent: Mapping[str, Any], key: str, source: str, path: str = "") -> int | float | None:
    """``parent[key]`` as a number (as sent); None when absent or null."""
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedWebhook(f"{source}: '{path or key}' must be a number, not {_kind(value)}")
    return value


def items(parent: Mapping[str, Any], key: str, source: str, path: str = "") -> list[Any]:
    """``parent[key]`` as a list; [] when absent or null."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedWebhook(f"{source}: '{path or key}' must be a list, not {_kind(value)}")
    return value


def iso_time(parent: Mapping[str, Any], key: str, source: str, path: str = "") -> float | None:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC) as epoch seconds; None when absent
    or empty; MalformedWebhook when it is not a time."""
    raw = text(parent, key, source, path)
    if not raw:
        return None
    try:
        if not (raw.isascii() and raw.isprintable()):  # fromisoformat lets a trailing NUL through
            raise ValueError(raw)
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    except (ValueError, OverflowError):
        raise MalformedWebhook(f"{source}: '{path or key}' is not an ISO 8601 time: {raw[:40]!r}") from None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def storable_id(value: str, source: str, what: str) -> None:
    """MalformedWebhook unless ``value`` can be stored and looked up as an id."""
    if problem := jsonsafe.storable(value):
        raise MalformedWebhook(f"{source}: {what} {problem}")
    if len(value) > MAX_ID_CHARS:
        raise MalformedWebhook(f"{source}: {what} is longer than {MAX_ID_CHARS} characters")


def check_result(result: WebhookResult, source: str) -> WebhookResult:
    """Refuse (400) a parsed webhook whose ids, scope keys, delivery id or event times could
    not be stored: the one check every parser's output passes before anything is written."""
    if result.delivery_id is not None:
        storable_id(result.delivery_id, source, "delivery id")
    for ref in result.refs:
        storable_id(ref.id, source, "document id")
        storable_id(ref.scope, source, "scope key")
        at = ref.event_at
        if at is not None and not (math.isfinite(at) and EARLIEST_EVENT <= at < LATEST_EVENT):
            raise MalformedWebhook(f"{source}: event time {at!r} is out of range (epoch seconds 1970..2100)")
    for _, key in result.scope_events:
        storable_id(key, source, "scope key")
    return result
