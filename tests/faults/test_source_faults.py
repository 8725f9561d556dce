"""Simulator faults, source by source, each ending with the drift audit at 0/0/0/0.

Against the sandbox simulators (Jira, GitHub, Slack pushing; Tempo polled) with a real receiver
(the simulators' webhook target), a real Dramatiq worker, real Postgres and Redis, and
reconciler passes (``Reconciler.tick()``, see tests/contract/conftest.py). Each test makes edits,
creates and deletes upstream while a fault holds, checks that status showed the fault while it
lasted (the source ``failing`` with a reason, ``healthy`` false), lifts it, lets the system
converge (reconciler passes, the queue drained) and then runs the drift audit
(``core.verify.Auditor``, what ``vector-sync verify`` runs): 0 missing, 0 stale, 0 ghost,
0 orphan vectors, and the source no longer failing.

The faults: a 5xx burst (``fault_rate`` 1.0: every API call answered 500 or 503 + Retry-After),
dropped webhooks (``webhook_drop_rate`` 1.0: status learns of it from the audit's drift),
duplicated and reordered webhooks (deliveries posted again, older after newer), and a poison
document (the OpenAI simulator refuses any input holding ``reject_marker``; the module embeds
through it).

What verify says about a poison document: it is **missing** (live at the source, not
searchable: the audit reports what the index lacks, whatever the cause), and it is not silent:
``state.failed_documents`` names it with its stage (``embed``) and error, and status makes its
source ``failing`` ("1 document failing for over ..."). Repair re-enqueues it and it fails
again, alone; once the document is fixed upstream it converges like any other. Short and full
forms are the same here (each test takes seconds); the seconds to converge are printed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.runtime import SourceSet
from core.status import build_status
from core.verify import INDEX, Auditor, summary
from sandbox.server import SandboxServer
from tests.contract.conftest import (  # noqa: F401 - fixtures used by name
    System,
    module_settings,
    settings,
    stack,
    start_sandbox,
    system,
    unique,
)
from tests.contract.test_push_sources import GitHubAdapter, Item, JiraAdapter, SlackAdapter
from tests.faults.conftest import figure, wait_until

#: A document failing for over a second makes its source failing (the default is a minute).
EXTRA_ENV = {"JIRA_PROJECTS": "", "DOCUMENT_FAILING_AFTER": "1"}

ADAPTERS = {"jira": JiraAdapter(), "github": GitHubAdapter(), "slack": SlackAdapter()}
PUSHING = list(ADAPTERS)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    server = start_sandbox(["jira", "github", "slack", "tempo", "openai"])
    server.sims["jira"].retry_delay = 0.05  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def faulty(system: System) -> Iterator[System]:
    """``system``, with every fault knob lifted again at teardown, pass or fail."""
    yield system
    for name in system.sandbox.sims:
        system.knobs(name, fault_rate=0.0, webhook_drop_rate=0.0, rate_limit=0)
    system.control("openai", "PUT", "/faults", json={})


# --- helpers ------------------------------------------------------------------------------------


def audit(system: System, source: str, key: str) -> dict[str, Any]:
    """The drift audit of one scope plus the whole-index orphan check (``vector-sync verify
    SOURCE --scope KEY`` and the orphan run), as the CLI's ``--json`` summary."""

    async def run() -> dict[str, Any]:
        sources = SourceSet(system.settings, system.services.pool)
        try:
            auditor = Auditor(system.services, sources, "faults-test")
            return summary(await auditor.run_all(auditor.targets(source, key) + [(INDEX, None)]))
        finally:
            await sources.aclose()

    return asyncio.run(run())


def zero(report: dict[str, Any]) -> bool:
    return (report["failed"] == 0 and report["skipped"] == 0 and report["missing"] == 0
            and report["stale"] == 0 and report["ghost"] == 0 and report["orphan_vectors"] == 0)


