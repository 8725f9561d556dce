"""End-to-end contract for the polled sources: Tempo worklogs and Fireflies transcripts.

One sandbox (Jira, Tempo, Fireflies; small profile) serves the module. Tempo gives issue ids only,
so its connector resolves them through the Jira simulator and keeps only worklogs of Jira projects
active in our ``scopes`` table (discovered by the reconciler; ``JIRA_PROJECTS`` leaves WEB
inactive here). Fireflies is polled by meeting date and also pushes ``meeting.transcribed``.
Everything runs for real: receiver, worker, Postgres, Redis, and reconciler ticks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core import scopes
from core.runtime import SourceSet
from reconciler.reconcile import Reconciler
from sandbox.server import SandboxServer
from tests.contract.conftest import System, start_sandbox, unique

EXTRA_ENV = {"JIRA_PROJECTS": "SUBS,OPS"}
ACTIVE, INACTIVE = "SUBS", "WEB"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    server = start_sandbox(["jira", "tempo", "fireflies"])
    server.sims["jira"].retry_delay = 0.05  # type: ignore[attr-defined]
    # The seed leaves its newest meeting unprocessed; finish it quietly, so only the test about
    # unprocessed transcripts has one (a pending one fails its job until it is processed).
    fireflies = server.sims["fireflies"]
    pending = [t.id for t in fireflies.transcripts.values() if t.sentences is None]  # type: ignore[attr-defined]
    assert pending, "the small seed should hold an unprocessed transcript"
    for tid in pending:
        httpx.post(f"{server.url('fireflies')}/_sandbox/transcripts/{tid}/process", json={"events": []})
    yield server
    server.stop()


def jira_issue(system: System, project: str) -> dict[str, Any]:
    truth = system.control("jira", "GET", "/jira/truth").json()
    return next(i for i in truth["issues"] if i["project"] == project)


def worklog(system: System, issue: dict[str, Any], description: str) -> int:
    created = system.control("tempo", "POST", "/worklogs",
                             json={"issueId": int(issue["id"]), "timeSpentSeconds": 5400,
                                   "description": description}).json()
    return int(created["tempoWorklogId"])


def words(word: str, n: int = 60) -> str:
    """A description long enough for several chunks (CHUNK_TOKENS=64)."""
    return f"Worked on {word}, all {word}: " + " ".join(f"{word}part{i}" for i in range(n))


# --- Tempo ------------------------------------------------------------------------------------


def test_worklogs_created_edited_and_deleted_reach_the_index_by_polling(system: System) -> None:
    system.reconcile("tempo", "account")  # first pass: every worklog of an active project
    first = system.last_run("reconcile", "tempo")
    assert first["status"] == "succeeded", first
    with system.services.pool.connection() as conn:
        seeded = [r[0] for r in conn.execute(
            "SELECT document_id FROM documents WHERE source = 'tempo' AND chunk_count > 0").fetchall()]
    assert seeded, "no seeded worklog was indexed"
    projects = {system.metadata(d)["project_key"] for d in seeded}
    assert projects <= {"SUBS", "OPS"}, projects

    issue = jira_issue(system, ACTIVE)
    created, edited = unique("logged"), unique("relogged")
    wid = worklog(system, issue, words(created))
    document_id = f"tempo:{wid}"
    assert system.row(document_id) is None
    system.reconcile("tempo", "account")
    assert system.last_run("reconcile", "tempo")["counters"]["since"] is not None
    assert system.found(created, document_id, "tempo")
    meta = system.metadata(document_id)
    assert meta["issue_key"] == issue["key"] and meta["project_key"] == ACTIVE
    chunks = system.chunk_ids(document_id)
    assert len(chunks) >= 2

    system.control("tempo", "PUT", f"/worklogs/{wid}", json={"description": f"Reworked: {edited}, only {edited}."})
    system.reconcile("tempo", "account")
    text = system.chunk_texts(document_id)
    print("DEBUG", system.last_run("reconcile", "tempo"), system.stats("tempo"), text[:300])
    assert edited in text and created not in text
    assert system.found(edited, document_id, "tempo")
    assert len(system.chunk_ids(document_id)) < len(chunks)  # the surplus chunks went

    system.control("tempo", "DELETE", f"/worklogs/{wid}")
    system.reconcile("tempo", "account")  # Tempo lists no deletions: only pruning sees it
    assert system.chunk_ids(document_id), "deleted without a prune"
    system.reconcile("tempo", "account", prune=True)
    prune = system.last_run("prune", "tempo")
    assert prune["status"] == "succeeded" and prune["counters"]["deletes_enqueued"] == 1, prune
    assert system.chunk_ids(document_id) == []
    assert system.row(document_id)["deleted_at"] is not None  # type: ignore[index]
    assert all(system.chunk_ids(d) for d in seeded), "prune removed a live worklog"


def test_worklog_on_an_inactive_jira_project_is_not_indexed(system: System) -> None:
    hidden, shown = unique("hidden"), unique("shown")
    web = worklog(system, jira_issue(system, INACTIVE), f"Worked on {hidden}, all {hidden}.")
    subs = worklog(system, jira_issue(system, ACTIVE), f"Worked on {shown}, all {shown}.")
    system.reconcile("tempo", "account")
    assert system.found(shown, f"tempo:{subs}", "tempo")
    assert system.row(f"tempo:{web}") is None
    assert system.chunk_ids(f"tempo:{web}") == []
    assert not system.found(hidden, f"tempo:{web}", "tempo")
    with system.services.pool.connection() as conn:
        active = conn.execute("SELECT active FROM scopes WHERE source = 'jira' AND key = %s",
                              (INACTIVE,)).fetchone()
    assert active == (False,)

    # Activated, its worklogs come in on the next pass; deactivated, pruning takes them out.
    assert scopes.set_active(system.services.pool, "jira", [INACTIVE], True) == [INACTIVE]
    system.reconcile("tempo", "account")
    assert system.found(hidden, f"tempo:{web}", "tempo")
    scopes.set_active(system.services.pool, "jira", [INACTIVE], False)
    system.reconcile("tempo", "account", prune=True)
    assert system.chunk_ids(f"tempo:{web}") == []
    assert system.found(shown, f"tempo:{subs}", "tempo")


# --- Fireflies --------------------------------------------------------------------------------


def new_meeting(system: System, title: str) -> str:
    """A meeting that began an hour ago (transcripts appear after their meeting), unprocessed."""
    created = system.control("fireflies", "POST", "/transcripts",
                             json={"title": title, "date": int((time.time() - 3600) * 1000)}).json()
    return str(created["id"])


def test_transcripts_created_edited_and_deleted_reach_the_index_by_polling(system: System) -> None:
    system.reconcile("fireflies", "account")
    assert system.last_run("reconcile", "fireflies")["status"] == "succeeded"
    first, second = unique("meeting"), unique("renamed")
    tid = new_meeting(system, f"SUBS planning {first}")
    system.control("fireflies", "POST", f"/transcripts/{tid}/process", json={"events": []})  # no webhook
    document_id = f"fireflies:{tid}"
    system.flush_webhooks("fireflies")
    assert system.row(document_id) is None
    system.reconcile("fireflies", "account")
    assert system.found(first, document_id, "fireflies")
    meta = system.metadata(document_id)
    assert meta["access_type"] == "restricted" and meta["access_list"]
    assert "SUBS" in meta["project_tags"]

    system.control("fireflies", "PATCH", f"/transcripts/{tid}",
                   json={"title": f"OPS review {second}",
                         "summary": {"overview": f"The team reviewed {second}.", "keywords": [second]}})
    system.reconcile("fireflies", "account")
    text = system.chunk_texts(document_id)
    assert second in text and first not in text
    assert system.metadata(document_id)["project_tags"] == ["OPS"]

    system.control("fireflies", "DELETE", f"/transcripts/{tid}")
    system.reconcile("fireflies", "account", prune=True)
    prune = system.last_run("prune", "fireflies")
    assert prune["status"] == "succeeded" and prune["counters"]["deletes_enqueued"] == 1, prune
    assert system.chunk_ids(document_id) == []
    assert system.row(document_id)["deleted_at"] is not None  # type: ignore[index]


def test_a_renamed_transcript_is_indexed_within_one_pass_without_a_webhook(system: System) -> None:
    """Fireflies sends no webhook for a rename and the meeting date, the listing's only filter,
    never moves: a meeting from five days ago stayed stale through every pass."""
    before, after = unique("before"), unique("after")
    created = system.control("fireflies", "POST", "/transcripts",
                             json={"title": f"OPS review {before}",
                                   "date": int((time.time() - 5 * 86400) * 1000)}).json()
    tid, document_id = str(created["id"]), f"fireflies:{created['id']}"
    system.control("fireflies", "POST", f"/transcripts/{tid}/process", json={"events": []})  # no webhook
    newer = new_meeting(system, f"Standup {unique('standup')}")  # an hour ago: the cursor is past
    system.control("fireflies", "POST", f"/transcripts/{newer}/process", json={"events": []})
    system.reconcile("fireflies", "account")  # the first pass lists everything
    system.reconcile("fireflies", "account")
    assert system.last_run("reconcile", "fireflies")["counters"]["since"] is not None
    assert system.last_run("reconcile", "fireflies")["counters"]["cursor"] > time.time() - 2 * 3600
    assert system.found(before, document_id, "fireflies")
    sent = len(system.deliveries("fireflies"))

    system.control("fireflies", "PATCH", f"/transcripts/{tid}", json={"title": f"SUBS review {after}"})
    assert len(system.deliveries("fireflies")) == sent  # a rename sends nothing
    system.reconcile("fireflies", "account")
    assert system.last_run("reconcile", "fireflies")["counters"]["since"] is not None
    assert system.found(after, document_id, "fireflies"), "the rename was not picked up"
    meta = system.metadata(document_id)
    assert after in meta["title"] and before not in meta["title"]
    assert "SUBS" in meta["project_tags"]
    # Unchanged transcripts in the recheck window are not fetched again on every pass.
    refs = system.last_run("reconcile", "fireflies")["counters"]["refs"]
    system.reconcile("fireflies", "account")
    assert system.last_run("reconcile", "fireflies")["counters"]["refs"] <= refs - 1


def test_unprocessed_transcript_is_not_indexed_until_processed(system: System) -> None:
    system.reconcile("fireflies", "account")  # the seeded meetings, and a cursor
    word = unique("pending")
    tid = new_meeting(system, f"OPS standup {word}")
    document_id = f"fireflies:{tid}"
    deferred = system.stats("fireflies")["deferred"]
    system.reconcile("fireflies", "account")
    assert system.last_run("reconcile", "fireflies")["counters"]["refs"] >= 1
    # Listed and fetched, but it has no sentences yet: deferred, not indexed, not stored empty,
    # not deleted, and not a failure that would retry in a storm.
    assert system.stats("fireflies")["deferred"] == deferred + 1
    assert system.stats("fireflies")["failed"] == 0
    row = system.row(document_id)  # remembered as deferred, with no content and no chunks
    assert row is not None and row["chunk_count"] == 0 and row["content_hash"] is None
    assert row["deleted_at"] is None and row["last_error"] is None
    assert system.chunk_ids(document_id) == []
    assert system.queue_depth() == 0

    system.control("fireflies", "POST", f"/transcripts/{tid}/process", json={"events": []})  # no webhook
    system.reconcile("fireflies", "account")  # the next pass lists it again, processed now
    assert system.found(word, document_id, "fireflies")
    row = system.row(document_id)
    assert row is not None and row["chunk_count"] >= 1 and row["deleted_at"] is None
    assert row["content_hash"] is not None


def test_search_by_project_key_finds_that_projects_meetings(system: System) -> None:
    system.reconcile("fireflies", "account")
    with system.services.pool.connection() as conn:
        indexed = [r[0] for r in conn.execute(
            "SELECT document_id FROM documents WHERE source = 'fireflies' AND chunk_count > 0").fetchall()]
    tagged = {d for d in indexed if ACTIVE in system.metadata(d)["project_tags"]}
    assert tagged and len(tagged) < len(indexed), (tagged, indexed)
    results = system.search(ACTIVE, "fireflies", top_k=len(tagged))
    assert {r["source"] for r in results} == {"fireflies"}
    assert {r["document_id"] for r in results} == tagged
    for result in results:  # tagged by key or by the project's name; either matches the query
        assert ACTIVE.lower() in f"{result['title']} {result['text']}".lower()


def test_fireflies_webhook_leads_to_indexing(system: System) -> None:
    word = unique("pushed")
    tid = new_meeting(system, f"SUBS standup {word}")
    system.control("fireflies", "POST", f"/transcripts/{tid}/process", json={})  # meeting.transcribed
    system.settle("fireflies")
    delivery = system.deliveries("fireflies")[-1]
    assert delivery.status == 200 and b"meeting.transcribed" in delivery.body
    assert system.run_count() == 0  # no reconciler pass: the webhook alone
    assert system.found(word, f"fireflies:{tid}", "fireflies")


def test_a_deferred_transcript_is_asked_for_again_however_late(system: System) -> None:
    """Once the overlap window has moved past a meeting, listing no longer finds it; the
    deferred record still brings it in when it is finally processed, webhook lost or not."""
    system.reconcile("fireflies", "account")
    word = unique("latecomer")
    tid = new_meeting(system, f"OPS retro {word}")
    document_id = f"fireflies:{tid}"
    system.reconcile("fireflies", "account")
    assert system.row(document_id)["content_hash"] is None  # type: ignore[index]
    system.control("fireflies", "POST", f"/transcripts/{tid}/process", json={"events": []})  # no webhook
    with system.services.pool.connection() as conn:  # as if asked a while ago
        conn.execute("UPDATE documents SET checked_at = now() - interval '1 hour' WHERE document_id = %s",
                     (document_id,))

    async def ask_again() -> int:
        sources = SourceSet(system.settings, system.services.pool)
        try:
            return await Reconciler(system.settings, system.services, sources, "t").retry_deferred("fireflies")
        finally:
            await sources.aclose()

    assert asyncio.run(ask_again()) == 1  # without any listing
    system.worker.drain()
    assert system.found(word, document_id, "fireflies")
    with system.services.pool.connection() as conn:
        deferred_at = conn.execute("SELECT deferred_at FROM documents WHERE document_id = %s",
                                   (document_id,)).fetchone()[0]
    assert deferred_at is None


# --- prune retries ------------------------------------------------------------------------------


def _prune_once(system: System, settings: Any) -> None:
    """One tick with only Fireflies' prune due (and its reconcile), under ``settings``."""
    async def one_tick() -> int:
        sources = SourceSet(settings, system.services.pool)
        try:
            reconciler = Reconciler(settings, system.services, sources, "prune-test")
            await reconciler.discover(sources.configured(), force=True)
            await asyncio.to_thread(system._make_due, "fireflies", "account", True)
            return await reconciler.tick()
        finally:
            await sources.aclose()

    assert asyncio.run(one_tick()) == 1


