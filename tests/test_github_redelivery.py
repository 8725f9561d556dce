"""GitHub gap repair (issue 15): a webhook the simulator dropped is redelivered by the
reconciler's short-cadence repair and indexed before the next poll; GitHub's refusal to
redeliver falls back to enqueueing what the delivery named; no delivery is redelivered twice;
two reconcilers never run the repair at once.

Real receiver, worker, reconciler loop, Postgres and Redis against the GitHub simulator. The
poll interval is a day and every repo was just polled, so only the repair can index the issue.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from core import state
from core.runtime import SourceSet
from reconciler import redeliver
from reconciler.loop import reconcile_forever
from reconciler.reconcile import Reconciler
from sandbox.server import SandboxServer
from tests.conftest import wait_for
from tests.contract.conftest import System, start_sandbox, unique
# The whole-system fixtures of the contract suite (module-scoped receiver and worker).
from tests.contract.conftest import module_settings, settings, stack, system  # noqa: F401

HOOK = "orgs/acme/hooks/424242"
EXTRA_ENV = {"GITHUB_HOOK": HOOK, "GITHUB_REDELIVERY_INTERVAL": "1s", "GITHUB_POLL_INTERVAL": "1d",
             "VERIFY_INTERVAL": "0"}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    server = start_sandbox(["github"])
    yield server
    server.stop()


def polled_long_ago(system: System) -> None:
    """Every repo discovered and not due for a day: the reconciler will not poll in this test."""
    async def discover() -> None:
        sources = SourceSet(system.settings, system.services.pool)
        try:
            await Reconciler(system.settings, system.services, sources, "test").discover(["github"], force=True)
        finally:
            await sources.aclose()

    asyncio.run(discover())
    with system.services.pool.connection() as conn:
        conn.execute("UPDATE scopes SET next_due_at = now() + interval '1 day'")


class Loop:
    """``reconcile_forever`` in a thread, as the reconciler process runs it."""

    def __init__(self, system: System, owner: str = "reconciler@test") -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=lambda: asyncio.run(reconcile_forever(system.settings, system.services, self.stop, owner)),
            daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def loop(system: System) -> Iterator[Any]:
    loops: list[Loop] = []

    def start(owner: str = "reconciler@test") -> Loop:
        loops.append(Loop(system, owner))
        return loops[-1]

    yield start
    for one in loops:
        one.close()
    system.control("github", "PUT", "/hook", json={"refuse_redelivery": None})


def repair_state(system: System) -> dict[str, Any]:
    return dict(state.kv_get(system.services.pool, redeliver.KEY) or {})


def reconcile_runs(system: System) -> int:
    with system.services.pool.connection() as conn:
        return int(conn.execute("SELECT count(*) FROM runs WHERE kind = 'reconcile'").fetchone()[0])


def dropped_issue(system: System, word: str) -> tuple[str, str]:
    """An issue whose webhook the simulator drops (recorded as a failed delivery, status 0)."""
    system.knobs("github", webhook_drop_rate=1.0)
    issue = system.control("github", "POST", "/repos/acme/api/issues",
                           json={"title": f"Lost {word}", "body": f"About {word} {word}."}).json()
    system.flush_webhooks("github")
    system.knobs("github", webhook_drop_rate=0.0)
    sent = [d for d in system.deliveries("github") if d.headers.get("X-GitHub-Delivery") == issue["delivery"]]
    assert len(sent) == 1 and sent[0].dropped  # never reached the receiver
    return f"github:acme/api/issues/{issue['number']}", issue["delivery"]


def test_dropped_webhook_is_redelivered_and_indexed_before_the_next_poll(system: System, loop: Any) -> None:
    polled_long_ago(system)
    word = unique("dropped")
    document_id, guid = dropped_issue(system, word)
    assert system.row(document_id) is None

    loop()
    wait_for(lambda: system.row(document_id) is not None and system.row(document_id)["chunk_count"], 60)
    system.worker.drain()
    assert system.found(word, document_id, "github")
    assert reconcile_runs(system) == 0  # no poll: the repair did it
    attempts = [d for d in system.deliveries("github") if d.headers.get("X-GitHub-Delivery") == guid]
    assert len(attempts) == 2 and attempts[1].status == 200  # same GUID, sent once more, accepted
    recorded = wait_for(lambda: repair_state(system).get("redelivered") == 1 and repair_state(system), 30)
    assert recorded["last_run_at"] and recorded["enqueued"] == 0

    # Later runs (every second) leave it alone: it has a successful attempt now, and its GUID is
    # claimed for good.
    runs = recorded["runs"]
    wait_for(lambda: repair_state(system).get("runs", 0) >= runs + 2, 30)
    assert repair_state(system)["redelivered"] == 1
    assert len([d for d in system.deliveries("github") if d.headers.get("X-GitHub-Delivery") == guid]) == 2


def test_refused_redelivery_enqueues_what_the_delivery_named(system: System, loop: Any) -> None:
    polled_long_ago(system)
    system.control("github", "PUT", "/hook", json={"refuse_redelivery": 422})  # as past GitHub's retention
    word = unique("refused")
    document_id, guid = dropped_issue(system, word)

    loop()
    wait_for(lambda: repair_state(system).get("enqueued") == 1, 60)
    system.worker.drain()
    assert system.found(word, document_id, "github")
    assert reconcile_runs(system) == 0
    assert repair_state(system)["redelivered"] == 0
    # Nothing was sent again: the documents were enqueued from the stored payload.
    assert len([d for d in system.deliveries("github") if d.headers.get("X-GitHub-Delivery") == guid]) == 1


def test_two_reconcilers_never_repair_at_once_nor_twice(system: System) -> None:
    pool = system.services.pool
    first = redeliver.claim_run(pool, "reconciler@a")
    assert first is not None
    assert redeliver.claim_run(pool, "reconciler@b") is None  # leased to a
    done = redeliver.finish_run(pool, "reconciler@a", first["now"], 3600.0, redelivered=2)
    assert done["lease_owner"] is None and done["redelivered"] == 2
    assert redeliver.claim_run(pool, "reconciler@b") is None  # not due for an hour
    # The GUID claim is what keeps a delivery from a second redelivery, across runs and replicas.
    assert state.claim_delivery(pool, redeliver.CLAIMS, "guid-1", redeliver.CLAIM_TTL)
    assert not state.claim_delivery(pool, redeliver.CLAIMS, "guid-1", redeliver.CLAIM_TTL)


def test_a_lease_whose_holder_went_silent_is_taken_over(system: System) -> None:
    pool = system.services.pool
    state.beat(pool, "reconciler", "reconciler@dead")
    assert redeliver.claim_run(pool, "reconciler@dead") is not None
    assert redeliver.claim_run(pool, "reconciler@b", heartbeat_timeout=60.0) is None  # holder alive
    with pool.connection() as conn:
        conn.execute("UPDATE heartbeats SET beat_at = now() - interval '10 minutes' WHERE process = 'reconciler@dead'")
    taken = redeliver.claim_run(pool, "reconciler@b", heartbeat_timeout=60.0)
    assert taken is not None and taken["lease_owner"] == "reconciler@b"
