"""Backfill from the command line and the admin API, against the Jira simulator and a real worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from core import state
from sandbox.server import SandboxServer
from tests.conftest import ADMIN_KEY, BASE_ENV, FAST_BUDGETS, make_settings, reset_state, running_sandbox, wait_for


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox("jira", seed=3) as server:
        yield server


@pytest.fixture
def env(infra, sandbox):
    return {**BASE_ENV, **infra, **sandbox.env(), **FAST_BUDGETS}


@pytest.fixture
def jira_settings(infra, sandbox):
    return make_settings(infra, **sandbox.env(), **FAST_BUDGETS)


def cli(env: dict[str, str], *args: str, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


def index_snapshot(services) -> dict[str, str]:
    """vector id → chunk text, for every Jira vector in the index."""
    ids = services.index.list_ids("jira:")
    return {vid: meta["text"] for vid, meta in services.index.fetch(ids).items()}


def set_latency(sandbox: SandboxServer, seconds: float) -> None:
    httpx.put(f"{sandbox.url('jira')}/_sandbox/knobs", json={"latency": seconds}).raise_for_status()


class TestCommandLine:
    def test_backfill_indexes_everything_and_verifies_it(self, services, env, sandbox, worker_factory, jira_settings):
        worker_factory(jira_settings)
        process = cli(env, "backfill", "jira", "--all", "--sample", "10")
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err
        truth = httpx.get(f"{sandbox.url('jira')}/_sandbox/jira/truth").json()
        issues = truth["issues"] if isinstance(truth, dict) and "issues" in truth else truth
        total_line = next(line for line in out.splitlines() if line.startswith("total"))
        listed, indexed, unchanged, deleted, failed, pending = map(int, total_line.split()[1:])
        assert listed == len(issues) and indexed == len(issues)
        assert failed == pending == 0
        assert "read-back: 10 sampled documents fetched from the index: ok" in out
        # Without a terminal: plain progress lines, no carriage-return bars.
        assert "documents listed" in err and "\r" not in err

    def test_unchanged_second_backfill_reports_unchanged(self, services, env, worker_factory, jira_settings):
        worker = worker_factory(jira_settings)
        first = cli(env, "backfill", "jira")
        assert first.wait(180) == 0
        embeds = worker.pipeline.embedder.requests
        second = cli(env, "backfill", "jira")
        out, _ = second.communicate(timeout=180)
        assert second.returncode == 0
        total = next(line for line in out.splitlines() if line.startswith("total")).split()
        assert int(total[1]) == int(total[3]) > 0  # listed == unchanged
        assert worker.pipeline.embedder.requests == embeds

    def test_sigkilled_backfill_resumes_without_refetching_finished_pages(
        self, services, env, sandbox, worker_factory, jira_settings
    ):
        jira = sandbox.sims["jira"]
        worker = worker_factory(jira_settings)
        # Given an uninterrupted backfill's index, for comparison:
        assert cli(env, "backfill", "jira").wait(180) == 0
        worker.drain()
        uninterrupted = index_snapshot(services)
        assert uninterrupted
        reset_state(services)
        jira.bulkfetched.clear()
        # When a backfill is killed with SIGKILL after its first finished scope (waiting for a
        # page alone raced: a one-page scope counts its page before it is marked done):
        set_latency(sandbox, 0.4)
        try:
            process = cli(env, "backfill", "jira")
            wait_for(lambda: _done_scopes(services), timeout=120, interval=0.02)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        finally:
            set_latency(sandbox, 0.0)
        killed_at_pages = _pages(services)
        fetched_before = dict(jira.bulkfetched)
        assert _done_scopes(services), "the kill came after at least one finished scope"
        assert process.returncode == -signal.SIGKILL, "the backfill was killed before it finished"
        # And run again with --resume:
        resumed = cli(env, "backfill", "jira", "--resume")
        out, err = resumed.communicate(timeout=180)
        assert resumed.returncode == 0, err
        # Then no issue of a finished page was bulk-fetched again (at most the page in flight)...
        refetched = [i for i, n in jira.bulkfetched.items() if n > 1]
        assert len(refetched) <= 100
        finished_ids = {i for i in fetched_before}
        in_flight = finished_ids & set(refetched)
        assert len(finished_ids) - len(in_flight) > 0
        # ...one run carried on (same id) and counted every page once more at most...
        with services.pool.connection() as conn:
            runs = conn.execute("SELECT id, status, counters FROM runs WHERE kind = 'backfill'").fetchall()
        assert len(runs) == 1 and runs[0][1] == "succeeded"
        assert runs[0][2]["pages"] >= killed_at_pages
        # ...and the index is the same as the uninterrupted one.
        worker.drain()
        assert index_snapshot(services) == uninterrupted

    def test_resume_with_nothing_to_resume_says_so(self, services, env):
        process = cli(env, "backfill", "jira", "--resume")
        _, err = process.communicate(timeout=60)
        assert process.returncode == 1
        assert err.strip() == "vector-sync: no unfinished jira backfill to resume"

    def test_unconfigured_source_is_refused_with_one_line(self, services, infra):
        process = cli({**BASE_ENV, **infra}, "backfill", "github")
        _, err = process.communicate(timeout=60)
        assert process.returncode == 2
        assert "github is not configured" in err and "Traceback" not in err


def _done_scopes(services) -> list[str]:
    with services.pool.connection() as conn:
        row = conn.execute("SELECT checkpoint FROM runs WHERE kind = 'backfill' ORDER BY id DESC LIMIT 1").fetchone()
    scopes = ((row[0] or {}).get("scopes") or {}) if row else {}
    return [key for key, entry in scopes.items() if entry["done"]]


def _pages(services) -> int:
    with services.pool.connection() as conn:
        row = conn.execute("SELECT counters FROM runs WHERE kind = 'backfill' ORDER BY id DESC LIMIT 1").fetchone()
    return int(row[0].get("pages", 0)) if row else 0


class TestAdminApi:
    def test_backfill_through_the_api_is_run_by_the_reconciler(self, services, env, receiver_factory,
                                                               worker_factory, jira_settings):
        receiver = receiver_factory(jira_settings)
        worker_factory(jira_settings)
        headers = {"X-Admin-Key": ADMIN_KEY}
        response = httpx.post(f"{receiver.url}/api/backfill/jira", json={}, headers=headers)
        assert response.status_code == 202
        run_id = response.json()["run_id"]
        # A second backfill of the same scope while one is queued or running is refused.
        again = httpx.post(f"{receiver.url}/api/backfill/jira", json={}, headers=headers)
        assert again.status_code == 409
        assert str(run_id) in again.json()["error"]
        reconciler = subprocess.Popen([sys.executable, "-m", "reconciler"], env={**os.environ, **env},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            run = wait_for(lambda: (r := httpx.get(f"{receiver.url}/api/runs/{run_id}", headers=headers).json())
                           ["status"] == "succeeded" and r, timeout=120)
        finally:
            reconciler.send_signal(signal.SIGTERM)
            reconciler.wait(20)
        assert run["kind"] == "backfill" and run["counters"]["listed"] > 0
        def settled() -> dict | None:
            report = httpx.get(f"{receiver.url}/api/runs/{run_id}", headers=headers).json()["verification"]
            return report if report and sum(s["pending"] for s in report.values()) == 0 else None

        report = wait_for(settled, timeout=60)
        listed = sum(s["listed"] for s in report.values())
        indexed = sum(s["indexed"] for s in report.values())
        assert listed == indexed == run["counters"]["listed"]

    def test_admin_endpoints_refuse_without_the_key_and_never_show_secrets(self, services, receiver_factory,
                                                                          jira_settings, env):
        receiver = receiver_factory(jira_settings)
        for method, path in [("GET", "/api/scopes"), ("POST", "/api/scopes/jira/activate"),
                             ("POST", "/api/backfill/jira"), ("GET", "/api/runs"), ("GET", "/api/runs/1"),
                             ("GET", "/api/dead-letters"), ("POST", "/api/dead-letters/replay"),
                             ("GET", "/api/admin/verification-token/notion")]:
            assert httpx.request(method, receiver.url + path).status_code == 401, path
        headers = {"X-Admin-Key": ADMIN_KEY}
        state.kv_set(services.pool, "x", 1)
        texts = [httpx.get(receiver.url + p, headers=headers).text
                 for p in ("/api/status", "/api/scopes", "/api/runs", "/metrics", "/api/dead-letters")]
        secrets = [env["JIRA_API_TOKEN"], env["JIRA_WEBHOOK_SECRET"], ADMIN_KEY]
        for text in texts:
            for secret in secrets:
                assert secret not in text

    def test_scopes_activate_and_deactivate(self, services, receiver_factory, jira_settings):
        receiver = receiver_factory(jira_settings)
        headers = {"X-Admin-Key": ADMIN_KEY}
        with services.pool.connection() as conn:
            conn.execute("INSERT INTO scopes (source, key, name) VALUES ('jira', 'ENG', 'Engineering')")
        off = httpx.post(f"{receiver.url}/api/scopes/jira/deactivate", json={"keys": ["ENG"]}, headers=headers)
        assert off.status_code == 200 and off.json()["changed"] == ["ENG"]
        listed = httpx.get(f"{receiver.url}/api/scopes", params={"source": "jira"}, headers=headers).json()
        assert listed["scopes"][0]["active"] is False
        unknown = httpx.post(f"{receiver.url}/api/scopes/jira/activate", json={"keys": ["NOPE"]}, headers=headers)
        assert unknown.status_code == 404 and "NOPE" in unknown.json()["error"]
        bad = httpx.post(f"{receiver.url}/api/scopes/jira/activate", json={"keys": "ENG"}, headers=headers)
        assert bad.status_code == 400