def _prune_due_in(system: System) -> float:
    with system.services.pool.connection() as conn:
        row = conn.execute("""SELECT extract(epoch FROM next_prune_at - now()) FROM scopes
                              WHERE source = 'fireflies' AND key = 'account'""").fetchone()
    return float(row[0])


def test_a_failed_prune_listing_is_retried_on_prune_interval_with_backoff(system: System) -> None:
    """A failed listing used to be retried after a fixed hour, whatever PRUNE_INTERVAL said."""
    system.reconcile("fireflies", "account")
    short = system.settings.replace(prune_interval=120.0)
    daily = system.settings.replace(prune_interval=86400.0)
    system.knobs("fireflies", fault_rate=1.0)
    try:
        _prune_once(system, short)
        assert system.last_run("prune", "fireflies")["status"] == "failed"
        assert 0 < _prune_due_in(system) <= 120, "a retry later than PRUNE_INTERVAL itself"

        # With a daily interval, retries come after minutes (5 min doubling with each failure in
        # a row: this is the second and third), not after an hour or a day.
        delays = []
        for _ in range(2):
            _prune_once(system, daily)
            assert system.last_run("prune", "fireflies")["status"] == "failed"
            delays.append(_prune_due_in(system))
        assert 0 < delays[0] <= 600 and 0 < delays[1] <= 1200, delays
        assert delays[1] > delays[0], delays
    finally:
        system.knobs("fireflies", fault_rate=0.0)
    # Once the listing works again the next prune is a full interval away.
    _prune_once(system, daily)
    assert system.last_run("prune", "fireflies")["status"] == "succeeded"
    assert _prune_due_in(system) > 86000
