"""The reconciler against the sandbox: schedules, shared claiming, failures, and liveness."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from freezegun import freeze_time

from core import state
from core.runtime import SourceSet
from core.settings import DEFAULT_POLL_INTERVAL
from core.status import build_status
from reconciler.reconcile import LEASE, Reconciler, claim_due, due_in, release_leases, renew_leases
from sandbox.server import SandboxServer, create_simulators
from tests.conftest import BASE_ENV, FAST_BUDGETS, make_settings, wait_for

SOURCES = ["jira", "slack", "github", "notion", "tempo", "fireflies"]


@pytest.fixture(scope="module")
def sandbox():
    sims = create_simulators(SOURCES, profile="small", seed=7)
    for sim in sims.values():
        sim.knobs.rate_limit = 0  # these tests are about schedules, not budgets
    server = SandboxServer(sims).start()
    yield server
    server.stop()


@pytest.fixture
def sandbox_settings(infra, sandbox):
    return make_settings(infra, **sandbox.env(), **FAST_BUDGETS)


def tick(settings, services, owner="test-reconciler") -> int:
    async def go() -> int:
        sources = SourceSet(settings, services.pool)
        try:
            return await Reconciler(settings, services, sources, owner).tick()
        finally:
            await sources.aclose()

    return asyncio.run(go())


def scope_rows(services):
    with state.dict_cursor(services.pool) as cur:
        cur.execute("SELECT * FROM scopes WHERE active ORDER BY source, key")
        return cur.fetchall()


def pass_time(services, minutes: float) -> None:
    """Move every scope's schedule back, as if ``minutes`` had passed."""
    with services.pool.connection() as conn:
        conn.execute(
            """UPDATE scopes SET next_due_at = next_due_at - make_interval(mins => %s),
                   last_success_at = last_success_at - make_interval(mins => %s)""",
            (minutes, minutes),
        )


class TestSchedules:
    def test_each_source_is_polled_on_its_schedule(self, services, sandbox_settings):
        # Given a first pass over every discovered scope of all six sources:
        assert tick(sandbox_settings, services) > 0
        rows = scope_rows(services)
        assert {r["source"] for r in rows} == set(SOURCES)
        for row in rows:
            assert row["last_success_at"] is not None, row
            gap = (row["next_due_at"] - row["last_success_at"]).total_seconds()
            assert gap == pytest.approx(DEFAULT_POLL_INTERVAL[row["source"]], abs=5), row["source"]
        # Then nothing is due straight away:
        assert tick(sandbox_settings, services) == 0
        # When 16 minutes pass, only Slack (every 15 min) is due:
        pass_time(services, 16)
        due = claim_due(services.pool, SOURCES, limit=100)
        assert {c.source for c in due} == {"slack"}
        # (release the lease the claim took, as a finished pass would)
        with services.pool.connection() as conn:
            conn.execute("UPDATE scopes SET lease_owner = NULL, lease_until = NULL WHERE source = 'slack'")
        assert tick(sandbox_settings, services) == len([r for r in rows if r["source"] == "slack"])
        # When 31 minutes have passed since the first pass, Jira and GitHub (30 min) are due, and
        # Slack again (polled at minute 16); Notion, Tempo and Fireflies (60 min) are not:
        pass_time(services, 15)
        due_sources = {c.source for c in claim_due(services.pool, SOURCES, limit=100)}
        assert due_sources == {"jira", "github", "slack"}

    def test_status_turns_stale_when_a_source_misses_its_threshold(self, services, sandbox_settings):
        tick(sandbox_settings, services)
        fresh = build_status(services, sandbox_settings)["sources"]["slack"]
        assert fresh["configured"] and fresh["fresh"] is True and fresh["state"] == "fresh"
        later = datetime.now(timezone.utc) + timedelta(seconds=sandbox_settings.source("slack").stale_after + 60)
        # Only this process's clock moves; Postgres and Redis keep real time.
        with freeze_time(later, tick=True, ignore=["psycopg", "psycopg_pool", "redis", "dramatiq", "threading"]):
            report = build_status(services, sandbox_settings)
        assert report["sources"]["slack"]["fresh"] is False
        assert report["sources"]["slack"]["state"] == "stale"
        assert report["healthy"] is False


