"""One definition of health (core/status.py), against real Postgres, Redis and the sandbox.

Every case that must make the system unhealthy is checked next to a healthy baseline, so each
check can pass as well as fail: a source failing at any stage (listing through the Jira
simulator at ``fault_rate: 1.0``, embed/index/record through the pipeline's own bookkeeping), a
document failing longer than ``DOCUMENT_FAILING_AFTER``, Redis unreachable, a dead process
kind, Postgres unreachable, a process reporting an outage, drift found by an audit, and every
scope deactivated. The surfaces (``/api/status``, ``/metrics``, ``vector-sync status``) are
read as an operator would.
"""

from __future__ import annotations

import re
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from core import runs, state
from core.embedded import EmbeddedPostgres
from core.runtime import open_services
from core.status import build_status, render_metrics
from tests.conftest import BASE_ENV, FAST_BUDGETS, free_port, make_settings, reconcile_tick

GITHUB = {"GITHUB_TOKEN": "ghp_test"}
#: Heartbeats written by hand stay alive for the whole test, however loaded the machine is.
SLOW_BEATS = {"HEARTBEAT_TIMEOUT": "600"}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from cli.main import main; main()", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=180)


def beat_all(services, *, except_kind: str | None = None, info: dict | None = None) -> None:
    for kind in ("web", "worker", "reconciler"):
        if kind != except_kind:
            state.beat(services.pool, kind, f"{kind}@test:1", info if kind == "worker" else None)


def fresh_scope(services, source: str = "github", key: str = "acme/api", *, active: bool = True) -> None:
    with services.pool.connection() as conn:
        conn.execute(
            """INSERT INTO scopes (source, key, name, active, last_success_at, last_attempt_at)
               VALUES (%s, %s, %s, %s, now() - interval '1 minute', now() - interval '1 minute')""",
            (source, key, key, active),
        )


def add_document(services, document_id: str, source: str = "github", scope: str = "acme/api") -> None:
    with services.pool.connection() as conn:
        conn.execute(
            """INSERT INTO documents (document_id, source, scope, title, chunk_count, indexed_at)
               VALUES (%s, %s, %s, 'a document', 2, now())""",
            (document_id, source, scope),
        )


@pytest.fixture
def gh_settings(infra):
    return make_settings(infra, **GITHUB, **SLOW_BEATS)


@pytest.fixture
def all_well(services, gh_settings):
    """A configured source synced a minute ago and every process kind alive: healthy."""
    fresh_scope(services)
    add_document(services, "github:acme/api/issues/1")
    beat_all(services)
    report = build_status(services, gh_settings)
    assert report["healthy"] is True, report["reasons"]
    return report


class TestHealthy:
    def test_all_well_is_healthy_on_every_surface(self, services, gh_settings, all_well, receiver_factory, infra):
        report = all_well
        assert report["all_fresh"] is True and report["reasons"] == [] and report["level"] == "ok"
        github = report["sources"]["github"]
        assert github["state"] == "fresh" and github["fresh"] is True
        assert github["reason"].startswith("github: 1 active scope synced within")
        assert [s["state"] for s in github["scope_list"]] == ["fresh"]
        assert report["postgres"] == {"up": True, "error": None} and report["redis"]["up"] is True
        receiver = receiver_factory(gh_settings)
        status = httpx.get(f"{receiver.url}/api/status")
        assert status.status_code == 200 and status.json()["healthy"] is True
        text = httpx.get(f"{receiver.url}/metrics").text
        assert "vector_sync_healthy 1" in text and "vector_sync_all_fresh 1" in text
        assert 'vector_sync_source_state{source="github",state="fresh"} 1' in text
        assert 'vector_sync_source_state{source="github",state="failing"} 0' in text
        assert 'vector_sync_up{component="postgres"} 1' in text
        shown = cli({**BASE_ENV, **infra, **GITHUB, **SLOW_BEATS}, "status")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert shown.stdout.startswith("HEALTHY")

    def test_no_audit_yet_is_not_a_failure(self, services, gh_settings, all_well):
        assert all_well["sources"]["github"]["audit"] is None


def tick(settings, services) -> int:
    return reconcile_tick(settings, services)


