"""The drift audit (``vector-sync verify``, ``POST /api/admin/verify``, the reconciler's cadence).

One sandbox with all six simulators serves the module; the receiver, the worker, Postgres and
Redis are real (tests/contract/conftest.py). Drift is injected behind the product's back (a
vector deleted from the index, an orphan vector inserted, an upstream edit and an upstream
delete whose webhooks are dropped) and the audit must find it, repair it, and then report 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core import verify
from core.documents import vector_id
from core.index import Vector
from core.runtime import SourceSet
from core.sources import Scope
from reconciler.reconcile import Reconciler
from reconciler.verify import due_scopes, verify_tick
from sandbox.server import SandboxServer
from tests.conftest import ADMIN_KEY, BASE_ENV
from tests.contract.conftest import (  # noqa: F401  (fixtures used by name)
    FAST_ENV, System, long_text, module_settings, settings, stack, start_sandbox, system, unique,
)

ALL = ["jira", "slack", "github", "notion", "tempo", "fireflies"]
HEADERS = {"X-Admin-Key": ADMIN_KEY}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    server = start_sandbox(ALL)
    server.sims["jira"].retry_delay = 0.05  # type: ignore[attr-defined]
    server.sims["notion"].aggregation_window = 0.1  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def env(infra: dict[str, str], sandbox: SandboxServer) -> dict[str, str]:
    """The environment of a one-shot command run against this module's system."""
    return {**os.environ, **BASE_ENV, **infra, **sandbox.env(), **FAST_ENV}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "verify", *args],
                          env=env, capture_output=True, text=True, timeout=300)


def audit(system: System, source: str | None = None, scope: str | None = None,
          repair: bool = False) -> list[verify.Report]:
    async def go() -> list[verify.Report]:
        sources = SourceSet(system.settings, system.services.pool)
        try:
            auditor = verify.Auditor(system.services, sources, "test-verify", repair=repair)
            targets = await asyncio.to_thread(auditor.targets, source, scope)
            return await auditor.run_all(targets)
        finally:
            await sources.aclose()

    return asyncio.run(go())


def discover(system: System) -> None:
    async def go() -> None:
        sources = SourceSet(system.settings, system.services.pool)
        try:
            await Reconciler(system.settings, system.services, sources, "test").discover(ALL, force=True)
        finally:
            await sources.aclose()

    asyncio.run(go())


def jira_project(system: System, issues: int) -> tuple[str, list[dict[str, Any]]]:
    """A fresh project with ``issues`` issues, reconciled and indexed."""
    key = f"VF{unique('')[:-2]}"
    system.control("jira", "POST", "/jira/projects", json={"key": key, "name": f"Verify {key}"})
    made = [system.control("jira", "POST", "/jira/issues",
                           json={"project": key, "summary": f"Issue {n} of {key}",
                                 "description": long_text(unique("verify"), 3)}).json()
            for n in range(issues)]
    system.flush_webhooks("jira")
    system.reconcile("jira", key)
    for issue in made:
        assert system.chunk_ids(f"jira:{issue['id']}"), f"issue {issue['id']} was not indexed"
    return key, made


def only(system: System, key: str) -> None:
    """Leave only the jira scope ``key`` active (and reconciled), so "everything" means it."""
    with system.services.pool.connection() as conn:
        conn.execute("UPDATE scopes SET active = (source = 'jira' AND key = %s)", (key,))


def runs_of(system: System, source: str, summaries: bool = False) -> list[dict[str, Any]]:
    """The verify runs of ``source``: its audits, or (``summaries``) its whole-source summaries."""
    with system.services.pool.connection() as conn:
        cur = conn.execute("""SELECT id, source, scope, status, counters, error, params FROM runs
                              WHERE kind = 'verify' AND source = %s
                                AND (scope IS NULL AND source <> 'index') = %s ORDER BY id""",
                           (source, summaries))
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def newest(system: System, source: str) -> dict[str, Any]:
    """What a reader of "the latest finished verify run of a source" sees."""
    with system.services.pool.connection() as conn:
        status, counters = conn.execute(
            """SELECT status, counters FROM runs WHERE kind = 'verify' AND source = %s
                 AND status IN ('succeeded', 'failed')
               ORDER BY finished_at DESC, id DESC LIMIT 1""", (source,)).fetchone()
    return {"status": status, **counters}


