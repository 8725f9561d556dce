"""Never list a scope twice at once (issue 12): a reconcile pass leaves alone a scope that a
backfill is listing, and afterwards continues from the cursor the backfill reached.

Counted on the Jira simulator's side (its per-handler request counter), with a real Postgres and
Redis. The reconcile pass runs *inside* the backfill's listing: the backfill's progress callback
(called after a page is enqueued and saved, before the listing goes on) runs a whole tick in
another thread and waits for it, so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core import scopes as scope_rows
from core.runtime import Services, SourceSet
from core.settings import Settings
from reconciler.backfill import create_run, owner_name
from reconciler.reconcile import Reconciler, claim_due
from sandbox.jira import JiraSimulator
from sandbox.server import SandboxServer
from tests.conftest import FAST_BUDGETS, make_settings, reconcile_tick, run_backfill, running_sandbox

LISTING = ("search", "bulkfetch", "get_issue")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with running_sandbox("jira", seed=12) as server:
        yield server


@pytest.fixture
def settings(infra: dict[str, str], sandbox: SandboxServer) -> Settings:
    return make_settings(infra, **sandbox.env(), **FAST_BUDGETS)


def sim_of(sandbox: SandboxServer) -> JiraSimulator:
    jira = sandbox.sims["jira"]
    assert isinstance(jira, JiraSimulator)
    return jira


def listing_calls(sim: JiraSimulator) -> int:
    return sum(sim.calls[name] for name in LISTING)


tick = reconcile_tick
backfill = run_backfill


def discover(settings: Settings, services: Services) -> None:
    async def go() -> None:
        sources = SourceSet(settings, services.pool)
        try:
            await Reconciler(settings, services, sources, "test-reconciler").discover(["jira"], force=True)
        finally:
            await sources.aclose()

    asyncio.run(go())


def rows(services: Services) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in scope_rows.list_scopes(services.pool, "jira")}


def reconcile_runs(services: Services) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    with services.pool.connection() as conn:
        return [(r[0], r[1], r[2]) for r in conn.execute(
            "SELECT scope, params, counters FROM runs WHERE kind = 'reconcile' ORDER BY id").fetchall()]


def test_reconcile_during_a_backfill_lists_nothing_then_continues_from_its_cursor(
        settings: Settings, services: Services, sandbox: SandboxServer) -> None:
    sim = sim_of(sandbox)
    discover(settings, services)
    keys = sorted(rows(services))
    assert len(keys) == 3 and all(r["cursor"] is None for r in rows(services).values())
    run_id = create_run(services.pool, "jira", [], None, owner=owner_name())
    during: dict[str, int] = {}

    def on_progress(info: dict[str, Any]) -> None:
        if info.get("scope") is None or info.get("scope_done") or during:
            return
        # Mid-listing (a page enqueued, the scopes not done): a whole reconcile tick runs now.
        before = listing_calls(sim)
        worker = threading.Thread(target=lambda: during.update(claimed=tick(settings, services)))
        worker.start()
        worker.join(120)
        during["listing"] = listing_calls(sim) - before

    sim.calls.clear()
    counters = backfill(settings, services, run_id, on_progress)
    # The tick ran, claimed none of the scopes being listed, and asked Jira nothing.
    assert during == {"claimed": 0, "listing": 0}
    assert reconcile_runs(services) == []
    # The backfill itself: every issue, for one id search and ceil(n/100) bulkfetches (3 projects).
    truth = [i for i in sim.issues.values()]
    assert counters["listed"] == len(truth) >= 30
    assert sim.calls["search"] == 1 and sim.calls["bulkfetch"] == math.ceil(len(truth) / 100)
    sizes = {k: sum(1 for i in truth if sim.projects[i.project_id].key == k) for k in keys}
    # Each scope's cursor is the newest update the backfill saw there; nothing is due at once.
    newest = {k: max(i.updated for i in truth if sim.projects[i.project_id].key == k) / 1000 for k in keys}
    after = rows(services)
    assert {k: after[k]["cursor"] for k in keys} == pytest.approx(newest)
    assert tick(settings, services) == 0

    # When a scope falls due, its pass lists only what changed since that cursor: one search.
    with httpx.Client(base_url=sandbox.url("jira") + "/_sandbox/jira") as ctl:
        made = ctl.post("/issues", json={"project": keys[0], "summary": "after the backfill"}).json()
    scope_rows.make_due(services.pool, "jira", keys)
    sim.calls.clear()
    assert tick(settings, services) == 3
    assert dict(sim.calls)["search"] == 3 and sim.calls["bulkfetch"] == 0
    runs = {scope: (params, counters) for scope, params, counters in reconcile_runs(services)}
    for key in keys:
        params, counted = runs[key]
        assert params["since"] == pytest.approx(newest[key] - settings.reconcile_overlap)
        assert counted["refs"] < sizes[key]  # only the window is listed, not the whole project
    assert runs[keys[0]][1]["refs"] >= 1 and rows(services)[keys[0]]["cursor"] > newest[keys[0]]
    assert made["id"]


def test_a_scope_claimed_before_the_backfill_began_is_handed_to_it(
        settings: Settings, services: Services, sandbox: SandboxServer) -> None:
    sim = sim_of(sandbox)
    discover(settings, services)
    claimed = claim_due(services.pool, ["jira"], owner="test-reconciler")
    assert len(claimed) == 3
    keys = [c.key for c in claimed[:1]]
    create_run(services.pool, "jira", keys, None, owner=owner_name())
    sim.calls.clear()

    async def passes() -> list[dict[str, Any]]:
        sources = SourceSet(settings, services.pool)
        try:
            reconciler = Reconciler(settings, services, sources, "test-reconciler")
            return [await reconciler.reconcile_scope(item) for item in claimed]
        finally:
            await sources.aclose()

    results = asyncio.run(passes())
    # The backfill's scope is given back untouched; the two others are listed as usual.
    assert results[0] == {"deferred_to_backfill": True}
    assert all(r.get("pages", 0) >= 1 for r in results[1:])
    assert [scope for scope, _, _ in reconcile_runs(services)] == [c.key for c in claimed[1:]]
    assert sim.calls["search"] == 2
    row = rows(services)[keys[0]]
    assert row["cursor"] is None and row["last_error"] is None


@pytest.mark.parametrize("status", ["queued", "running"])
def test_a_requested_backfill_holds_its_scopes_before_it_lists(
        settings: Settings, services: Services, status: str) -> None:
    discover(settings, services)
    keys = sorted(rows(services))
    create_run(services.pool, "jira", keys[:2], None, status=status, owner=owner_name())
    claimed = claim_due(services.pool, ["jira"], owner="test-reconciler")
    assert [c.key for c in claimed] == keys[2:]


def test_a_pass_under_way_stops_when_a_backfill_of_its_scope_begins(
        settings: Settings, services: Services, sandbox: SandboxServer) -> None:
    sim = sim_of(sandbox)
    discover(settings, services)
    key = sorted(rows(services))[0]
    project = sim.find_project(key)
    assert project is not None
    with httpx.Client(base_url=sandbox.url("jira") + "/_sandbox/jira") as ctl:
        while sum(1 for i in sim.issues.values() if i.project_id == project.id) <= 100:
            ctl.post("/issues", json={"project": key, "summary": "one more"}).raise_for_status()
    claimed = [c for c in claim_due(services.pool, ["jira"], owner="test-reconciler") if c.key == key]
    sim.calls.clear()

    async def one_pass() -> dict[str, Any]:
        sources = SourceSet(settings, services.pool)
        try:
            connector = sources.get("jira")
            listing = connector.changes

            async def begin_backfill_with_first_page(*args: Any) -> Any:
                # The backfill is requested once the pass has fetched its first page.
                first = True
                async for page in listing(*args):
                    if first:
                        create_run(services.pool, "jira", [key], None, owner=owner_name())
                        first = False
                    yield page

            connector.changes = begin_backfill_with_first_page  # type: ignore[method-assign]
            return await Reconciler(settings, services, sources, "test-reconciler").reconcile_scope(claimed[0])
        finally:
            await sources.aclose()

    counters = asyncio.run(one_pass())
    # The full listing (2 bulkfetches) stopped after its first page, kept its checkpoint and
    # gave the scope back.
    assert counters["pages"] == 1 and sim.calls["bulkfetch"] == 1
    row = rows(services)[key]
    with services.pool.connection() as conn:
        held = conn.execute("SELECT checkpoint, lease_owner FROM scopes WHERE source = 'jira' AND key = %s",
                            (key,)).fetchone()
    assert held is not None and held[0] is not None and held[1] is None
    assert row["cursor"] is None and row["last_error"] is None
    assert reconcile_runs(services)[0][2]["deferred_to_backfill"] is True


def test_a_scope_handed_to_a_backfill_is_not_pruned_meanwhile(
        settings: Settings, services: Services, sandbox: SandboxServer) -> None:
    discover(settings, services)
    keys = sorted(rows(services))
    with services.pool.connection() as conn:
        conn.execute("UPDATE scopes SET next_prune_at = now() - interval '1 minute' WHERE source = 'jira'")
    claimed = claim_due(services.pool, ["jira"], owner="test-reconciler")
    create_run(services.pool, "jira", keys[:1], None, owner=owner_name())

    async def passes() -> None:
        sources = SourceSet(settings, services.pool)
        try:
            await Reconciler(settings, services, sources, "test-reconciler")._reconcile_source(claimed)
        finally:
            await sources.aclose()

    asyncio.run(passes())
    with services.pool.connection() as conn:
        pruned = sorted(r[0] for r in conn.execute("SELECT scope FROM runs WHERE kind = 'prune'").fetchall())
    assert pruned == keys[1:]  # the backfill's scope: neither listed nor pruned by the pass
    assert sorted(scope for scope, _, _ in reconcile_runs(services)) == keys[1:]  # passes run concurrently


def test_a_backfill_batch_stopped_after_a_page_resumes_from_its_checkpoint(
        settings: Settings, services: Services, sandbox: SandboxServer) -> None:
    sim = sim_of(sandbox)
    discover(settings, services)
    keys = sorted(rows(services))
    with httpx.Client(base_url=sandbox.url("jira") + "/_sandbox/jira") as ctl:
        while len(sim.issues) <= 150:  # two bulkfetch pages at least
            ctl.post("/issues", json={"project": keys[1], "summary": "batch filler"}).raise_for_status()
    run_id = create_run(services.pool, "jira", [], None, owner=owner_name())

    def crash_after_first_page(info: dict[str, Any]) -> None:
        if info.get("scope") is not None:
            raise RuntimeError("killed after the first page")

    sim.bulkfetched.clear()
    with pytest.raises(RuntimeError):
        backfill(settings, services, run_id, crash_after_first_page)
    first = dict(sim.bulkfetched)
    assert 0 < len(first) < len(sim.issues)
    # Resumed: the batch goes on after the saved page; no issue is fetched twice.
    counters = backfill(settings, services, run_id)
    assert max(sim.bulkfetched.values()) == 1 and set(sim.bulkfetched) == {str(i) for i in sim.issues}
    assert counters["scopes_done"] == 3 and counters["listed"] == len(sim.issues)
    with services.pool.connection() as conn:
        items = conn.execute("SELECT count(*), count(DISTINCT document_id) FROM run_items WHERE run_id = %s",
                             (run_id,)).fetchone()
    assert items == (len(sim.issues), len(sim.issues))