class TestFailing:
    def test_jira_failing_every_call_turns_failing_while_the_last_success_is_recent(
        self, infra, services, receiver_factory
    ):
        """Observed: with every Jira call failing, status said fresh and all_fresh for an hour."""
        from sandbox.server import SandboxServer, create_simulators

        sims = create_simulators(["jira"], profile="small", seed=3)
        sims["jira"].knobs.rate_limit = 0
        server = SandboxServer(sims).start()
        try:
            settings = make_settings(infra, **server.env(), **FAST_BUDGETS, **SLOW_BEATS)
            assert tick(settings, services) > 0
            beat_all(services)
            before = build_status(services, settings)
            assert before["sources"]["jira"]["state"] == "fresh", before["sources"]["jira"]["reason"]
            assert before["healthy"] is True, before["reasons"]

            httpx.put(f"{server.url('jira')}/_sandbox/knobs", json={"fault_rate": 1.0}).raise_for_status()
            with services.pool.connection() as conn:
                conn.execute("UPDATE scopes SET next_due_at = now() - interval '1 second' WHERE source = 'jira'")
            tick(settings, services)

            report = build_status(services, settings)
            jira = report["sources"]["jira"]
            assert jira["state"] == "failing" and jira["fresh"] is False
            assert jira["last_success_age_s"] < jira["stale_after_s"]  # recent success, still failing
            # The simulator's faults alternate between a 500 and a 503 with Retry-After (an outage).
            assert "listing failed 1 time since" in jira["reason"], jira["reason"]
            assert re.search(r"\b50[03]\b", jira["reason"]), jira["reason"]
            assert all(s["state"] == "failing" for s in jira["scope_list"])
            assert report["healthy"] is False and report["all_fresh"] is False and report["level"] == "bad"
            assert jira["reason"] in report["reasons"]

            receiver = receiver_factory(settings)
            text = httpx.get(f"{receiver.url}/metrics").text
            assert "vector_sync_healthy 0" in text and "vector_sync_all_fresh 0" in text
            assert 'vector_sync_source_fresh{source="jira"} 0' in text
            assert 'vector_sync_source_state{source="jira",state="failing"} 1' in text
            assert 'vector_sync_source_state{source="jira",state="fresh"} 0' in text

            shown = cli({**BASE_ENV, **infra, **server.env(), **SLOW_BEATS}, "status")
            assert shown.returncode == 1, shown.stdout + shown.stderr
            assert shown.stdout.startswith("NOT HEALTHY") and "listing failed" in shown.stdout
        finally:
            server.stop()

    @pytest.mark.parametrize("stage", ["embed", "index", "record"])
    def test_pipeline_failures_at_any_stage_make_the_source_failing(self, services, gh_settings, all_well, stage):
        state.bump_source_stats(services.pool, "github", {"synced": 1})  # an earlier success
        doc = "github:acme/api/issues/1"
        error = {"embed": "embedding failed: 429 Too Many Requests", "index": "pinecone upsert: 503",
                 "record": "OperationalError: server closed the connection"}[stage]
        state.record_document_error(services.pool, doc, "github", error, stage=stage, scope="acme/api")
        state.bump_source_stats(services.pool, "github", {"failed": 1}, error=error, stage=stage)
        report = build_status(services, gh_settings)
        github = report["sources"]["github"]
        assert github["state"] == "failing", github["reason"]
        assert f"{stage} failed" in github["reason"] and error in github["reason"]
        assert github["failures_by_stage"] == {stage: 1}
        assert github["documents_with_errors"] == 1
        assert report["healthy"] is False
        assert [d["document_id"] for d in report["failed_documents"]] == [doc]
        assert report["failed_documents"][0]["stage"] == stage
        text = render_metrics(report)
        assert f'vector_sync_failures_total{{source="github",stage="{stage}"}} 1' in text
        # The document is retried and indexed: the next pipeline success clears the failure.
        state.record_indexed(services.pool, document_id=doc, source="github", scope="acme/api", title="t",
                             url="", content_hash="h", metadata_hash="m", source_updated_at=1.0, chunk_count=1)
        state.bump_source_stats(services.pool, "github", {"synced": 1})
        assert build_status(services, gh_settings)["healthy"] is True

    def test_a_discovery_error_makes_the_source_failing(self, services, gh_settings, all_well):
        state.bump_source_stats(services.pool, "github", {}, "discovery: 502 Bad Gateway")
        github = build_status(services, gh_settings)["sources"]["github"]
        assert github["state"] == "failing"
        assert "discovery failed" in github["reason"] and "502 Bad Gateway" in github["reason"]
        # A later successful pass of a scope answers it (the API lists again).
        with services.pool.connection() as conn:
            conn.execute("UPDATE scopes SET last_success_at = now() + interval '1 second'")
        assert build_status(services, gh_settings)["sources"]["github"]["state"] == "fresh"

    def test_a_document_failing_longer_than_the_threshold_makes_health_false(self, services, gh_settings, all_well):
        doc = "github:acme/api/issues/1"
        state.record_document_error(services.pool, doc, "github", "embedding failed: 500", stage="embed",
                                    scope="acme/api")
        state.bump_source_stats(services.pool, "github", {"synced": 3})  # neighbours indexed since
        # Just failed: within DOCUMENT_FAILING_AFTER (60 s), retries may still fix it.
        fresh = build_status(services, gh_settings)
        assert fresh["healthy"] is True, fresh["reasons"]
        assert fresh["documents_failing"] == 0 and fresh["sources"]["github"]["documents_with_errors"] == 1
        with services.pool.connection() as conn:
            conn.execute("UPDATE documents SET error_since = now() - interval '6 minutes' WHERE document_id = %s",
                         (doc,))
        report = build_status(services, gh_settings)
        github = report["sources"]["github"]
        assert report["healthy"] is False and report["documents_failing"] == 1
        assert github["state"] == "failing" and github["documents_failing"] == 1
        assert "1 document failing for over 6.0m (embed: embedding failed: 500)" in github["reason"]
        assert github["scope_list"][0]["state"] == "failing"
        assert 'vector_sync_documents_failing{source="github"} 1' in render_metrics(report)

    def test_a_failing_push_api_document_makes_health_false(self, services, gh_settings, all_well):
        state.record_document_error(services.pool, "api:handbook", "api", "index: 503", stage="index")
        with services.pool.connection() as conn:
            conn.execute("UPDATE documents SET error_since = now() - interval '3 minutes'")
        report = build_status(services, gh_settings)
        assert report["healthy"] is False
        assert any(r.startswith("api: 1 document failing for over 3.0m (index: index: 503)") for r in report["reasons"])

    def test_failing_is_longer_than_a_setting(self, services, infra, all_well):
        state.record_document_error(services.pool, "github:acme/api/issues/1", "github", "boom", stage="fetch")
        with services.pool.connection() as conn:
            conn.execute("UPDATE documents SET error_since = now() - interval '6 minutes'")
        lenient = make_settings(infra, **GITHUB, **SLOW_BEATS, DOCUMENT_FAILING_AFTER="10m")
        assert build_status(services, lenient)["healthy"] is True
        strict = make_settings(infra, **GITHUB, **SLOW_BEATS, DOCUMENT_FAILING_AFTER="5m")
        assert build_status(services, strict)["healthy"] is False

    def test_a_failed_prune_listing_is_failing(self, services, gh_settings, all_well):
        run_id = runs.start_run(services.pool, "prune", "github", "acme/api", "test")
        runs.finish_run(services.pool, run_id, {}, "listing failed, nothing pruned: 500")
        github = build_status(services, gh_settings)["sources"]["github"]
        assert github["state"] == "failing" and "prune listing failed" in github["reason"]