def counts(report: verify.Report) -> tuple[int, int, int, int]:
    return tuple(len(report.found[c]) for c in verify.CATEGORIES)  # type: ignore[return-value]


# --- listings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_each_listing_lists_exactly_what_pruning_lists(system: System, name: str) -> None:
    """verify's id+updated_at listing of a scope holds the same ids as the connector's live_ids
    (the set pruning deletes against), so a connector change that diverges fails here."""
    discover(system)
    with system.services.pool.connection() as conn:
        key = conn.execute("SELECT key, name FROM scopes WHERE source = %s AND active ORDER BY key LIMIT 1",
                           (name,)).fetchone()
    assert key is not None, f"no active {name} scope"
    scope = Scope(name, key[0], key[1])

    async def both() -> tuple[list[tuple[str, float | None]], list[str], str]:
        sources = SourceSet(system.settings, system.services.pool)
        try:
            source = sources.get(name)
            listing, compares = verify.listing_for(name, source)
            versions = [item async for item in listing(source, scope)]
            return versions, [i async for i in source.live_ids(scope)], compares
        finally:
            await sources.aclose()

    versions, live, compares = asyncio.run(both())
    assert live, f"the {name} seed should hold live documents in {scope.key}"
    assert sorted(i for i, _ in versions) == sorted(live)
    if name == "fireflies":
        assert compares == "ids"  # its listing has meeting dates, no edit time
    else:
        assert compares == "ids+updated_at"
        assert all(isinstance(at, float) and at > 0 for _, at in versions), versions[:3]


# --- the audit --------------------------------------------------------------------------------


def test_clean_state_reports_zero_and_records_the_run_shape(system: System) -> None:
    key, _ = jira_project(system, 2)
    reports = audit(system, "jira", key)
    assert [r.status for r in reports] == ["succeeded"]
    assert counts(reports[0]) == (0, 0, 0, 0) and reports[0].live == 2
    (run,) = runs_of(system, "jira")
    assert run["scope"] == key and run["status"] == "succeeded" and run["error"] is None
    assert run["counters"] == {"missing": 0, "stale": 0, "ghost": 0, "orphan_vectors": 0,
                               "samples": {"missing": [], "stale": [], "ghost": [], "orphan_vectors": []},
                               "repaired": {}}
    assert run["params"]["compares"] == "ids+updated_at"
    # The newest verify run of the source is its summary, folding every active scope's audit.
    (summary,) = runs_of(system, "jira", summaries=True)
    assert summary["id"] > run["id"] and summary["status"] == "succeeded"
    assert summary["counters"] == run["counters"] and summary["params"]["runs"] == [run["id"]]
    # The whole-index check alone: everything indexed has its row.
    (orphans,) = asyncio.run(_index_only(system))
    assert orphans.status == "succeeded" and counts(orphans) == (0, 0, 0, 0)
    (index_run,) = runs_of(system, verify.INDEX)
    assert index_run["scope"] is None and index_run["counters"]["orphan_vectors"] == 0


async def _index_only(system: System) -> list[verify.Report]:
    sources = SourceSet(system.settings, system.services.pool)
    try:
        return [await verify.Auditor(system.services, sources, "test").run_one(verify.INDEX, None)]
    finally:
        await sources.aclose()