def source_status(system: System, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    status = build_status(system.services, system.settings)
    return status, status["sources"][source]


def failing(system: System, source: str) -> dict[str, Any] | None:
    """The status report while ``source`` is failing with a reason and the system unhealthy."""
    status, src = source_status(system, source)
    if src["state"] == "failing" and src["reason"] and not status["healthy"] and status["reasons"]:
        return status
    return None


def converge(system: System, source: str, key: str, timeout: float = 120.0) -> tuple[float, dict[str, Any]]:
    """Reconcile ``key`` (with its prune) and drain until the audit says 0/0/0/0; the seconds it
    took and the last report."""
    start = time.monotonic()
    last: list[dict[str, Any]] = []

    def clean() -> bool:
        system.reconcile(source, key, prune=True)
        last[:] = [audit(system, source, key)]
        return zero(last[0])

    try:
        wait_until(clean, timeout, f"{source}/{key}: verify to report 0/0/0/0", interval=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last[0] if last else 'no report'}") from None
    return time.monotonic() - start, last[0]


def not_failing(system: System, source: str) -> None:
    def ok() -> bool:
        status, src = source_status(system, source)
        return src["state"] != "failing" and not any(r.startswith(f"{source}") for r in status["reasons"]
                                                     if "drift" in r or "failing" in r)

    wait_until(ok, 60, f"{source}: status to stop saying failing")


def baseline(system: System, source: str) -> tuple[str, list[Item]]:
    """A scope with three items, indexed, audited clean."""
    adapter = ADAPTERS[source]
    key = adapter.scope(system)
    items = [adapter.create(system, key, f"Fault item {n}", f"Before the fault: {unique('base')}")
             for n in range(3)]
    system.settle(source)
    converge(system, source, key)
    return key, items


# --- 5xx burst -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", PUSHING)
def test_a_5xx_burst_shows_as_failing_then_converges(faulty: System, source: str) -> None:
    system, adapter = faulty, ADAPTERS[source]
    key, (edited, deleted, _) = baseline(system, source)
    system.knobs(source, fault_rate=1.0)
    marker = unique("during5xx")
    adapter.edit(system, edited, f"Edited during the burst: {marker} {marker}")
    created = adapter.create(system, key, "Made during the burst", f"New during the burst {marker}")
    adapter.delete(system, deleted)
    system.flush_webhooks(source)  # each webhook's fetch is answered 5xx
    system.reconcile(source, key, drain=False)  # and so is the pass's listing
    status = wait_until(lambda: failing(system, source), 60, f"{source}: status to show the 5xx burst")
    assert status["sources"][source]["state"] == "failing"
    lifted = time.monotonic()
    system.knobs(source, fault_rate=0.0)
    _, report = converge(system, source, key)
    assert marker in system.chunk_texts(edited.document_id)
    assert system.chunk_ids(created.document_id) and not system.chunk_ids(deleted.document_id)
    not_failing(system, source)
    figure(f"{source} 5xx burst lifted -> verify 0/0/0/0", time.monotonic() - lifted)
    assert report["drift"] == 0 and report["reports"], report


def test_a_5xx_burst_on_a_polled_source_shows_as_failing_then_converges(faulty: System) -> None:
    system = faulty
    truth = system.control("jira", "GET", "/jira/truth").json()
    issue = truth["issues"][0]
    converge(system, "tempo", "account")
    system.knobs("tempo", fault_rate=1.0)
    marker = unique("tempo5xx")
    created = system.control("tempo", "POST", "/worklogs",
                             json={"issueId": int(issue["id"]), "timeSpentSeconds": 1800,
                                   "description": f"Logged during the burst {marker} {marker}"}).json()
    system.reconcile("tempo", "account", drain=False)
    wait_until(lambda: failing(system, "tempo"), 60, "tempo: status to show the 5xx burst")
    lifted = time.monotonic()
    system.knobs("tempo", fault_rate=0.0)
    converge(system, "tempo", "account")
    assert marker in system.chunk_texts(f"tempo:{created['tempoWorklogId']}")
    not_failing(system, "tempo")
    figure("tempo 5xx burst lifted -> verify 0/0/0/0", time.monotonic() - lifted)


# --- dropped webhooks ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", PUSHING)
def test_dropped_webhooks_show_as_drift_then_the_reconciler_repairs(faulty: System, source: str) -> None:
    system, adapter = faulty, ADAPTERS[source]
    key, (edited, deleted, _) = baseline(system, source)
    system.knobs(source, webhook_drop_rate=1.0)
    marker = unique("dropped")
    # GitHub's updated_at has one-second resolution: an edit within the second of the indexed
    # version cannot be told from it by any timestamp, and verify compares timestamps (the next
    # pass still re-reads it: the overlap window lists it again and its content hash differs).
    time.sleep(1.1)
    adapter.edit(system, edited, f"Edited, webhook dropped: {marker} {marker}")
    created = adapter.create(system, key, "Made, webhook dropped", f"Never announced {marker}")
    adapter.delete(system, deleted)
    system.settle(source)
    # Nothing failed: the audit is what finds the drift, and status shows it.
    with system.services.pool.connection() as conn:
        audit_started = conn.execute("SELECT now()").fetchone()[0]
    during = audit(system, source, key)
    assert during["missing"] >= 1 and during["ghost"] >= 1, during
    if during["stale"] == 0:
        # Not drift only if the index already held the edit when the audit read it: another job
        # (a pass's access refresh re-syncs a scope's documents, and lags on a loaded machine)
        # may have fetched the edited document after the edit, webhook or not.
        with system.services.pool.connection() as conn:
            indexed_at = conn.execute("SELECT indexed_at FROM documents WHERE document_id = %s",
                                      (edited.document_id,)).fetchone()[0]
        assert indexed_at is not None and indexed_at < audit_started, (during, indexed_at, audit_started)
        assert marker in system.chunk_texts(edited.document_id), during
    assert created.document_id in next(r for r in during["reports"] if r["scope"] == key)["samples"]["missing"]
    wait_until(lambda: failing(system, source), 60, f"{source}: status to show the drift")
    lifted = time.monotonic()
    system.knobs(source, webhook_drop_rate=0.0)
    converge(system, source, key)
    assert system.chunk_ids(created.document_id) and not system.chunk_ids(deleted.document_id)
    assert marker in system.chunk_texts(edited.document_id)
    not_failing(system, source)
    figure(f"{source} dropped webhooks -> verify 0/0/0/0", time.monotonic() - lifted)


# --- duplicated and reordered webhooks -------------------------------------------------------------


@pytest.mark.parametrize("source", PUSHING)
def test_duplicated_and_reordered_webhooks_end_in_the_latest_state(faulty: System, source: str) -> None:
    system, adapter = faulty, ADAPTERS[source]
    key, (edited, deleted, _) = baseline(system, source)
    first = len(system.deliveries(source))
    older, newer = unique("older"), unique("newer")
    adapter.edit(system, edited, f"First edit {older} {older}")
    system.settle(source)
    adapter.edit(system, edited, f"Second edit {newer} {newer}")
    adapter.delete(system, deleted)
    system.settle(source)
    sent = [d for d in system.deliveries(source)[first:] if not d.dropped]
    assert len(sent) >= 2, sent
    # Every delivery again, newest first (the older edit's event after the newer), twice.
    for delivery in list(reversed(sent)) * 2:
        response = system.post_delivery(source, delivery.body, delivery.headers)
        assert response.status_code < 500, response.text
    system.worker.drain()
    assert newer in system.chunk_texts(edited.document_id)
    assert older not in system.chunk_texts(edited.document_id)
    assert not system.chunk_ids(deleted.document_id)
    report = audit(system, source, key)
    assert zero(report), report
    not_failing(system, source)


# --- a poison document ------------------------------------------------------------------------------


def test_a_poison_document_shows_as_a_failed_document_and_as_missing_not_silent_drift(faulty: System) -> None:
    from core import state

    system, adapter = faulty, ADAPTERS["jira"]
    key, (neighbour, *_) = baseline(system, "jira")
    poison = unique("POISONPILL")
    system.control("openai", "PUT", "/faults", json={"reject_marker": poison})
    bad = adapter.create(system, key, "A document the embedder refuses", f"It carries the {poison} marker")
    fine = unique("neighbour")
    adapter.edit(system, neighbour, f"Edited next to the poison: {fine} {fine}")
    system.settle("jira")
    # The neighbour is indexed; the poison one fails alone, recorded with its stage.
    assert fine in system.chunk_texts(neighbour.document_id)
    assert not system.chunk_ids(bad.document_id)
    failed = {d["document_id"]: d for d in state.failed_documents(system.services.pool, "jira")}
    assert failed[bad.document_id]["stage"] == "embed", failed
    # verify: missing (exactly that document), never 0/0/0/0 while it cannot be indexed.
    report = audit(system, "jira", key)
    scope_report = next(r for r in report["reports"] if r["scope"] == key)
    assert scope_report["samples"]["missing"] == [bad.document_id], report
    assert report["stale"] == report["ghost"] == report["orphan_vectors"] == 0, report
    def failed_document_shown() -> dict[str, Any] | None:
        status = failing(system, "jira")
        shown = status and any(r.startswith("jira") and "document failing" in r for r in status["reasons"])
        return status if shown else None

    status = wait_until(failed_document_shown, 60, "jira: status to show the failed document")
    assert status["documents_failing"] >= 1, status
    # Fixed upstream (the marker edited out), it converges like any other document.
    lifted = time.monotonic()
    adapter.edit(system, bad, "The marker is gone now")
    system.settle("jira")
    converge(system, "jira", key)
    assert system.chunk_ids(bad.document_id)
    assert bad.document_id not in {d["document_id"] for d in state.failed_documents(system.services.pool, "jira")}
    not_failing(system, "jira")
    figure("jira poison document fixed upstream -> verify 0/0/0/0", time.monotonic() - lifted)


# --- 429 with Retry-After ---------------------------------------------------------------------------


def test_429s_with_retry_after_are_waited_out_and_the_index_converges(faulty: System) -> None:
    """Jira at 2 requests a second (our side's budget is 1000/s here): the simulator answers
    429 + Retry-After; the client waits as told, so webhook fetches and the pass succeed late,
    not fail. Status does not turn red for a slow-down it waits out (nothing failed); what it
    must not do is stay failing afterwards, and the audit must come out clean."""
    system, adapter = faulty, ADAPTERS["jira"]
    key, (edited, deleted, _) = baseline(system, "jira")
    sim = system.sandbox.sims["jira"]
    before = sim.throttled  # type: ignore[attr-defined]
    system.knobs("jira", rate_limit=2)
    try:
        marker = unique("throttled")
        adapter.edit(system, edited, f"Edited under the rate limit: {marker} {marker}")
        created = [adapter.create(system, key, f"Made under the rate limit {n}", f"Throttled {marker}")
                   for n in range(6)]
        adapter.delete(system, deleted)
        system.settle("jira")
        system.reconcile("jira", key, prune=True)
        assert sim.throttled > before, "the simulator never answered 429"  # type: ignore[attr-defined]
        report = audit(system, "jira", key)
    finally:
        system.knobs("jira", rate_limit=0)
    lifted = time.monotonic()
    if not zero(report):
        converge(system, "jira", key)
    assert marker in system.chunk_texts(edited.document_id)
    assert all(system.chunk_ids(c.document_id) for c in created) and not system.chunk_ids(deleted.document_id)
    not_failing(system, "jira")
    figure("jira 429 + Retry-After: rate limit lifted -> verify 0/0/0/0", time.monotonic() - lifted)
