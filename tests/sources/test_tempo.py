"""The Tempo connector against the Tempo and Jira simulators over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from core.documents import Document, Gone, Ref
from core.errors import NotConfigured
from core.settings import Settings
from core.sources import tempo
from core.sources.base import Page, Scope, StaticContext
from sandbox.server import SandboxServer, create_simulators

T = TypeVar("T")


def run(server: SandboxServer, factory: Callable[[tempo.TempoSource], Awaitable[T]],
        active: list[str] | None = None, **options: Any) -> T:
    """Build a connector (active Jira projects: all unless named) and run ``factory`` on it."""
    projects = server.sims["jira"].projects.values()
    scopes = [Scope("jira", p.key, p.name) for p in projects if active is None or p.key in active]

    async def main() -> T:
        async with httpx.AsyncClient(timeout=10) as client:
            source = tempo.build(Settings.from_environ(server.env()).source("tempo"), client, None,
                                 StaticContext({"jira": scopes}), **options)
            return await factory(source)

    return asyncio.run(main())


async def pages(source: tempo.TempoSource, since: float | None = None,
                checkpoint: str | None = None) -> list[Page]:
    return [page async for page in source.changes(tempo.SCOPE, since, checkpoint)]


async def live(source: tempo.TempoSource) -> list[str]:
    return [i async for i in source.live_ids(tempo.SCOPE)]


def docs(page_list: list[Page]) -> list[Document]:
    return [ref.document for page in page_list for ref in page.refs if ref.document]


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    sims = create_simulators(["jira", "tempo"], profile="small", seed=11)
    sims["tempo"].knobs.rate_limit = 0
    srv = SandboxServer(sims).start()
    yield srv
    srv.stop()


def control(server: SandboxServer, method: str, path: str, **body: Any) -> dict[str, Any]:
    response = httpx.request(method, server.url("tempo") + "/_sandbox" + path, json=body or None, timeout=10)
    response.raise_for_status()
    return response.json()


def issue_of(server: SandboxServer, project_key: str) -> dict[str, Any]:
    return next(i for i in server.sims["tempo"].issues if i["project_key"] == project_key)


def test_backfill_emits_whole_documents_resolved_through_jira(server: SandboxServer) -> None:
    truth = {w["tempoWorklogId"] for w in control(server, "GET", "/worklogs")["worklogs"]}
    result = run(server, pages)
    found = docs(result)
    assert sorted(int(d.id) for d in found) == sorted(truth)
    issues = {i["key"]: i for i in server.sims["tempo"].issues}
    for doc in found:
        key = doc.metadata["issue_key"]
        assert key in issues and doc.metadata["project_key"] == issues[key]["project_key"]
        assert f" on {key} ({issues[key]['summary']}) on {doc.metadata['date']}" in doc.text
        assert doc.text.startswith(doc.metadata["author_account_id"] + " logged ")
    assert result[-1].checkpoint is None and result[-1].high_water


def test_only_active_projects_are_emitted_and_the_rest_counted(server: SandboxServer) -> None:
    keys = sorted(server.sims["jira"].projects[p].key for p in server.sims["jira"].projects)
    total = len(control(server, "GET", "/worklogs")["worklogs"])

    async def both(source: tempo.TempoSource) -> tuple[list[Page], dict[str, int]]:
        return await pages(source), dict(source.stats)

    result, stats = run(server, both, active=[keys[0]])
    found = docs(result)
    assert found and {d.metadata["project_key"] for d in found} == {keys[0]}
    assert len(found) + stats["inactive_project"] == total


def test_paging_by_next_resumes_from_a_checkpoint(server: SandboxServer) -> None:
    async def first_then_rest(source: tempo.TempoSource) -> tuple[list[str], list[str]]:
        source.page_size = 7
        listing = source.changes(tempo.SCOPE, None, None)
        first = await listing.__anext__()
        assert first.checkpoint and "offset=7" in first.checkpoint
        rest = await pages(source, None, first.checkpoint)
        return [r.id for r in first.refs], [r.id for p in rest for r in p.refs]

    head, tail = run(server, first_then_rest)
    assert len(head) == 7 and not set(head) & set(tail)
    assert len(head) + len(tail) == len(control(server, "GET", "/worklogs")["worklogs"])


def test_created_edited_deleted_worklog_flows_through(server: SandboxServer) -> None:
    issue = issue_of(server, server.sims["tempo"].issues[0]["project_key"])
    since = time.time() - 1
    created = control(server, "POST", "/worklogs", issueId=int(issue["id"]), timeSpentSeconds=5400,
                      startDate="2024-05-01", description="Fixing retries",
                      authorAccountId="557058:abc")
    wid = str(created["tempoWorklogId"])
    new = {d.id: d for d in docs(run(server, lambda s: pages(s, since)))}
    assert new[wid].text == (f"557058:abc logged 1h 30m on {issue['key']} ({issue['summary']}) "
                             f"on 2024-05-01: Fixing retries")
    assert new[wid].metadata["seconds"] == 5400
    control(server, "PUT", f"/worklogs/{wid}", description="Fixing retries, part two")
    changed = {d.id: d for d in docs(run(server, lambda s: pages(s, since)))}
    assert changed[wid].text.endswith("part two")
    fetched = run(server, lambda s: s.fetch(Ref("tempo", wid)))
    assert isinstance(fetched, Document) and fetched.text == changed[wid].text
    control(server, "DELETE", f"/worklogs/{wid}")
    assert run(server, lambda s: s.fetch(Ref("tempo", wid))) == Gone("tempo", wid)
    assert wid not in run(server, live, live_days=None)


def test_live_ids_list_everything_by_default_or_a_recent_window(server: SandboxServer) -> None:
    """The reconciler prunes whatever live_ids omits, so by default it lists every worklog;
    a recent window is available to callers that prune only within it."""
    truth = control(server, "GET", "/worklogs")["worklogs"]
    cutoff = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 60 * 86400))
    recent = {str(w["tempoWorklogId"]) for w in truth if w["startDate"] >= cutoff}
    older = {str(w["tempoWorklogId"]) for w in truth} - recent
    assert set(run(server, live, live_days=60)) == recent and older, "the seed spreads worklogs over 120 days"
    assert set(run(server, live)) == recent | older


def test_worklog_on_inactive_project_is_gone_on_fetch(server: SandboxServer) -> None:
    keys = sorted({i["project_key"] for i in server.sims["tempo"].issues})
    issue = issue_of(server, keys[1])
    created = control(server, "POST", "/worklogs", issueId=int(issue["id"]), description="x")
    ref = Ref("tempo", str(created["tempoWorklogId"]))
    assert isinstance(run(server, lambda s: s.fetch(ref), active=[keys[1]]), Document)
    assert run(server, lambda s: s.fetch(ref), active=[keys[0]]) == Gone("tempo", ref.id)
    assert ref.id not in run(server, live, active=[keys[0]])


def test_issue_key_in_description_wins(server: SandboxServer) -> None:
    keys = sorted({i["project_key"] for i in server.sims["tempo"].issues})
    logged_on, named = issue_of(server, keys[0]), issue_of(server, keys[1])
    created = control(server, "POST", "/worklogs", issueId=int(logged_on["id"]),
                      description=f"Reviewed {named['key']} with the team")
    doc = run(server, lambda s: s.fetch(Ref("tempo", str(created["tempoWorklogId"]))))
    assert isinstance(doc, Document)
    assert doc.metadata["issue_key"] == named["key"] and doc.metadata["project_key"] == keys[1]
    assert doc.metadata["logged_issue_id"] == logged_on["id"]


def test_copes_with_429_without_retry_after(server: SandboxServer) -> None:
    ids = [str(w["tempoWorklogId"]) for w in control(server, "GET", "/worklogs")["worklogs"]][:9]
    httpx.put(server.url("tempo") + "/_sandbox/knobs", json={"rate_limit": 4})
    control(server, "PUT", "/tempo", retry_after_header=False)
    before = server.sims["tempo"].throttled
    try:
        async def fetch_all(source: tempo.TempoSource) -> list[Document | Gone]:
            return list(await asyncio.gather(*(source.fetch(Ref("tempo", i)) for i in ids)))

        results = run(server, fetch_all)
    finally:
        httpx.put(server.url("tempo") + "/_sandbox/knobs", json={"rate_limit": 0})
        control(server, "PUT", "/tempo", retry_after_header=True)
    assert all(isinstance(r, Document) for r in results)
    assert server.sims["tempo"].throttled > before


def test_tempo_has_no_webhooks(server: SandboxServer) -> None:
    source = tempo.build(Settings.from_environ(server.env()).source("tempo"), httpx.AsyncClient())
    assert source.pushes is False
    with pytest.raises(NotConfigured):
        source.verify({}, b"{}")
    with pytest.raises(NotConfigured):
        source.parse({}, b"{}")


def test_pure_formatting() -> None:
    assert [tempo.format_duration(s) for s in (5400, 3600, 900, 45, 7260)] == [
        "1h 30m", "1h", "15m", "45s", "2h 1m"]
    issue = tempo.Issue("10001", "SUBS-1", "Billing retries", "SUBS")
    worklog = {"tempoWorklogId": 5, "issue": {"id": 10001}, "timeSpentSeconds": 3600,
               "billableSeconds": 1800, "startDate": "2024-05-01", "description": "",
               "updatedAt": "2024-05-01T10:00:00Z", "author": {"accountId": "acc"}}
    doc = tempo._to_document(worklog, issue, "https://jira.example")
    assert doc.text == "acc logged 1h on SUBS-1 (Billing retries) on 2024-05-01."
    assert doc.url == "https://jira.example/browse/SUBS-1" and doc.updated_at == 1714557600.0
    assert doc.metadata["billable_seconds"] == 1800 and doc.id == "5"


def test_scale_every_one_of_12000_worklogs_exactly_once() -> None:
    sims = create_simulators(["jira", "tempo"], profile="scale", seed=2)
    sims["tempo"].knobs.rate_limit = 0
    srv = SandboxServer(sims).start()
    try:
        found = [d.id for d in docs(run(srv, pages))]
    finally:
        srv.stop()
    assert len(found) == 12000 and len(set(found)) == 12000
