"""Alerts: state changes of sources and processes, driven through real Postgres, posted to a real
HTTP server on loopback standing in for a Slack incoming webhook."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core import state
from core.alerts import STATE_KEY, _LOCK_ID, check_and_notify
from core.runtime import open_services
from tests.conftest import free_port, make_settings


class SlackWebhook:
    """A Slack incoming webhook on loopback: records every POST; can be told to fail."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.fail_next = 0
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if hook.fail_next:
                    hook.fail_next -= 1
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"internal_error")
                    return
                assert self.headers["Content-Type"] == "application/json"
                hook.posts.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/hooksecret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def texts(self) -> list[str]:
        return [p["text"] for p in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slack_hook() -> Iterator[SlackWebhook]:
    hook = SlackWebhook()
    yield hook
    hook.close()


CREDS = {"GITHUB_TOKEN": "ghp_SuperSecretToken123", "JIRA_URL": "https://jira.example",
         "JIRA_EMAIL": "ops@example.com", "JIRA_API_TOKEN": "jira-SecretToken-456"}


@pytest.fixture
def alert_settings(infra, slack_hook):
    return make_settings(infra, ALERT_SLACK_WEBHOOK_URL=slack_hook.url, HEARTBEAT_TIMEOUT="600", **CREDS)


def all_alive(services) -> None:
    """A heartbeat for every process kind (alive for HEARTBEAT_TIMEOUT=600 s)."""
    for kind in ("web", "worker", "reconciler"):
        state.beat(services.pool, kind, f"{kind}@test:1")


def set_scope(services, source: str, key: str, *, success_ago: str | None, error: str | None = None,
              error_ago: str = "1 minute") -> None:
    with services.pool.connection() as conn:
        conn.execute(
            """INSERT INTO scopes (source, key, name, active, last_success_at, last_error, last_error_at)
               VALUES (%(s)s, %(k)s, %(k)s, true,
                       CASE WHEN %(ago)s::text IS NULL THEN NULL ELSE now() - %(ago)s::interval END,
                       %(err)s, CASE WHEN %(err)s::text IS NULL THEN NULL ELSE now() - %(eago)s::interval END)
               ON CONFLICT (source, key) DO UPDATE SET last_success_at = excluded.last_success_at,
                   last_error = excluded.last_error, last_error_at = excluded.last_error_at""",
            {"s": source, "k": key, "ago": success_ago, "err": error, "eago": error_ago},
        )


def healthy(services) -> None:
    all_alive(services)
    set_scope(services, "github", "acme/api", success_ago="1 minute")
    set_scope(services, "jira", "SUBS", success_ago="1 minute")


class TestAlerts:
    def test_without_a_webhook_url_nothing_is_checked_or_sent(self, services, infra, slack_hook):
        settings = make_settings(infra, **CREDS)
        set_scope(services, "github", "acme/api", success_ago="3 days")
        assert check_and_notify(services, settings) == []
        assert slack_hook.posts == []
        assert state.kv_get(services.pool, STATE_KEY) is None

    def test_healthy_system_sends_nothing_and_records_the_baseline(self, services, alert_settings, slack_hook):
        healthy(services)
        assert check_and_notify(services, alert_settings) == []
        assert check_and_notify(services, alert_settings) == []
        assert slack_hook.posts == []
        assert state.kv_get(services.pool, STATE_KEY) == {
            "source:github": "fresh", "source:jira": "fresh",
            "process:web": "alive", "process:worker": "alive", "process:reconciler": "alive",
            "outage:web": "none", "outage:worker": "none", "outage:reconciler": "none",
            "system:redis": "up"}

    def test_stale_alerts_once_then_recovers_once(self, services, alert_settings, slack_hook):
        healthy(services)
        assert check_and_notify(services, alert_settings) == []
        # GitHub's last successful pass is three days old: stale.
        set_scope(services, "github", "acme/api", success_ago="3 days")
        sent = check_and_notify(services, alert_settings)
        assert len(sent) == 1 and sent == slack_hook.texts
        assert "github is stale" in sent[0]
        assert "last successful sync 3.0d ago" in sent[0]
        # Still stale on the following checks: no new message.
        for _ in range(3):
            assert check_and_notify(services, alert_settings) == []
        assert len(slack_hook.posts) == 1
        # A successful pass: one recovery message.
        set_scope(services, "github", "acme/api", success_ago="5 seconds")
        recovered = check_and_notify(services, alert_settings)
        assert len(recovered) == 1 and "github recovered: fresh again" in recovered[0]
        assert check_and_notify(services, alert_settings) == []
        assert slack_hook.texts == sent + recovered

    def test_failing_alerts_once_with_escaped_redacted_error(self, services, alert_settings, slack_hook):
        healthy(services)
        check_and_notify(services, alert_settings)
        error = "401 from Jira for token jira-SecretToken-456 <!channel> <https://evil.example|click> & more"
        set_scope(services, "jira", "SUBS", success_ago="10 minutes", error=error, error_ago="1 minute")
        [message] = check_and_notify(services, alert_settings)
        assert "jira is failing (1 scope failing" in message
        assert "jira-SecretToken-456" not in message and "[redacted]" in message
        assert "<!channel>" not in message and "&lt;!channel&gt;" in message
        assert "&lt;https://evil.example|click&gt; &amp; more" in message
        assert slack_hook.posts == [{"text": message}]
        # The same error on every later pass: no new message.
        set_scope(services, "jira", "SUBS", success_ago="10 minutes", error=error + " again", error_ago="1 second")
        assert check_and_notify(services, alert_settings) == []
        # A successful pass after the error: recovered.
        set_scope(services, "jira", "SUBS", success_ago="1 second", error=error, error_ago="1 minute")
        [back] = check_and_notify(services, alert_settings)
        assert back.startswith(":white_check_mark: vector-sync: jira recovered")
        assert len(slack_hook.posts) == 2

    def test_moving_between_stale_and_failing_is_not_a_new_alert(self, services, alert_settings, slack_hook):
        healthy(services)
        check_and_notify(services, alert_settings)
        set_scope(services, "github", "acme/api", success_ago="3 days")
        assert len(check_and_notify(services, alert_settings)) == 1
        set_scope(services, "github", "acme/api", success_ago="3 days", error="boom", error_ago="1 second")
        assert check_and_notify(services, alert_settings) == []
        assert state.kv_get(services.pool, STATE_KEY)["source:github"] == "failing"
        assert len(slack_hook.posts) == 1

    def test_a_dead_process_kind_alerts_once_and_once_when_back(self, services, alert_settings, slack_hook):
        healthy(services)
        check_and_notify(services, alert_settings)
        with services.pool.connection() as conn:
            conn.execute("UPDATE heartbeats SET beat_at = now() - interval '20 minutes' WHERE kind = 'worker'")
        [dead] = check_and_notify(services, alert_settings)
        assert dead.startswith(":red_circle: vector-sync: no worker process is alive")
        assert "last heartbeat 20.0m ago from worker@test:1" in dead
        assert check_and_notify(services, alert_settings) == []
        state.beat(services.pool, "worker", "worker@test:1")
        [alive] = check_and_notify(services, alert_settings)
        assert "a worker process is alive again" in alive
        assert slack_hook.texts == [dead, alive]

    def test_already_broken_when_first_checked_alerts_once(self, services, alert_settings, slack_hook):
        # No heartbeats at all, and a source that never synced.
        set_scope(services, "github", "acme/api", success_ago=None)
        set_scope(services, "jira", "SUBS", success_ago="1 minute")
        sent = check_and_notify(services, alert_settings)
        assert sorted(m.split(" vector-sync: ")[1].split(" (")[0] for m in sent) == [
            "github has never synced", "no reconciler process is alive", "no web process is alive",
            "no worker process is alive"]
        assert "last successful sync never" in next(m for m in sent if "github" in m)
        assert next(m for m in sent if "github" in m).endswith(": scope acme/api never synced")
        assert "1 scope never synced" in next(m for m in sent if "github" in m)
        assert "no heartbeat on record" in next(m for m in sent if "worker" in m)
        assert check_and_notify(services, alert_settings) == []
        assert len(slack_hook.posts) == 4

    def test_unconfigured_sources_never_alert(self, services, alert_settings, slack_hook):
        healthy(services)
        set_scope(services, "notion", "workspace", success_ago="30 days", error="nope")
        assert check_and_notify(services, alert_settings) == []
        assert "source:notion" not in state.kv_get(services.pool, STATE_KEY)
        assert slack_hook.posts == []

    def test_failed_post_is_retried_on_the_next_check(self, services, alert_settings, slack_hook, caplog):
        healthy(services)
        check_and_notify(services, alert_settings)
        set_scope(services, "github", "acme/api", success_ago="3 days")
        slack_hook.fail_next = 1
        with caplog.at_level("WARNING", logger="vector_sync.alerts"):
            assert check_and_notify(services, alert_settings) == []
        assert "alert not delivered (HTTP 500)" in caplog.text
        assert slack_hook.url not in caplog.text  # the webhook URL is a secret
        assert state.kv_get(services.pool, STATE_KEY)["source:github"] == "fresh"  # not advanced
        [sent] = check_and_notify(services, alert_settings)
        assert "github is stale" in sent and slack_hook.texts == [sent]
        assert check_and_notify(services, alert_settings) == []

    def test_unreachable_webhook_is_retried_with_the_state_kept(self, services, infra, slack_hook, caplog):
        healthy(services)
        closed = make_settings(infra, ALERT_SLACK_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hook",
                               HEARTBEAT_TIMEOUT="600", HTTP_TIMEOUT="5", **CREDS)
        check_and_notify(services, closed)
        set_scope(services, "jira", "SUBS", success_ago="2 days")
        with caplog.at_level("WARNING", logger="vector_sync.alerts"):
            assert check_and_notify(services, closed) == []
            assert check_and_notify(services, closed) == []
        assert "alert not delivered (ConnectError)" in caplog.text
        assert state.kv_get(services.pool, STATE_KEY)["source:jira"] == "fresh"
        # The webhook is reachable again (the URL fixed): the pending alert goes out once.
        fixed = make_settings(infra, ALERT_SLACK_WEBHOOK_URL=slack_hook.url, HEARTBEAT_TIMEOUT="600", **CREDS)
        with httpx.Client(timeout=5) as client:
            [sent] = check_and_notify(services, fixed, client=client)
            assert check_and_notify(services, fixed, client=client) == []
        assert "jira is stale" in sent and slack_hook.texts == [sent]

    def test_state_is_shared_by_processes(self, services, alert_settings, slack_hook):
        """Another process (its own pool) sees what this one alerted on and does not repeat it."""
        healthy(services)
        check_and_notify(services, alert_settings)
        set_scope(services, "github", "acme/api", success_ago="3 days")
        assert len(check_and_notify(services, alert_settings)) == 1
        other = open_services(alert_settings)
        try:
            assert check_and_notify(other, alert_settings) == []
            set_scope(services, "github", "acme/api", success_ago="1 second")
            assert len(check_and_notify(other, alert_settings)) == 1
        finally:
            other.close()
        assert check_and_notify(services, alert_settings) == []
        assert len(slack_hook.posts) == 2

    def test_a_concurrent_check_in_progress_is_not_doubled(self, services, alert_settings, slack_hook):
        """While another process holds the alert lock, a check sends nothing; afterwards it does."""
        healthy(services)
        check_and_notify(services, alert_settings)
        set_scope(services, "github", "acme/api", success_ago="3 days")
        with services.pool.connection() as holder, holder.transaction():
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            assert check_and_notify(services, alert_settings) == []
        assert slack_hook.posts == []
        assert len(check_and_notify(services, alert_settings)) == 1


class TestOneDefinition:
    """Alerts follow core.status: failing at any stage, disabled, outages, Redis down."""

    def test_a_pipeline_failure_alerts_failing_with_the_reason(self, services, alert_settings, slack_hook):
        healthy(services)
        assert check_and_notify(services, alert_settings) == []
        state.bump_source_stats(services.pool, "github", {"failed": 1},
                                error="embedding failed: 429 for ghp_SuperSecretToken123", stage="embed")
        [message] = check_and_notify(services, alert_settings)
        assert message.startswith(":red_circle: vector-sync: github is failing (last successful sync ")
        assert "embed failed" in message and "[redacted]" in message
        assert "ghp_SuperSecretToken123" not in message
        assert check_and_notify(services, alert_settings) == []

    def test_every_scope_deactivated_alerts_disabled(self, services, alert_settings, slack_hook):
        healthy(services)
        check_and_notify(services, alert_settings)
        with services.pool.connection() as conn:
            conn.execute("UPDATE scopes SET active = false WHERE source = 'jira'")
        [message] = check_and_notify(services, alert_settings)
        assert message == ":warning: vector-sync: jira is disabled: every scope is deactivated (1); nothing is synced"
        assert state.kv_get(services.pool, STATE_KEY)["source:jira"] == "disabled"

    def test_a_process_outage_alerts_once_and_once_when_it_ends(self, services, alert_settings, slack_hook):
        healthy(services)
        check_and_notify(services, alert_settings)
        state.beat(services.pool, "worker", "worker@test:1", {"outage": "redis unreachable since 2026-12-02T01:00:00+00:00"})
        [down] = check_and_notify(services, alert_settings)
        assert down == (":red_circle: vector-sync: a worker process reports an outage: "
                        "worker@test:1: redis unreachable since 2026-12-02T01:00:00+00:00")
        assert check_and_notify(services, alert_settings) == []
        state.beat(services.pool, "worker", "worker@test:1", {})
        [back] = check_and_notify(services, alert_settings)
        assert back == ":white_check_mark: vector-sync: no worker process reports an outage any more."

    def test_redis_down_alerts(self, services, infra, slack_hook):
        healthy(services)
        settings = make_settings(infra, ALERT_SLACK_WEBHOOK_URL=slack_hook.url, HEARTBEAT_TIMEOUT="600", **CREDS)
        check_and_notify(services, settings)
        closed = make_settings(infra, ALERT_SLACK_WEBHOOK_URL=slack_hook.url, HEARTBEAT_TIMEOUT="600",
                               REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", **CREDS)
        broken = open_services(closed, migrate=False)
        try:
            [message] = check_and_notify(broken, closed)
        finally:
            broken.close()
        assert message.startswith(":red_circle: vector-sync: redis is down: redis unreachable: ")
        [back] = check_and_notify(services, settings)
        assert back == ":white_check_mark: vector-sync: redis answers again."