def test_drift_behind_the_products_back_is_found_and_repaired(system: System, env: dict[str, str]) -> None:
    key, issues = jira_project(system, 5)
    only(system, key)
    lost, edited, deleted, shrunk, _ = (f"jira:{i['id']}" for i in issues)
    index = system.services.index
    # missing: the index loses a document's vectors (the documents row still says indexed).
    index.delete(system.chunk_ids(lost)[:1])
    # orphan vectors: one of no document at all, one past a document's chunk count.
    count = system.row(shrunk)["chunk_count"]  # type: ignore[index]
    values = [1.0] + [0.0] * (system.settings.embedding_dimensions - 1)
    strays = ["jira:999999999#0", vector_id(shrunk, count + 2)]
    index.upsert([Vector(v, values, {"document_id": v.rpartition("#")[0], "source": "jira"}) for v in strays])
    # stale and ghost: an upstream edit and an upstream delete whose webhooks never arrive.
    system.knobs("jira", webhook_drop_rate=1)
    word = unique("edited")
    edit_id, delete_id = edited.split(":")[1], deleted.split(":")[1]
    system.control("jira", "PUT", f"/jira/issues/{edit_id}", json={"description": f"Now about {word} {word}."})
    system.control("jira", "DELETE", f"/jira/issues/{delete_id}")
    system.flush_webhooks("jira")

    found = cli(env, "--json")
    assert found.returncode == 1, found.stderr
    result = json.loads(found.stdout)
    by_scope = {(r["source"], r["scope"]): r for r in result["reports"]}
    scope_report, index_report = by_scope[("jira", key)], by_scope[(verify.INDEX, None)]
    assert scope_report["samples"]["missing"] == [lost]
    assert scope_report["samples"]["stale"] == [edited]
    assert scope_report["samples"]["ghost"] == [deleted]
    assert sorted(index_report["samples"]["orphan_vectors"]) == sorted(strays)
    assert (scope_report["missing"], scope_report["stale"], scope_report["ghost"]) == (1, 1, 1)
    assert index_report["orphan_vectors"] == 2
    latest = newest(system, "jira")
    assert (latest["missing"], latest["stale"], latest["ghost"]) == (1, 1, 1)
    assert newest(system, verify.INDEX)["orphan_vectors"] == 2
    # Nothing was changed by an audit without --repair.
    assert system.queue_depth() == 0 and set(strays) <= set(index.fetch(strays))

    repaired = cli(env, "jira", "--scope", key, "--repair")
    assert repaired.returncode == 1, repaired.stderr  # drift was found (and repairs enqueued)
    assert "repaired: missing 1, stale 1, ghost 1" in repaired.stdout, repaired.stdout
    system.worker.drain()
    orphans = cli(env, "--repair", "--json")  # everything: the orphan vectors are deleted too
    index_run = next(r for r in json.loads(orphans.stdout)["reports"] if r["source"] == verify.INDEX)
    assert index_run["repaired"] == {"orphan_vectors": 2}
    system.worker.drain()

    clean = cli(env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "drift: 0" in clean.stdout
    assert system.chunk_ids(lost) and system.row(lost)["content_hash"]  # type: ignore[index]
    assert word in system.chunk_texts(edited)
    assert system.row(deleted)["deleted_at"] is not None and not system.chunk_ids(deleted)  # type: ignore[index]
    assert not index.fetch(strays)
    latest = verify.latest_audits(system.services.pool)
    assert latest["jira"]["drift"] == 0 and latest[verify.INDEX]["drift"] == 0
    for source in ("jira", verify.INDEX):
        final = newest(system, source)
        assert final["status"] == "succeeded"
        assert sum(final[c] for c in verify.CATEGORIES) == 0, final


def test_failed_listing_reports_a_failure_not_ghosts(system: System, env: dict[str, str]) -> None:
    key, _ = jira_project(system, 2)
    system.knobs("jira", fault_rate=1.0)
    try:
        (report,) = audit(system, "jira", key, repair=True)
        failed = cli(env, "jira", "--scope", key, "--json")
    finally:
        system.knobs("jira", fault_rate=0.0)
    assert report.status == "failed" and "listing failed" in (report.error or "")
    assert counts(report) == (0, 0, 0, 0) and report.repaired == {}
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert json.loads(failed.stdout)["failed"] == 1
    run = runs_of(system, "jira")[0]
    assert run["status"] == "failed" and run["counters"]["ghost"] == 0 and "listing failed" in run["error"]
    assert system.queue_depth() == 0  # no delete was enqueued for what could not be listed
    assert newest(system, "jira")["status"] == "failed"


def test_cli_usage_errors_exit_2(env: dict[str, str], system: System) -> None:
    no_source = cli(env, "--scope", "SUBS")
    assert no_source.returncode == 2 and "--scope needs SOURCE" in no_source.stderr
    assert cli(env, "nosuch").returncode == 2
    unknown_scope = cli(env, "jira", "--scope", "NOPE")
    assert unknown_scope.returncode == 2 and "unknown jira scope" in unknown_scope.stderr
    unconfigured = cli({**env, "JIRA_API_TOKEN": ""}, "jira")
    # Half a source (issue 13) is a settings error naming what is missing.
    assert unconfigured.returncode == 2 and "JIRA_API_TOKEN is not set" in unconfigured.stderr
    assert "Traceback" not in no_source.stderr + unknown_scope.stderr + unconfigured.stderr


# --- the admin API ------------------------------------------------------------------------------


def test_admin_verify_route(system: System) -> None:
    key, issues = jira_project(system, 2)
    url = f"{system.receiver.url}/api/admin/verify"
    assert httpx.post(url, json={}, timeout=30).status_code == 401
    unknown = httpx.post(url, json={"source": "nosuch"}, headers=HEADERS, timeout=30)
    assert unknown.status_code == 400 and "unknown source" in unknown.json()["error"]
    for bad in ({"scope": key}, {"source": "jira", "repair": "yes"}, {"source": "jira", "extra": 1}):
        assert httpx.post(url, json=bad, headers=HEADERS, timeout=30).status_code == 400, bad
    assert httpx.post(url, content=b"{", headers=HEADERS, timeout=30).status_code == 400
    assert httpx.post(url, json={"source": "jira", "scope": "NOPE"}, headers=HEADERS, timeout=30).status_code == 404

    lost = f"jira:{issues[0]['id']}"
    system.services.index.delete(system.chunk_ids(lost))
    answer = httpx.post(url, json={"source": "jira", "scope": key, "repair": True}, headers=HEADERS, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["drift"] == 1 and body["reports"][0]["samples"]["missing"] == [lost]
    assert body["reports"][0]["repaired"]["missing"] == 1
    system.worker.drain()
    assert system.chunk_ids(lost)

    # Everything: queued for the reconciler (one run per source, plus the index), which
    # records each result on its run.
    only(system, key)
    queued = httpx.post(url, json={}, headers=HEADERS, timeout=30)
    assert queued.status_code == 202, queued.text
    run_ids = queued.json()["run_ids"]
    assert set(run_ids) == {*system.settings.configured_sources(), verify.INDEX}
    one = httpx.post(url, json={"source": "jira"}, headers=HEADERS, timeout=30).json()
    assert one["run_ids"] == {"jira": one["run_id"]}
    asyncio.run(_one_verify_tick(system))
    for name, run_id in {**run_ids, "jira (again)": one["run_id"]}.items():
        shown = httpx.get(f"{system.receiver.url}/api/admin/runs/{run_id}", headers=HEADERS, timeout=30).json()
        assert shown["kind"] == "verify" and shown["status"] == "succeeded", (name, shown)
        assert shown["counters"]["missing"] == 0 and shown["counters"]["orphan_vectors"] == 0, shown
    jira_run = httpx.get(f"{system.receiver.url}/api/admin/runs/{run_ids['jira']}", headers=HEADERS, timeout=30).json()
    assert jira_run["scope"] is None and jira_run["params"]["summary"] is True
    (audited,) = [r for r in runs_of(system, "jira") if r["id"] in jira_run["params"]["runs"]]
    assert audited["scope"] == key
    assert newest(system, "jira")["status"] == "succeeded"


async def _one_verify_tick(system: System, settings: Any = None) -> None:
    """One loop turn of a fresh reconciler (its own owner name), awaiting the audit it starts."""
    from reconciler import verify as rv

    owner = unique("test-reconciler")
    sources = SourceSet(settings or system.settings, system.services.pool)
    try:
        await verify_tick(settings or system.settings, system.services, sources, owner)
        task = rv._tasks[owner]
        await task
    finally:
        await sources.aclose()


# --- the reconciler's cadence and claims ---------------------------------------------------------


def test_reconciler_audits_due_scopes_once_and_never_under_a_backfill(system: System) -> None:
    from core.runs import create_run

    key, _ = jira_project(system, 1)
    settings = system.settings.replace(verify_interval=3600.0)
    configured = system.settings.configured_sources()
    # Just discovered: its first pass may still be indexing; not audited yet.
    assert not [t for t in due_scopes(system.services, configured, 3600.0) if t[1] and t[1].key == key]
    with system.services.pool.connection() as conn:
        conn.execute("UPDATE scopes SET discovered_at = now() - interval '2 hours'")
    only(system, key)
    due = due_scopes(system.services, configured, 3600.0)
    assert ("jira", key) in [(s, t.key if t else None) for s, t in due]
    assert (verify.INDEX, None) in [(s, t) for s, t in due]

    # A backfill listing the scope: the audit does not claim it.
    backfill = create_run(system.services.pool, "jira", [key], None, status="queued")
    with pytest.raises(verify.Busy, match="backfill"):
        verify.claim(system.services.pool, "other", "jira", key)
    with system.services.pool.connection() as conn:
        conn.execute("UPDATE runs SET status = 'succeeded' WHERE id = %s", (backfill,))

    # Two claimers: the second is refused while the first's run is live.
    first = verify.claim(system.services.pool, verify.owner_name(), "jira", key)
    with pytest.raises(verify.Busy, match="already auditing"):
        verify.claim(system.services.pool, "other", "jira", key)
    with system.services.pool.connection() as conn:
        conn.execute("DELETE FROM runs WHERE id = %s", (first,))

    asyncio.run(_one_verify_tick(system, settings))
    audited = runs_of(system, "jira")
    assert [(r["scope"], r["status"]) for r in audited] == [(key, "succeeded")]
    assert audited[0]["counters"]["missing"] == 0 and audited[0]["params"]["repair"] is True
    assert runs_of(system, verify.INDEX)[0]["status"] == "succeeded"
    # Audited clean just now: nothing is due until the interval passes.
    assert due_scopes(system.services, configured, 3600.0) == []

    # VERIFY_INTERVAL=0: no scheduled audit at all.
    with system.services.pool.connection() as conn:
        conn.execute("DELETE FROM runs WHERE kind = 'verify'")
    asyncio.run(_one_verify_tick(system, system.settings.replace(verify_interval=0.0)))
    assert runs_of(system, "jira") == []


@pytest.mark.parametrize("name", ALL)
def test_a_reconciled_scope_of_every_source_audits_clean(system: System, name: str) -> None:
    """What a full pass indexed agrees with the audit's listing (ids, and updated_at against the
    stored source_updated_at), so a healthy source can pass its check."""
    discover(system)
    with system.services.pool.connection() as conn:
        key = conn.execute("SELECT key FROM scopes WHERE source = %s AND active ORDER BY key LIMIT 1",
                           (name,)).fetchone()[0]
    system.reconcile(name, key)
    (report,) = audit(system, name, key)
    assert report.status == "succeeded", report.error
    assert report.live > 0
    assert counts(report) == (0, 0, 0, 0), report.to_dict()


def test_the_reconciler_process_audits_on_its_own_cadence(system: System, env: dict[str, str]) -> None:
    """A real reconciler (python -m reconciler) runs the audit from its loop: VERIFY_INTERVAL=1,
    so each scope is audited once its first pass succeeded; a stop leaves no audit running."""
    from tests.conftest import wait_for

    from core.settings import SOURCE_INTENT

    # Every variable of the other sources unset (a webhook secret left alone is half a source).
    only_jira = {var: "" for name, names in SOURCE_INTENT.items() if name != "jira" for var in names}
    process = subprocess.Popen([sys.executable, "-m", "reconciler"],
                               env={**env, **only_jira, "VERIFY_INTERVAL": "1", "JIRA_PROJECTS": "SUBS"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def audited() -> bool:
            done = {(r["source"], r["scope"]) for s in ("jira", verify.INDEX) for r in runs_of(system, s)
                    if r["status"] == "succeeded"}
            return ("jira", "SUBS") in done and (verify.INDEX, None) in done

        wait_for(audited, timeout=180, interval=0.5)
        process.terminate()
        assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
    with system.services.pool.connection() as conn:
        running = conn.execute("SELECT count(*) FROM runs WHERE kind = 'verify' AND status = 'running'").fetchone()[0]
    assert running == 0
    run = next(r for r in runs_of(system, "jira") if r["scope"] == "SUBS" and r["status"] == "succeeded")
    assert run["params"]["repair"] is True and set(run["counters"]) == {
        "missing", "stale", "ghost", "orphan_vectors", "samples", "repaired"}


def test_orphan_vectors_are_found_and_deleted_in_pinecone_too(infra: dict[str, str], system: System) -> None:
    """The whole-index check lists every id through Pinecone's list (no prefix) as well."""
    from core import state
    from core.index.pinecone import PineconeIndex
    from core.runtime import open_services
    from sandbox.server import create_simulators
    from tests.conftest import make_settings

    cloud = SandboxServer(create_simulators(["pinecone"], profile="empty")).start()
    try:
        pine = open_services(make_settings(infra, **cloud.env(), EMBEDDING_DIMENSIONS="1536",
                                           PINECONE_NAMESPACE="verify"))
        try:
            assert isinstance(pine.index, PineconeIndex)
            state.record_indexed(pine.pool, document_id="api:kept", source="api", scope="", title="t", url="",
                                 content_hash="h", metadata_hash="m", source_updated_at=1.0, chunk_count=2)
            values = [1.0] + [0.0] * 1535
            ids = ["api:kept#0", "api:kept#1", "api:kept#4", "api:gone#0"]
            pine.index.upsert([Vector(v, values, {"document_id": v.rpartition("#")[0]}) for v in ids])

            async def check(repair: bool) -> verify.Report:
                sources = SourceSet(pine.settings, pine.pool)
                try:
                    return await verify.Auditor(pine, sources, "test", repair=repair).run_one(verify.INDEX, None)
                finally:
                    await sources.aclose()

            found = asyncio.run(check(True))
            assert found.found["orphan_vectors"] == ["api:gone#0", "api:kept#4"]
            assert found.repaired == {"orphan_vectors": 2}
            assert sorted(pine.index.list_ids("")) == ["api:kept#0", "api:kept#1"]
            assert asyncio.run(check(False)).found["orphan_vectors"] == []
        finally:
            pine.close()
    finally:
        cloud.stop()


def test_verify_interval_setting() -> None:
    from core.errors import SettingsError
    from core.settings import Settings

    assert Settings.from_environ({}).verify_interval == 86400.0
    assert Settings.from_environ({"VERIFY_INTERVAL": "0"}).verify_interval == 0.0
    assert Settings.from_environ({"VERIFY_INTERVAL": "6h"}).verify_interval == 6 * 3600.0
    with pytest.raises(SettingsError) as refused:
        Settings.from_environ({"VERIFY_INTERVAL": "daily"})
    assert "VERIFY_INTERVAL" in str(refused.value) and "\n" not in str(refused.value)


def test_a_vector_whose_document_is_recorded_during_the_grace_is_not_deleted(system: System) -> None:
    """A job writes vectors just before its documents row: a vector caught in that moment looks
    orphaned, so repair reads the rows again after its grace and spares what got recorded."""
    from core import state

    index = system.services.index
    values = [1.0] + [0.0] * (system.settings.embedding_dimensions - 1)
    index.upsert([Vector(v, values, {"document_id": v.rpartition("#")[0]}) for v in ("api:late#0", "api:never#0")])

    class JobRecordsMeanwhile(verify.Auditor):
        async def _grace(self) -> None:  # the job records its document while the audit waits
            await asyncio.to_thread(state.record_indexed, self.pool, document_id="api:late", source="api",
                                    scope="", title="t", url="", content_hash="h", metadata_hash="m",
                                    source_updated_at=1.0, chunk_count=1)

    async def go() -> verify.Report:
        sources = SourceSet(system.settings, system.services.pool)
        try:
            return await JobRecordsMeanwhile(system.services, sources, "test", repair=True).run_one(verify.INDEX, None)
        finally:
            await sources.aclose()

    report = asyncio.run(go())
    assert report.found["orphan_vectors"] == ["api:never#0"]
    assert sorted(index.list_ids("api:")) == ["api:late#0"]


def test_a_request_stopped_before_it_is_done_is_abandoned_not_succeeded(system: System) -> None:
    import threading

    from reconciler.verify import claim_request, run_request

    key, _ = jira_project(system, 1)
    only(system, key)
    queued = verify.queue_requests(system.services.pool, ["jira"], False)
    stop = threading.Event()
    stop.set()  # the reconciler is stopping

    async def go() -> None:
        sources = SourceSet(system.settings, system.services.pool)
        try:
            request = await asyncio.to_thread(claim_request, system.services, "test")
            assert request is not None and request["id"] == queued["jira"]
            await run_request(system.services, sources, "test", request, stop)
        finally:
            await sources.aclose()

    asyncio.run(go())
    with system.services.pool.connection() as conn:
        status = conn.execute("SELECT status FROM runs WHERE id = %s", (queued["jira"],)).fetchone()[0]
    assert status == "abandoned"