class TestInfrastructure:
    def test_redis_unreachable_is_unhealthy_with_the_reason(self, services, infra, all_well):
        closed = make_settings(infra, **GITHUB, **SLOW_BEATS, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
        broken = open_services(closed, migrate=False)
        try:
            report = build_status(broken, closed)
        finally:
            broken.close()
        assert report["healthy"] is False and report["redis"]["up"] is False
        assert report["reasons"][0].startswith("redis unreachable: ")
        assert report["sources"]["github"]["state"] == "fresh"  # the sources are not to blame
        assert 'vector_sync_up{component="redis"} 0' in render_metrics(report)

    def test_a_dead_process_kind_is_unhealthy(self, services, gh_settings, all_well):
        with services.pool.connection() as conn:
            conn.execute("UPDATE heartbeats SET beat_at = now() - interval '20 minutes' WHERE kind = 'worker'")
        report = build_status(services, gh_settings)
        assert report["healthy"] is False and report["processes_alive"]["worker"] is False
        assert report["reasons"] == ["no live worker process (last heartbeat 20.0m ago from worker@test:1)"]
        with services.pool.connection() as conn:
            conn.execute("DELETE FROM heartbeats WHERE kind = 'worker'")
        assert build_status(services, gh_settings)["reasons"] == ["no worker process has a heartbeat"]

    def test_a_process_reporting_an_outage_is_unhealthy(self, services, gh_settings, all_well):
        outage = "redis unreachable since 2026-12-02T01:02:03+00:00"
        beat_all(services, info={"outage": outage})
        report = build_status(services, gh_settings)
        assert report["healthy"] is False
        assert report["reasons"] == [f"worker@test:1 reports an outage: {outage}"]
        worker = next(p for p in report["processes"] if p["kind"] == "worker")
        assert worker["outage"] == outage and worker["alive"] is True
        assert 'vector_sync_process_outages{kind="worker"} 1' in render_metrics(report)
        beat_all(services, info={})  # it recovered
        assert build_status(services, gh_settings)["healthy"] is True

    def test_postgres_unreachable_answers_503_json_and_metrics(self, infra, services, receiver_factory):
        home = Path(tempfile.mkdtemp(prefix="vs-health-pg-"))
        home.chmod(0o755)
        pg = EmbeddedPostgres(home / "pg")
        try:
            url = pg.start()
            settings = make_settings(infra, **GITHUB, **SLOW_BEATS, DATABASE_URL=url)
            receiver = receiver_factory(settings)
            assert httpx.get(f"{receiver.url}/api/status", timeout=60).status_code == 200
            pg.stop()
            response = httpx.get(f"{receiver.url}/api/status", timeout=60)
            assert response.status_code == 503
            body = response.json()
            assert body["healthy"] is False and body["all_fresh"] is False
            assert body["postgres"]["up"] is False
            assert body["reasons"][0].startswith("postgres unreachable: "), body["reasons"]
            assert body["redis"]["up"] is True
            metrics = httpx.get(f"{receiver.url}/metrics", timeout=60)
            assert metrics.status_code == 200
            assert "vector_sync_healthy 0" in metrics.text
            assert 'vector_sync_up{component="postgres"} 0' in metrics.text
            assert 'vector_sync_up{component="redis"} 1' in metrics.text
        finally:
            pg.stop()
            shutil.rmtree(home, ignore_errors=True)

    def test_the_cli_says_so_and_exits_3_when_postgres_is_unreachable(self, infra):
        env = {**BASE_ENV, **infra, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"}
        shown = cli(env, "status")
        assert shown.returncode == 3, shown.stdout + shown.stderr
        assert shown.stdout.startswith("NOT HEALTHY") and "postgres unreachable" in shown.stdout
        as_json = cli(env, "status", "--json")
        assert as_json.returncode == 3
        report = json.loads(as_json.stdout)
        assert report["healthy"] is False and report["postgres"]["up"] is False
        assert report["redis"]["up"] is True

    def test_the_cli_exits_2_on_a_usage_error(self, infra):
        assert cli({**BASE_ENV, **infra}, "status", "--bogus").returncode == 2


def audit(services, source: str, scope: str | None, *, missing=0, stale=0, ghost=0, orphans=0,
          error: str | None = None) -> int:
    run_id = runs.start_run(services.pool, "verify", source, scope, "test-verify")
    runs.finish_run(services.pool, run_id, {"missing": missing, "stale": stale, "ghost": ghost,
                                            "orphan_vectors": orphans,
                                            "samples": {"missing": ["github:acme/api/issues/9"]}}, error)
    return run_id


class TestDriftAudit:
    def test_drift_found_by_the_last_audit_is_failing_until_an_audit_finds_none(self, services, gh_settings, all_well):
        audit(services, "github", "acme/api", missing=2, ghost=1)
        report = build_status(services, gh_settings)
        github = report["sources"]["github"]
        assert github["state"] == "failing" and report["healthy"] is False
        assert "last drift audit" in github["reason"]
        assert "2 missing, 0 stale, 1 ghost, 0 orphan vectors" in github["reason"]
        assert github["audit"]["missing"] == 2 and github["audit"]["drift"] == 3
        assert github["audit"]["samples"] == {"missing": ["github:acme/api/issues/9"]}
        assert 'vector_sync_audit_drift{source="github",kind="missing"} 2' in render_metrics(report)
        audit(services, "github", "acme/api")  # repaired; the next audit is clean
        clean = build_status(services, gh_settings)
        assert clean["healthy"] is True and clean["sources"]["github"]["audit"]["drift"] == 0

    def test_a_newer_whole_source_audit_supersedes_scope_audits(self, services, gh_settings, all_well):
        audit(services, "github", "acme/api", stale=4)
        assert build_status(services, gh_settings)["healthy"] is False
        audit(services, "github", None)
        assert build_status(services, gh_settings)["healthy"] is True

    def test_an_audit_that_failed_is_a_warning_not_drift(self, services, gh_settings, all_well):
        audit(services, "github", None, error="listing failed: 500")
        report = build_status(services, gh_settings)
        assert report["healthy"] is True
        assert report["warnings"] == ["github: the last drift audit did not finish: listing failed: 500"]

    def test_orphan_vectors_of_a_whole_index_audit_are_unhealthy(self, services, gh_settings, all_well):
        audit(services, "index", None, orphans=5)
        report = build_status(services, gh_settings)
        assert report["healthy"] is False
        assert any(r.startswith("index: last drift audit") and "5 orphan vectors" in r for r in report["reasons"])


class TestScopes:
    def test_each_scope_has_its_state_and_reason(self, services, gh_settings, all_well):
        with services.pool.connection() as conn:
            conn.execute("""INSERT INTO scopes (source, key, name, active, last_success_at, last_error, last_error_at)
                            VALUES ('github', 'acme/web', 'acme/web', true, now() - interval '2 minutes',
                                    '404 Not Found', now() - interval '1 minute'),
                                   ('github', 'acme/new', 'acme/new', true, NULL, NULL, NULL),
                                   ('github', 'acme/old', 'acme/old', true, now() - interval '3 days', NULL, NULL)""")
        github = build_status(services, gh_settings)["sources"]["github"]
        by_key = {s["key"]: s for s in github["scope_list"]}
        assert [s["key"] for s in github["scope_list"]] == ["acme/web", "acme/new", "acme/old", "acme/api"]
        assert by_key["acme/web"]["state"] == "failing"
        assert by_key["acme/web"]["reason"].startswith("scope acme/web: listing failed 1 time since ")
        assert by_key["acme/web"]["last_error"] == "404 Not Found"
        assert by_key["acme/new"] == {**by_key["acme/new"], "state": "never synced", "reason": "scope acme/new never synced"}
        assert by_key["acme/old"]["state"] == "stale" and "3.0d ago" in by_key["acme/old"]["reason"]
        assert by_key["acme/api"]["state"] == "fresh"
        assert github["state"] == "failing" and github["scopes"]["failing"] == 1

    def test_a_never_synced_scope_makes_the_source_stale(self, services, gh_settings, all_well):
        with services.pool.connection() as conn:
            conn.execute("INSERT INTO scopes (source, key, name) VALUES ('github', 'acme/new', 'acme/new')")
        report = build_status(services, gh_settings)
        assert report["sources"]["github"]["state"] == "stale"
        assert report["reasons"] == ["github: 1 scope never synced (acme/new)"] and report["level"] == "warn"

    def test_a_source_with_no_scope_yet_is_never_synced(self, services, infra):
        settings = make_settings(infra, NOTION_TOKEN="t", **SLOW_BEATS)
        beat_all(services)
        report = build_status(services, settings)
        assert report["sources"]["notion"]["state"] == "never synced"
        assert report["reasons"] == ["notion: never synced (no scope discovered yet)"]

    def test_documents_of_a_deactivated_scope_are_flagged(self, services, gh_settings, all_well):
        fresh_scope(services, key="acme/gone", active=False)
        add_document(services, "github:acme/gone/issues/1", scope="acme/gone")
        add_document(services, "github:acme/gone/issues/2", scope="acme/gone")
        report = build_status(services, gh_settings)
        github = report["sources"]["github"]
        assert github["inactive_scope_documents"] == 2
        assert report["warnings"] == ["github: 2 documents in deactivated scope acme/gone still searchable, "
                                      "no longer maintained"]
        gone = next(s for s in github["scope_list"] if s["key"] == "acme/gone")
        assert gone["state"] == "disabled" and "2 documents still searchable" in gone["reason"]
        assert 'vector_sync_inactive_scope_documents{source="github"} 2' in render_metrics(report)

    def test_every_scope_deactivated_is_disabled_and_unhealthy(self, services, gh_settings, all_well):
        with services.pool.connection() as conn:
            conn.execute("UPDATE scopes SET active = false WHERE source = 'github'")
        report = build_status(services, gh_settings)
        github = report["sources"]["github"]
        assert github["state"] == "disabled" and report["healthy"] is False
        assert github["reason"] == "github: every scope is deactivated (1); nothing is synced, 1 document still searchable"

    def test_an_unconfigured_source_stays_out_of_health(self, services, gh_settings, all_well):
        with services.pool.connection() as conn:
            conn.execute("""INSERT INTO scopes (source, key, last_error, last_error_at)
                            VALUES ('slack', 'C1', 'invalid_auth', now())""")
        state.record_document_error(services.pool, "slack:C1:1.0", "slack", "invalid_auth", scope="C1")
        with services.pool.connection() as conn:
            conn.execute("UPDATE documents SET error_since = now() - interval '1 day'")
        report = build_status(services, gh_settings)
        assert report["sources"]["slack"]["state"] == "not configured" and report["healthy"] is True


def test_secrets_never_appear(services, infra, all_well):
    settings = make_settings(infra, **GITHUB, **SLOW_BEATS)
    text = json.dumps(build_status(services, settings), default=str) + render_metrics(build_status(services, settings))
    assert "ghp_test" not in text


def test_a_summary_audit_names_the_scopes_that_drift(services, gh_settings, all_well):
    """core.verify folds each scope's newest audit into a newer whole-source run: status still
    says which scope drifts."""
    audit(services, "github", "acme/api", ghost=1)
    audit(services, "github", None, ghost=1)
    github = build_status(services, gh_settings)["sources"]["github"]
    assert github["audit"]["drifting_scopes"] == ["acme/api"]
    assert "found drift in acme/api" in github["reason"]


def test_search_marks_stale_exactly_the_scopes_status_calls_disabled_failing_or_stale(services, gh_settings, all_well):
    """One rule for a scope's own row: what search flags as ``stale`` on a result is what the
    status page calls disabled, failing or stale (a scope never synced is not flagged)."""
    from core import access

    stale_after = gh_settings.source("github").stale_after
    with services.pool.connection() as conn:
        conn.execute(
            """INSERT INTO scopes (source, key, name, active, last_success_at, last_error, last_error_at) VALUES
               ('github', 'acme/off', 'acme/off', false, now(), NULL, NULL),
               ('github', 'acme/bad', 'acme/bad', true, now() - interval '2 minutes', '500', now()),
               ('github', 'acme/old', 'acme/old', true, now() - make_interval(secs => %s), NULL, NULL),
               ('github', 'acme/new', 'acme/new', true, NULL, NULL, NULL)""",
            (stale_after + 60,),
        )
    states = {s["key"]: s["state"] for s in build_status(services, gh_settings)["sources"]["github"]["scope_list"]}
    assert states == {"acme/api": "fresh", "acme/off": "disabled", "acme/bad": "failing",
                      "acme/old": "stale", "acme/new": "never synced"}
    flagged = access.stale_scopes(services.pool, {"github": stale_after}, [("github", k) for k in states])
    assert {k for _, k in flagged} == {k for k, v in states.items() if v in ("disabled", "failing", "stale")}
