"""Webhook health per source in the status report (issue 15): last webhook received, refusals
(count, last reason, its kind), and for GitHub the gap repair's redeliveries and last run; the
same in ``/api/status``, ``vector-sync status``'s text and as warnings. Real receiver,
Postgres and Redis; webhooks signed (or mis-signed) as GitHub signs them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import httpx
import pytest

from core.settings import Settings
from core.statusview import render_text
from core.webhookhealth import rejection_kind
from reconciler import redeliver
from tests.conftest import ADMIN_KEY, ReceiverHandle, make_settings, wait_for

SECRET = "health-test-secret"


@pytest.fixture
def settings(infra: dict[str, str]) -> Settings:
    return make_settings(infra, GITHUB_TOKEN="ghp_test", GITHUB_WEBHOOK_SECRET=SECRET,
                         GITHUB_HOOK="orgs/acme/hooks/424242", GITHUB_REDELIVERY_INTERVAL="90s",
                         GITHUB_REPOS="acme/api", SLACK_BOT_TOKEN="xoxb-test")


def post_github(receiver: ReceiverHandle, *, secret: str = SECRET) -> httpx.Response:
    body = json.dumps({"action": "opened", "issue": {"number": 7, "title": "t", "updated_at": "2025-01-01T00:00:00Z"},
                       "repository": {"full_name": "acme/api"}}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(f"{receiver.url}/webhooks/github", content=body, timeout=30, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signature})


def status(receiver: ReceiverHandle) -> dict[str, Any]:
    response = httpx.get(f"{receiver.url}/api/status", headers={"X-Admin-Key": ADMIN_KEY}, timeout=30)
    assert response.status_code in (200, 503), response.text
    return dict(response.json())


def github_hooks(receiver: ReceiverHandle) -> dict[str, Any]:
    return dict(status(receiver)["sources"]["github"]["webhooks"])


def test_status_shows_received_and_a_signature_failure(receiver: ReceiverHandle) -> None:
    before = github_hooks(receiver)
    assert before["received"] == 0 and before["last_received_at"] is None and before["rejected"] == 0
    assert before["redelivery"]["enabled"] and before["redelivery"]["last_run_at"] is None

    assert post_github(receiver).status_code == 200
    hooks = wait_for(lambda: (h := github_hooks(receiver))["received"] == 1 and h, 30)
    assert hooks["last_received_at"] and hooks["last_received_age_s"] is not None
    assert hooks["rejected"] == 0 and hooks["refusing"] is False

    # A delivery signed with another secret (a rotated secret, say): refused, 401, and counted.
    assert post_github(receiver, secret="the-old-secret").status_code == 401
    hooks = wait_for(lambda: (h := github_hooks(receiver))["rejected"] == 1 and h, 30)
    assert hooks["last_rejection_kind"] == "verification"
    assert "X-Hub-Signature-256" in hooks["last_rejection"] and hooks["last_rejection_at"]
    assert hooks["refusing"] is True  # the newest delivery was refused
    report = status(receiver)
    assert any("github: the last webhook was refused (verification)" in w for w in report["warnings"])
    assert report["sources"]["slack"]["webhooks"]["received"] == 0  # per source

    # Accepted again: no longer refusing, the refusal still counted.
    assert post_github(receiver).status_code == 200
    hooks = wait_for(lambda: (h := github_hooks(receiver))["received"] == 2 and h, 30)
    assert hooks["rejected"] == 1 and hooks["refusing"] is False
    assert not any("last webhook was refused" in w for w in status(receiver)["warnings"])


def test_status_shows_the_gap_repair_counts_and_its_failure(receiver: ReceiverHandle, services: Any) -> None:
    pool = services.pool
    run = redeliver.claim_run(pool, "reconciler@test")
    assert run is not None
    redeliver.finish_run(pool, "reconciler@test", run["now"], 0.0, redelivered=3, enqueued=1, failed_seen=4)
    repair = github_hooks(receiver)["redelivery"]
    assert (repair["redelivered"], repair["enqueued_instead"], repair["runs"]) == (3, 1, 1)
    assert repair["hook"] == "orgs/acme/hooks/424242" and repair["interval_s"] == 90.0
    assert repair["last_run_at"] and repair["last_run_redelivered"] == 3 and repair["last_run_error"] is None
    scraped = httpx.get(f"{receiver.url}/metrics", headers={"X-Admin-Key": ADMIN_KEY}, timeout=30).text
    assert 'vector_sync_webhooks_redelivered_total{source="github"} 3' in scraped

    run = redeliver.claim_run(pool, "reconciler@test")
    assert run is not None
    redeliver.finish_run(pool, "reconciler@test", run["now"], 60.0, error="PermanentSourceError: 404 Not Found")
    report = status(receiver)
    repair = report["sources"]["github"]["webhooks"]["redelivery"]
    assert repair["redelivered"] == 3 and repair["runs"] == 2 and repair["last_run_error"].endswith("404 Not Found")
    assert any("github: webhook gap repair failed on its last run" in w for w in report["warnings"])

    text = render_text(report)
    line = next(ln for ln in text.splitlines() if "redelivered 3" in ln)
    assert "(+1 enqueued instead)" in line and "FAILED: PermanentSourceError" in line
    assert "webhooks: 0 received (last never)" in text  # the configured Slack source, too


def test_rejection_kinds_follow_the_recorded_messages() -> None:
    assert rejection_kind("github: X-Hub-Signature-256 does not match the body") == "verification"
    assert rejection_kind("slack: request timestamp more than 5 minutes from now (replay?)") == "verification"
    assert rejection_kind("GITHUB_WEBHOOK_SECRET is not set; refusing GitHub webhooks") == "not configured"
    assert rejection_kind("github: payload is missing 'issue'") == "malformed"
    assert rejection_kind(None) is None


def test_github_hook_settings_stop_start_up_with_one_line(infra: dict[str, str]) -> None:
    from core.errors import SettingsError

    with pytest.raises(SettingsError, match=r"^GITHUB_HOOK must be a hook path such as orgs/acme/hooks/"):
        make_settings(infra, GITHUB_TOKEN="t", GITHUB_HOOK="acme/424242")
    with pytest.raises(SettingsError, match=r"^GITHUB_REDELIVERY_INTERVAL must be a positive duration"):
        make_settings(infra, GITHUB_TOKEN="t", GITHUB_REDELIVERY_INTERVAL="0")
    with pytest.raises(SettingsError, match=r"^github is configured by half: GITHUB_TOKEN is not set"):
        make_settings(infra, GITHUB_HOOK="orgs/acme/hooks/1")
    hook = make_settings(infra, GITHUB_TOKEN="t", GITHUB_HOOK="https://api.github.com/repos/acme/api/hooks/9/")
    assert hook.source("github").get("GITHUB_HOOK") == "repos/acme/api/hooks/9"
