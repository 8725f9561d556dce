"""Status surfaces beyond the API shape: stuck runs, /metrics, the CLI, tokens, dead letters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from core import queue, state
from core.documents import Ref
from core.status import build_status
from tests.conftest import ADMIN_KEY, BASE_ENV, make_settings, wait_for


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from cli.main import main; main()", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


class TestReport:
    def test_a_run_without_progress_is_reported_stuck(self, infra, services):
        settings = make_settings(infra, GITHUB_TOKEN="t", STUCK_AFTER="60")
        with services.pool.connection() as conn:
            conn.execute("""INSERT INTO runs (kind, source, scope, status, progress_at)
                            VALUES ('reconcile', 'github', 'o/r', 'running', now() - interval '5 minutes'),
                                   ('reconcile', 'github', 'o/s', 'running', now())""")
        runs = build_status(services, settings)["sources"]["github"]["runs"]
        assert runs == {"in_flight": 2, "stuck": 1, "failed_24h": 0}

    def test_a_configured_source_never_synced_is_not_silent(self, infra, services):
        settings = make_settings(infra, NOTION_TOKEN="t")
        report = build_status(services, settings)
        assert report["sources"]["notion"]["state"] == "never synced"
        assert report["sources"]["notion"]["fresh"] is False
        assert report["healthy"] is False and report["all_fresh"] is False
        assert "notion: never synced (no scope discovered yet)" in report["reasons"]

    def test_metrics_are_prometheus_text(self, infra, services, receiver_factory):
        settings = make_settings(infra, GITHUB_TOKEN="t")
        with services.pool.connection() as conn:
            conn.execute("INSERT INTO scopes (source, key, last_success_at) VALUES ('github', 'o/r', now())")
        receiver = receiver_factory(settings)
        text = httpx.get(f"{receiver.url}/metrics").text
        assert '# TYPE vector_sync_source_fresh gauge' in text
        assert 'vector_sync_source_fresh{source="github"} 1' in text
        assert 'vector_sync_source_configured{source="jira"} 0' in text
        assert 'vector_sync_process_alive{kind="web"} 1' in text
        assert "vector_sync_queue_depth 0" in text
        for line in text.splitlines():
            assert line.startswith("#") or line.startswith("vector_sync_"), line


class TestCommandLine:
    def test_status_text_json_and_exit_code(self, infra, services):
        env = {**BASE_ENV, **infra}
        text = cli(env, "status")
        assert text.returncode == 1  # nothing alive: not healthy
        assert text.stdout.startswith("NOT HEALTHY")
        assert "  - no worker process has a heartbeat" in text.stdout
        assert "jira       not configured" in text.stdout
        as_json = cli(env, "status", "--json")
        assert as_json.returncode == 1
        report = json.loads(as_json.stdout)
        assert report["healthy"] is False and report["all_fresh"] is False
        assert set(report["sources"]) == {"jira", "slack", "github", "notion", "tempo", "fireflies"}

    def test_a_notion_verification_token_is_shown_to_the_operator_only(self, infra, services, receiver_factory):
        settings = make_settings(infra, NOTION_TOKEN="secret_api")
        receiver = receiver_factory(settings)
        handshake = httpx.post(f"{receiver.url}/webhooks/notion", json={"verification_token": "secret_abc123"})
        assert handshake.status_code == 200
        # Accepted once: a second unsigned "handshake" cannot replace the recorded token.
        again = httpx.post(f"{receiver.url}/webhooks/notion", json={"verification_token": "secret_evil"})
        assert again.status_code == 409
        public = httpx.get(f"{receiver.url}/api/status")
        assert public.json()["pending_verification_tokens"] == ["notion"]
        assert "secret_abc123" not in public.text
        admin = httpx.get(f"{receiver.url}/api/admin/verification-token/notion", headers={"X-Admin-Key": ADMIN_KEY})
        assert admin.json()["verification_token"] == "secret_abc123"
        shown = cli({**BASE_ENV, **infra, "NOTION_TOKEN": "secret_api"}, "status")
        assert "secret_abc123" in shown.stdout and "NOTION_WEBHOOK_TOKEN" in shown.stdout


class TestDeadLetters:
    def test_permanent_failures_are_dead_lettered_counted_listed_and_replayed(self, infra, services, worker_factory):
        """A revoked token is not retried blindly: the job goes to the dead-letter queue."""
        from sandbox.server import SandboxServer, create_simulators

        server = SandboxServer(create_simulators(["github"], profile="small")).start()
        try:
            env = server.env()
            repo = env["GITHUB_REPOS"].split(",")[0]
            broken = make_settings(infra, **{**env, "GITHUB_TOKEN": "revoked"})
            worker = worker_factory(broken)
            queue.enqueue(services.broker, [Ref("github", f"{repo}/issues/1", scope=repo)])
            wait_for(lambda: queue.dead_letter_count(services.broker) == 1, timeout=60)
            assert build_status(services, broken)["queue"]["dead_letters"] == 1
            listed = cli({**BASE_ENV, **infra}, "dead-letters", "list")
            assert f"github:{repo}/issues/1" in listed.stdout and "1 dead letter(s)" in listed.stdout
            # Once the token is fixed, a replay indexes the document.
            worker.stop()
            fixed = worker_factory(make_settings(infra, **env))
            replayed = cli({**BASE_ENV, **infra}, "dead-letters", "replay")
            assert "replayed 1 message(s)" in replayed.stdout
            fixed.drain()
            assert queue.dead_letter_count(services.broker) == 0
            row = state.get_documents(services.pool, [f"github:{repo}/issues/1"])
            assert row[f"github:{repo}/issues/1"].chunk_count > 0
        finally:
            server.stop()
