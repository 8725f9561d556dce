"""Shared by the door tests (tests/test_receiver_door.py, tests/test_fuzz_routes.py): settings
that enable every pushing source with known webhook secrets, and signing as each SaaS signs.

The signatures are computed here with hashlib, as each provider documents them, not with the
product's own helpers, so a test that reaches a parser proves the receiver verified a real
signature.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx

from tests.conftest import ADMIN_KEY

#: Credentials make each source "configured"; the API URLs point at a closed port because no
#: door test fetches anything (no worker runs).
SECRETS = {
    "jira": "jira-door-secret",
    "github": "github-door-secret",
    "slack": "slack-door-secret",
    "notion": "secret_notion_door_token",
    "fireflies": "fireflies-door-secret",
}
DOOR_ENV = {
    "JIRA_URL": "http://127.0.0.1:9", "JIRA_EMAIL": "door@example.com", "JIRA_API_TOKEN": "t",
    "JIRA_WEBHOOK_SECRET": SECRETS["jira"],
    "GITHUB_TOKEN": "t", "GITHUB_API_URL": "http://127.0.0.1:9", "GITHUB_WEBHOOK_SECRET": SECRETS["github"],
    "SLACK_BOT_TOKEN": "t", "SLACK_API_URL": "http://127.0.0.1:9", "SLACK_SIGNING_SECRET": SECRETS["slack"],
    "NOTION_TOKEN": "t", "NOTION_API_URL": "http://127.0.0.1:9", "NOTION_WEBHOOK_TOKEN": SECRETS["notion"],
    "FIREFLIES_API_KEY": "t", "FIREFLIES_API_URL": "http://127.0.0.1:9",
    "FIREFLIES_WEBHOOK_SECRET": SECRETS["fireflies"],
}
PUSHING = ("jira", "github", "slack", "notion", "fireflies")
ADMIN = {"X-Admin-Key": ADMIN_KEY}


def _hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(source: str, body: bytes, **extra: str) -> dict[str, str]:
    """The headers the provider would send with ``body``, signed with the test secret."""
    headers = {"Content-Type": "application/json", **extra}
    secret = SECRETS[source]
    if source == "slack":
        stamp = str(int(time.time()))
        headers["X-Slack-Request-Timestamp"] = stamp
        headers["X-Slack-Signature"] = "v0=" + _hex(secret, f"v0:{stamp}:".encode() + body)
    elif source == "github":
        headers["X-Hub-Signature-256"] = "sha256=" + _hex(secret, body)
        headers.setdefault("X-GitHub-Event", "issues")
        headers.setdefault("X-GitHub-Delivery", "door-delivery")
    elif source == "notion":
        headers["X-Notion-Signature"] = "sha256=" + _hex(secret, body)
    else:  # jira, fireflies
        headers["X-Hub-Signature"] = "sha256=" + _hex(secret, body)
    return headers


def post_webhook(base: str, source: str, body: bytes, *, signed: bool = True, **extra: str) -> httpx.Response:
    headers = signed_headers(source, body, **extra) if signed else {"Content-Type": "application/json", **extra}
    return httpx.post(f"{base}/webhooks/{source}", content=body, headers=headers, timeout=60)


def is_clean_4xx(response: httpx.Response) -> bool:
    """A refusal with a message: 4xx, a JSON body with an ``error`` string, no traceback."""
    if not 400 <= response.status_code < 500:
        return False
    if "Traceback" in response.text:
        return False
    try:
        body: Any = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), str) and bool(body["error"])