class TestSharedWork:
    def test_two_reconcilers_never_poll_one_scope_at_once(self, services, sandbox_settings):
        # Discover first so both replicas see the same scopes.
        async def discover() -> None:
            sources = SourceSet(sandbox_settings, services.pool)
            await Reconciler(sandbox_settings, services, sources, "d").discover(SOURCES, force=True)
            await sources.aclose()

        asyncio.run(discover())
        active = len(scope_rows(services))
        results: list[int] = []
        barrier = threading.Barrier(2)

        def replica(name: str) -> None:
            barrier.wait()
            results.append(tick(sandbox_settings, services, owner=name))

        threads = [threading.Thread(target=replica, args=(f"replica-{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # Every scope was reconciled exactly once, shared between the two.
        assert sum(results) == active
        with services.pool.connection() as conn:
            counts = conn.execute(
                "SELECT source, scope, count(*) FROM runs WHERE kind = 'reconcile' GROUP BY source, scope"
            ).fetchall()
        assert len(counts) == active
        assert all(n == 1 for _, _, n in counts)

    def test_concurrent_claims_are_disjoint(self, services, sandbox_settings):
        tick(sandbox_settings, services)
        with services.pool.connection() as conn:
            conn.execute("UPDATE scopes SET next_due_at = now() - interval '1 minute'")
        claims: list[list[str]] = []

        def claim() -> None:
            claims.append([f"{c.source}/{c.key}" for c in claim_due(services.pool, SOURCES, limit=100)])

        threads = [threading.Thread(target=claim) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        flat = [k for c in claims for k in c]
        assert len(flat) == len(set(flat)) == len(scope_rows(services))


def beat_as(services, name: str, seconds_ago: float = 0.0) -> None:
    """A heartbeat row for process ``name``, last written ``seconds_ago``."""
    with services.pool.connection() as conn:
        conn.execute(
            """INSERT INTO heartbeats (process, kind, pid, host, beat_at)
               VALUES (%s, 'reconciler', 1, 'test', now() - make_interval(secs => %s))
               ON CONFLICT (process) DO UPDATE SET beat_at = excluded.beat_at""", (name, seconds_ago))


def add_scopes(services, *keys: str) -> None:
    with services.pool.connection() as conn:
        for key in keys:
            conn.execute("INSERT INTO scopes (source, key, name) VALUES ('jira', %s, %s)", (key, key))


class TestLeases:
    """A claim is a lease owned by a process: short, renewed while the pass runs, released when
    the pass ends or its owner's heartbeat stops (it used to be a fixed 600 s)."""

    def test_a_live_owners_lease_is_respected(self, services):
        add_scopes(services, "A", "B")
        beat_as(services, "r1")
        assert {c.key for c in claim_due(services.pool, ["jira"], owner="r1")} == {"A", "B"}
        assert claim_due(services.pool, ["jira"], owner="r2") == []
        with services.pool.connection() as conn:
            owners = conn.execute("SELECT DISTINCT lease_owner FROM scopes").fetchall()
            left = conn.execute("SELECT min(lease_until - now()) FROM scopes").fetchone()[0]
        assert owners == [("r1",)]
        assert 0 < left.total_seconds() <= LEASE <= 120  # a minute, not ten

    def test_a_dead_owners_scopes_are_taken_over(self, services):
        add_scopes(services, "A")
        beat_as(services, "dead")
        assert [c.key for c in claim_due(services.pool, ["jira"], owner="dead", heartbeat_timeout=5)] == ["A"]
        assert claim_due(services.pool, ["jira"], owner="r2", heartbeat_timeout=5) == []
        beat_as(services, "dead", seconds_ago=10)  # its heartbeat stopped: the lease goes with it
        assert [c.key for c in claim_due(services.pool, ["jira"], owner="r2", heartbeat_timeout=5)] == ["A"]

    def test_an_expired_lease_is_taken_over_and_renewal_keeps_it(self, services):
        add_scopes(services, "A", "B")
        claim_due(services.pool, ["jira"], owner="r1")  # r1 has no heartbeat row: the lease rules
        with services.pool.connection() as conn:
            conn.execute("UPDATE scopes SET lease_until = now() - interval '1 second'")
        assert renew_leases(services.pool, "r1", [("jira", "A")]) == 1  # A renewed, B not
        assert [c.key for c in claim_due(services.pool, ["jira"], owner="r2")] == ["B"]
        assert release_leases(services.pool, "r1", [("jira", "A"), ("jira", "B")]) == 1
        assert [c.key for c in claim_due(services.pool, ["jira"], owner="r3")] == ["A"]

    def test_due_in_waits_for_a_lease_not_for_a_tight_loop(self, services):
        add_scopes(services, "A")
        assert due_in(services.pool, ["jira"]) == 0.0
        claim_due(services.pool, ["jira"], owner="r1")
        wait = due_in(services.pool, ["jira"])
        assert 0 < wait <= LEASE

    def test_a_finished_pass_releases_its_leases(self, services, sandbox_settings):
        tick(sandbox_settings, services, owner="finisher")
        with services.pool.connection() as conn:
            held = conn.execute("SELECT count(*) FROM scopes WHERE lease_owner IS NOT NULL").fetchone()[0]
        assert held == 0


class TestFailures:
    def test_a_failing_source_is_recorded_and_retried_without_losing_its_cursor(self, services, sandbox, sandbox_settings):
        tick(sandbox_settings, services)
        before = {r["key"]: r["cursor"] for r in scope_rows(services) if r["source"] == "github"}
        knobs = f"{sandbox.url('github')}/_sandbox/knobs"
        httpx.put(knobs, json={"fault_rate": 1.0}).raise_for_status()
        try:
            with services.pool.connection() as conn:
                conn.execute("UPDATE scopes SET next_due_at = now() - interval '1 second' WHERE source = 'github'")
            tick(sandbox_settings, services)
        finally:
            httpx.put(knobs, json={"fault_rate": 0.0}).raise_for_status()
        rows = [r for r in scope_rows(services) if r["source"] == "github"]
        assert all(r["last_error"] for r in rows)
        assert {r["key"]: r["cursor"] for r in rows} == before
        # Retried well before the next regular poll, not in a tight loop.
        for row in rows:
            wait = (row["next_due_at"] - row["last_error_at"]).total_seconds()
            assert 30 <= wait <= 90
        report = build_status(services, sandbox_settings)["sources"]["github"]
        assert report["state"] == "failing"
        assert report["last_error"]
        with services.pool.connection() as conn:
            failed = conn.execute("SELECT count(*) FROM runs WHERE source = 'github' AND status = 'failed'").fetchone()[0]
        assert failed == len(rows)
        # When the source recovers, the next pass clears the error.
        with services.pool.connection() as conn:
            conn.execute("UPDATE scopes SET next_due_at = now() - interval '1 second' WHERE source = 'github'")
        tick(sandbox_settings, services)
        assert all(r["last_error"] is None for r in scope_rows(services) if r["source"] == "github")
        assert build_status(services, sandbox_settings)["sources"]["github"]["state"] == "fresh"

    def test_a_failed_listing_prunes_nothing(self, services, sandbox, sandbox_settings, worker_factory):
        worker = worker_factory(sandbox_settings)
        tick(sandbox_settings, services)
        worker.drain()
        with services.pool.connection() as conn:
            held = conn.execute("SELECT count(*) FROM documents WHERE source = 'notion' AND deleted_at IS NULL").fetchone()[0]
            conn.execute("UPDATE scopes SET next_due_at = now() - interval '1 second', next_prune_at = now() "
                         "WHERE source = 'notion'")
        assert held > 0
        knobs = f"{sandbox.url('notion')}/_sandbox/knobs"
        httpx.put(knobs, json={"fault_rate": 1.0}).raise_for_status()
        try:
            tick(sandbox_settings, services)
            worker.drain()
        finally:
            httpx.put(knobs, json={"fault_rate": 0.0}).raise_for_status()
        with services.pool.connection() as conn:
            after = conn.execute("SELECT count(*) FROM documents WHERE source = 'notion' AND deleted_at IS NULL").fetchone()[0]
            prune = conn.execute("SELECT status, error FROM runs WHERE kind = 'prune' AND source = 'notion'").fetchone()
        assert after == held
        assert prune[0] == "failed" and "nothing pruned" in prune[1]


class TestLiveness:
    def test_a_killed_reconciler_is_reported_dead(self, infra, services, settings):
        env = {**os.environ, **BASE_ENV, **infra, "HEARTBEAT_INTERVAL": "0.5", "HEARTBEAT_TIMEOUT": "3"}
        process = subprocess.Popen([sys.executable, "-m", "reconciler"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: build_status(services, settings)["processes_alive"]["reconciler"], timeout=60)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            wait_for(lambda: not build_status(services, settings)["processes_alive"]["reconciler"], timeout=30)
            dead = [p for p in build_status(services, settings)["processes"] if p["kind"] == "reconciler"]
            assert dead and not dead[0]["alive"]
            assert dead[0]["pid"] == process.pid
        finally:
            if process.poll() is None:
                process.kill()

    def test_a_reconciler_stops_cleanly_on_sigterm(self, infra, services, settings):
        env = {**os.environ, **BASE_ENV, **infra, "HEARTBEAT_INTERVAL": "0.5"}
        process = subprocess.Popen([sys.executable, "-m", "reconciler"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: build_status(services, settings)["processes_alive"]["reconciler"], timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        # A clean stop removes its heartbeat: status does not report a dead process.
        assert not [p for p in build_status(services, settings)["processes"] if p["kind"] == "reconciler"]


    def test_the_loop_outlives_an_unreachable_database(self, infra, services, sandbox):
        """Every step of the loop, due_in() included, may find Postgres gone (a closed pool
        answers as a dead server does): the loop reports the outage and keeps going until told
        to stop. due_in() used to run outside the error handling and end the process."""
        from core.heartbeat import Outages
        from core.runtime import open_services
        from reconciler.loop import reconcile_forever

        settings = make_settings(infra, **sandbox.env(), **FAST_BUDGETS)
        gone = open_services(settings, migrate=False, pool_size=1)
        gone.pool.close()
        outages = Outages("test")
        stop = threading.Event()
        errors: list[BaseException] = []
        passes: list[float] = []

        def run() -> None:
            try:
                asyncio.run(reconcile_forever(settings, gone, stop, "outage-test", outages))
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        try:
            wait_for(lambda: "postgres" in outages.current() or errors, timeout=60)
            passes.append(outages.current().get("postgres", 0.0))
            thread.join(3)  # several more attempts, with backoff
            assert thread.is_alive() and not errors, errors
        finally:
            stop.set()
            thread.join(60)
            gone.broker.close()
        assert not thread.is_alive() and not errors
        assert "postgres unreachable since" in outages.info()["outage"]


class TestStopping:
    def test_a_pass_stopped_midway_hands_its_scope_back(self, services, sandbox, sandbox_settings):
        """SIGTERM during a slow pass: the pass is cancelled, its run abandoned, the scope due now."""
        from reconciler.loop import until_stopped

        httpx.put(f"{sandbox.url('jira')}/_sandbox/knobs", json={"latency": 2.0}).raise_for_status()
        stop = threading.Event()

        async def go() -> bool:
            sources = SourceSet(sandbox_settings, services.pool)
            reconciler = Reconciler(sandbox_settings, services, sources, "stopping")
            await reconciler.discover(["jira"], force=True)
            threading.Timer(1.0, stop.set).start()
            try:
                return await until_stopped(reconciler.tick(), stop)
            finally:
                await sources.aclose()

        try:
            finished = asyncio.run(go())
        finally:
            httpx.put(f"{sandbox.url('jira')}/_sandbox/knobs", json={"latency": 0.0}).raise_for_status()
        assert finished is False
        with services.pool.connection() as conn:
            statuses = {r[0] for r in conn.execute("SELECT status FROM runs WHERE source = 'jira'")}
            overdue = conn.execute(
                "SELECT bool_and(next_due_at <= now()) FROM scopes WHERE source = 'jira'").fetchone()[0]
        assert statuses == {"abandoned"}
        assert overdue is True
