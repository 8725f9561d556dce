"""SIGKILL of a worker holding messages, and of a reconciler mid-pass: another process picks the
work up. Real processes (``python -m workers``, ``python -m reconciler``) against the session's
Postgres and Redis and an in-process Jira simulator.

Short form: ``WORKER_RECOVERY_AFTER=5`` and ``HEARTBEAT_TIMEOUT=5``. Full form (``CHAOS=1``):
the production defaults (30 s and 60 s). The seconds until the work is done again are printed
(docs/testing.md); the deadlines are generous bounds, not the figures. Each ends with the drift
audit (``vector-sync verify jira``) at 0 missing, 0 stale, 0 ghost, 0 orphan vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from core import queue, state
from core.documents import Ref
from sandbox.server import SandboxServer, create_simulators
from core.runtime import open_services
from tests.conftest import FAST_BUDGETS, make_settings
from tests.faults.conftest import FULL, Expectations, Proc, figure, pgvector_texts, wait_until, wait_verified


@pytest.fixture(scope="module")
def jira() -> Iterator[SandboxServer]:
    sims = create_simulators(["jira"], profile="small", seed=11)
    sims["jira"].knobs.rate_limit = 0
    server = SandboxServer(sims).start()
    yield server
    server.stop()


def knobs(server: SandboxServer, **values: Any) -> None:
    httpx.put(f"{server.url('jira')}/_sandbox/knobs", json=values, timeout=10).raise_for_status()


@pytest.fixture
def slow_jira(jira: SandboxServer) -> Iterator[SandboxServer]:
    yield jira
    knobs(jira, latency=0.0)


def process_env(infra: dict[str, str], jira: SandboxServer, **extra: str) -> dict[str, str]:
    return {**infra, **jira.env(), **FAST_BUDGETS, "HTTP_TIMEOUT": "120", **extra}


def verified_with_a_reconciler(infra: dict[str, str], env: dict[str, str], procs: Callable[..., Proc],
                               start: bool = True) -> None:
    """The end state: (with a reconciler started, to sync the rest of the seeded projects)
    ``vector-sync verify jira`` reports 0 missing, 0 stale, 0 ghost, 0 orphan vectors."""
    if start:
        procs("reconciler", env)
    settings = make_settings(infra, **{k: v for k, v in env.items() if k not in infra})
    svc = open_services(settings)
    try:
        report = wait_verified(svc, settings, "jira", timeout=180)
        assert report["drift"] == 0 and report["reports"], report
    finally:
        svc.close()


def test_a_killed_workers_messages_are_processed_by_another(
    services: Any, infra: dict[str, str], slow_jira: SandboxServer, procs: Callable[..., Proc]
) -> None:
    recovery = "30" if FULL else "5"
    env = process_env(infra, slow_jira, WORKER_RECOVERY_AFTER=recovery, WORKER_THREADS="2")
    sim = slow_jira.sims["jira"]
    issues = list(sim.issues.values())[:4]
    refs = [Ref("jira", str(i.id), sim.projects[i.project_id].key) for i in issues]
    knobs(slow_jira, latency=600.0)  # every fetch hangs: the worker holds its messages
    broker = services.broker
    # One message per ref: the worker's two threads and its prefetch (4) hold all of them.
    for ref in refs:
        assert queue.enqueue(broker, [ref]) == 1
    doomed = procs("worker", env)
    wait_until(lambda: queue.unacked(broker) and broker.client.llen(f"{queue.NAMESPACE}:{queue.QUEUE}") == 0,
               60, "the first worker to take the messages")
    held_by = set(queue.unacked(broker))
    doomed.kill()
    killed = time.monotonic()
    knobs(slow_jira, latency=0.0)
    procs("worker", env)
    expect = Expectations()
    for ref in refs:
        expect.present(ref.document_id, "")  # indexed at all: a chunk exists
    expect.wait_converged(pgvector_texts(services.pool, services.settings.embedding_dimensions), 150)
    took = time.monotonic() - killed
    assert not (set(queue.unacked(broker)) & held_by)  # the dead worker holds nothing any more
    figure(f"worker SIGKILL: its messages processed by another worker (WORKER_RECOVERY_AFTER={recovery})", took)
    verified_with_a_reconciler(infra, env, procs)


def test_a_killed_reconcilers_scopes_are_polled_again_by_another(
    services: Any, infra: dict[str, str], slow_jira: SandboxServer, procs: Callable[..., Proc]
) -> None:
    timeout = "60" if FULL else "5"
    poll = 30.0
    env = process_env(infra, slow_jira, HEARTBEAT_TIMEOUT=timeout, JIRA_POLL_INTERVAL=f"{poll:g}")
    knobs(slow_jira, latency=2.0)  # a slow pass: it is killed while it runs
    doomed = procs("reconciler", env)

    def leased() -> list[tuple[str, str]]:
        with services.pool.connection() as conn:
            return conn.execute(
                """SELECT s.key, s.lease_owner FROM scopes s JOIN runs r
                       ON r.source = s.source AND r.scope = s.key AND r.status = 'running'
                          AND r.owner = s.lease_owner
                   WHERE s.lease_owner LIKE %s""", (f"%:{doomed.pid}",)).fetchall()

    held = wait_until(leased, 90, "the first reconciler to lease a scope and start its pass")
    doomed.kill()
    killed = time.monotonic()
    knobs(slow_jira, latency=0.0)
    survivor = procs("reconciler", env)
    keys = sorted({key for key, _ in held})

    def polled_again() -> bool:
        with services.pool.connection() as conn:
            done = conn.execute(
                """SELECT count(DISTINCT scope) FROM runs WHERE kind = 'reconcile' AND status = 'succeeded'
                       AND owner LIKE %s AND scope = ANY(%s)""", (f"%:{survivor.pid}", keys)).fetchone()[0]
        return done == len(keys)

    wait_until(polled_again, poll + 60 + 90, "another reconciler to poll the killed one's scopes")
    took = time.monotonic() - killed
    with state.dict_cursor(services.pool) as cur:
        cur.execute("SELECT status FROM runs WHERE owner LIKE %s", (f"%:{doomed.pid}",))
        statuses = {r["status"] for r in cur.fetchall()}
    assert "succeeded" not in statuses  # it really was killed mid-pass
    procs("worker", env)  # what the passes enqueued gets indexed
    verified_with_a_reconciler(infra, env, procs, start=False)
    figure(f"reconciler SIGKILL mid-pass: its {len(keys)} scope(s) polled again by another "
           f"(HEARTBEAT_TIMEOUT={timeout}, poll interval {poll:g}s)", took)
