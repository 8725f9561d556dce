"""The Jira connector against the Jira simulator over real loopback HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from core.documents import Document, Gone, Ref, chunk_text
from core.errors import InvalidWebhook, MalformedWebhook, NotConfigured, PermanentSourceError
from core.settings import Settings, SourceSettings
from core.sources.base import Scope, Source
from core.sources.jira import JiraSource, adf_to_text, build, jql_for, parse_time, to_document
from sandbox.jira import JiraSimulator
from sandbox.server import SandboxServer, create_simulators
from tests.sinks import Sink

T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    sims: dict[str, Any] = create_simulators(["jira"], profile="small")
    sims["sink"] = Sink()
    srv = SandboxServer(sims).start()
    sims["jira"].webhooks.target = srv.url("sink") + "/hook"
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def scale() -> Iterator[SandboxServer]:
    srv = SandboxServer(create_simulators(["jira"], profile="scale")).start()
    yield srv
    srv.stop()


def settings_for(env: dict[str, str]) -> SourceSettings:
    return Settings.from_environ(env).source("jira")


def with_source(srv: SandboxServer, use: Callable[[JiraSource], Awaitable[T]],
                **overrides: str) -> T:
    """Run ``use(source)`` with a connector pointed at ``srv``, on a fresh event loop."""

    async def run() -> T:
        async with httpx.AsyncClient(timeout=10) as client:
            source = build(settings_for({**srv.env(), **overrides}), client)
            return await use(source)

    return asyncio.run(run())


async def collect(iterator: AsyncIterator[T]) -> list[T]:
    return [item async for item in iterator]


def control(srv: SandboxServer) -> httpx.Client:
    return httpx.Client(base_url=srv.url("jira") + "/_sandbox/jira")


def sim_of(srv: SandboxServer) -> JiraSimulator:
    jira = srv.sims["jira"]
    assert isinstance(jira, JiraSimulator)
    return jira


def signed(body: bytes, secret: str = "sandbox-jira-webhook-secret") -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature": f"sha256={digest}", "X-Atlassian-Webhook-Identifier": "d-1"}


# --- pure normalisation ---------------------------------------------------------------------

RAW_ISSUE: dict[str, Any] = {
    "id": "10042",
    "key": "SUBS-7",
    "fields": {
        "summary": "Proration is wrong on annual plans",
        "description": {"type": "doc", "version": 1, "content": [
            {"type": "paragraph", "content": [
                {"type": "text", "text": "When "},
                {"type": "mention", "attrs": {"id": "x", "text": "@Grace"}},
                {"type": "text", "text": " upgrades mid-cycle the credit is lost."}]},
            {"type": "bulletList", "content": [
                {"type": "listItem", "content": [{"type": "paragraph", "content": [
                    {"type": "text", "text": "annual → monthly"}]}]},
                {"type": "listItem", "content": [{"type": "paragraph", "content": [
                    {"type": "text", "text": "monthly → annual"}]}]}]},
        ]},
        "comment": {"comments": [
            {"id": "1", "author": {"displayName": "Ada Lovelace", "accountId": "a"},
             "body": {"type": "doc", "version": 1, "content": [
                 {"type": "paragraph", "content": [{"type": "text", "text": "Reproduced."}]},
                 {"type": "paragraph", "content": [{"type": "text", "text": "Fix in SUBS-8."}]}]},
             "created": "2024-03-01T09:15:00.000-0500", "updated": "2024-03-01T09:15:00.000-0500"},
        ]},
        "status": {"name": "In Progress"},
        "assignee": {"displayName": "Grace Hopper", "accountId": "g"},
        "reporter": {"displayName": "Alan Turing", "accountId": "t"},
        "labels": ["billing", "customer"],
        "priority": {"name": "High"},
        "issuetype": {"name": "Bug"},
        "project": {"id": "10000", "key": "SUBS", "name": "Subscriptions"},
        "created": "2024-02-28T10:00:00.000+0000",
        "updated": "2024-03-01T09:15:00.000-0500",
    },
}


def test_to_document_text_metadata_and_identity() -> None:
    doc = to_document(RAW_ISSUE, "https://acme.atlassian.net/")
    assert (doc.source, doc.id, doc.scope) == ("jira", "10042", "SUBS")
    assert doc.document_id == "jira:10042"
    assert doc.title == "SUBS-7: Proration is wrong on annual plans"
    assert doc.url == "https://acme.atlassian.net/browse/SUBS-7"
    assert doc.author == "Alan Turing"
    assert doc.updated_at == parse_time("2024-03-01T14:15:00.000+0000") == 1709302500.0
    assert doc.metadata == {
        "key": "SUBS-7", "project": "SUBS", "project_name": "Subscriptions", "status": "In Progress",
        "assignee": "Grace Hopper", "reporter": "Alan Turing", "labels": ["billing", "customer"],
        "priority": "High", "issue_type": "Bug", "created_at": 1709114400.0, "comments": 1,
    }
    paragraphs = doc.text.split("\n\n")
    assert paragraphs[0] == "SUBS-7: Proration is wrong on annual plans"
    assert paragraphs[1] == "Bug in project Subscriptions, reported by Alan Turing on 2024-02-28."
    assert "When @Grace upgrades mid-cycle the credit is lost." in paragraphs
    assert "- annual → monthly\n- monthly → annual" in paragraphs
    # The comment is one paragraph, with who and when, so chunking keeps it whole.
    assert paragraphs[-1] == ("Comment by Ada Lovelace on 2024-03-01 14:15 UTC:\n"
                              "Reproduced.\nFix in SUBS-8.")
    assert paragraphs[-1] in chunk_text(doc.text, max_tokens=40, overlap_tokens=0)


def test_status_change_is_metadata_only() -> None:
    moved = json.loads(json.dumps(RAW_ISSUE))
    moved["fields"]["status"] = {"name": "Done"}
    before, after = to_document(RAW_ISSUE, "https://x"), to_document(moved, "https://x")
    assert before.content_hash() == after.content_hash()
    assert before.metadata_hash() != after.metadata_hash()


def test_adf_to_text_handles_strings_nulls_and_unknown_nodes() -> None:
    assert adf_to_text(None) == ""
    assert adf_to_text("wiki *text*") == "wiki *text*"
    node = {"type": "doc", "content": [
        {"type": "heading", "content": [{"type": "text", "text": "Title"}]},
        {"type": "panel", "content": [{"type": "paragraph", "content": [
            {"type": "text", "text": "a"}, {"type": "hardBreak"}, {"type": "text", "text": "b"},
            {"type": "inlineCard", "attrs": {"url": "https://example.com"}}]}]},
        {"type": "mediaSingle", "content": [{"type": "media", "attrs": {}}]},
    ]}
    assert adf_to_text(node) == "Title\n\na\nbhttps://example.com"


def test_jql_uses_epoch_ms_and_quotes_the_key() -> None:
    assert jql_for("SUBS", 1700000000.5) == 'project = "SUBS" AND updated >= 1700000000500 ORDER BY updated ASC'
    assert jql_for("SUBS") == 'project = "SUBS" ORDER BY updated ASC'
    assert jql_for("SUBS", order=False) == 'project = "SUBS"'


# --- polling against the simulator ----------------------------------------------------------


def test_build_gives_a_source(server: SandboxServer) -> None:
    source = with_source(server, lambda s: asyncio.sleep(0, s))
    assert isinstance(source, Source) and source.name == "jira" and source.pushes is True


def test_scopes_page_through_every_project(scale: SandboxServer) -> None:
    scopes = with_source(scale, lambda s: s.scopes())
    assert len(scopes) == 72 and len({s.key for s in scopes}) == 72
    assert all(s.source == "jira" and s.name for s in scopes)


def test_changes_over_scale_profile_return_each_issue_exactly_once(scale: SandboxServer) -> None:
    async def everything(source: JiraSource) -> list[Ref]:
        refs: list[Ref] = []
        for scope in await source.scopes():
            async for page in source.changes(scope, None, None):
                assert all(r.scope == scope.key and r.document is not None for r in page.refs)
                refs += page.refs
        return refs

    refs = with_source(scale, everything)
    truth = {str(i.id) for i in sim_of(scale).issues.values()}
    ids = [r.id for r in refs]
    assert len(ids) == 7556 and set(ids) == truth  # every issue, none twice
    doc = refs[0].document
    assert doc is not None and doc.text.startswith(doc.metadata["key"])
    assert refs[0].event_at == doc.updated_at


def test_changes_resume_from_checkpoint_and_report_high_water(scale: SandboxServer) -> None:
    scope = Scope("jira", "SUBS")

    async def run(source: JiraSource) -> tuple[list[Any], list[Any]]:
        pages = await collect(source.changes(scope, None, None))
        resumed = await collect(source.changes(scope, None, pages[0].checkpoint))
        return pages, resumed

    pages, resumed = with_source(scale, run)
    assert len(pages) >= 2 and pages[0].checkpoint and pages[-1].checkpoint is None
    assert [r.id for p in resumed for r in p.refs] == [r.id for p in pages[1:] for r in p.refs]
    for page in pages:
        assert page.high_water == max(r.document.updated_at for r in page.refs if r.document)
    # ORDER BY updated ASC: high water only rises from page to page.
    assert [p.high_water for p in pages] == sorted(p.high_water for p in pages)


def test_stale_checkpoint_restarts_the_listing(server: SandboxServer) -> None:
    scope = Scope("jira", "SUBS")
    refs = with_source(server, lambda s: collect(s.changes(scope, None, "expired-token")))
    truth = {str(i.id) for i in sim_of(server).issues.values() if i.key.startswith("SUBS-")}
    assert {r.id for page in refs for r in page.refs} == truth


def test_changes_since_returns_only_recent_updates(server: SandboxServer) -> None:
    with control(server) as ctl:
        created = ctl.post("/issues", json={"project": "WEB", "summary": "fresh change"}).json()
    since = time.time() - 120

    async def run(source: JiraSource) -> list[Ref]:
        pages = await collect(source.changes(Scope("jira", "WEB"), since, None))
        return [r for page in pages for r in page.refs]

    refs = with_source(server, run)
    seeded = [i for i in sim_of(server).issues.values() if i.key.startswith("WEB-")]
    assert created["id"] in [r.id for r in refs]
    assert len(refs) < len(seeded)  # the seeded, older issues are not listed again
    assert all(r.document and r.document.updated_at >= since - 60 for r in refs)  # minute precision


def test_fetch_returns_current_document_and_gone_after_delete(server: SandboxServer) -> None:
    with control(server) as ctl:
        issue = ctl.post("/issues", json={"project": "OPS", "summary": "fetch me", "labels": ["x"],
                                          "description": "Steps to reproduce.\n\nSecond paragraph."}).json()
        ctl.post(f"/issues/{issue['id']}/comments", json={"body": "On it.", "author": "Grace Hopper"})
    ref = Ref("jira", issue["id"], "OPS")
    doc = with_source(server, lambda s: s.fetch(ref))
    assert isinstance(doc, Document)
    assert doc.title == f"{issue['key']}: fetch me" and doc.metadata["labels"] == ["x"]
    assert "Steps to reproduce." in doc.text and "Comment by Grace Hopper on" in doc.text
    with control(server) as ctl:
        ctl.delete(f"/issues/{issue['id']}")
    assert with_source(server, lambda s: s.fetch(ref)) == Gone("jira", issue["id"])


def test_failed_fetch_raises_instead_of_gone(server: SandboxServer) -> None:
    ref = Ref("jira", "10001", "SUBS")
    with pytest.raises(PermanentSourceError) as caught:
        with_source(server, lambda s: s.fetch(ref), JIRA_API_TOKEN="revoked")
    assert caught.value.status == 401


def test_moved_issue_is_one_document_with_new_scope(server: SandboxServer) -> None:
    with control(server) as ctl:
        issue = ctl.post("/issues", json={"project": "SUBS", "summary": "wanders"}).json()
        moved = ctl.post(f"/issues/{issue['id']}/move", json={"project": "OPS"}).json()
    doc = with_source(server, lambda s: s.fetch(Ref("jira", issue["id"], "SUBS")))
    assert isinstance(doc, Document)
    assert doc.id == issue["id"] and doc.scope == "OPS" and doc.metadata["key"] == moved["key"]
    old_scope = with_source(server, lambda s: collect(s.live_ids(Scope("jira", "SUBS"))))
    new_scope = with_source(server, lambda s: collect(s.live_ids(Scope("jira", "OPS"))))
    assert issue["id"] in new_scope and issue["id"] not in old_scope


def test_live_ids_match_ground_truth(scale: SandboxServer) -> None:
    ids = with_source(scale, lambda s: collect(s.live_ids(Scope("jira", "OPS"))))
    truth = [str(i.id) for i in sim_of(scale).issues.values()
             if sim_of(scale).projects[i.project_id].key == "OPS"]
    assert sorted(ids) == sorted(truth) and len(ids) > 100


def test_rate_limit_429_is_waited_out_through_source_http(server: SandboxServer) -> None:
    jira = sim_of(server)
    before = jira.throttled
    jira.knobs.rate_limit = 2
    try:
        async def burst(source: JiraSource) -> tuple[list[Any], int]:
            docs = [await source.fetch(Ref("jira", str(i.id))) for i in list(jira.issues.values())[:5]]
            return docs, source.http.requests

        docs, sent = with_source(server, burst)
    finally:
        jira.knobs.rate_limit = None
    assert all(isinstance(d, Document) for d in docs)
    assert jira.throttled > before  # the simulator did answer 429 ...
    assert sent > 5  # ... and SourceHTTP waited Retry-After and asked again


# --- webhooks -------------------------------------------------------------------------------


#: A complete Jira configuration for the pure parse tests (JIRA_URL alone is half a source,
#: a start-up error).
PARSE_ONLY = {"JIRA_URL": "http://x", "JIRA_EMAIL": "bot@example.com", "JIRA_API_TOKEN": "t"}


def _source(env: dict[str, str]) -> JiraSource:
    return build(settings_for(env), httpx.AsyncClient())


def test_verify_accepts_the_simulators_real_deliveries(server: SandboxServer) -> None:
    sink = server.sims["sink"]
    assert isinstance(sink, Sink)
    sink.received.clear()
    with control(server) as ctl:
        issue = ctl.post("/issues", json={"project": "WEB", "summary": "signed"}).json()
        ctl.post(f"/issues/{issue['id']}/comments", json={"body": "hello"})
        ctl.delete(f"/issues/{issue['id']}")
    server.run_coroutine(sim_of(server).webhooks.drain(10))
    source = _source(server.env())
    results = []
    for headers, body in sink.received:
        source.verify(headers, body)
        results.append(source.parse(headers, body))
    ops = [(r.refs[0].op, r.refs[0].id, r.refs[0].scope) for r in results]
    # created, comment_created, issue_deleted, then the cascade: comment_deleted (Secondary).
    assert ops == [("sync", issue["id"], "WEB"), ("sync", issue["id"], "WEB"), ("delete", issue["id"], "WEB"),
                   ("sync", issue["id"], "WEB")]
    assert [h["x-atlassian-webhook-flow"] for h, _ in sink.received] == ["Primary"] * 3 + ["Secondary"]
    assert all(r.delivery_id == h["x-atlassian-webhook-identifier"] for r, (h, _) in zip(results, sink.received))
    assert all(r.refs[0].event_at and r.refs[0].event_at > 1.6e9 for r in results)


def test_verify_refuses_bad_signature_and_missing_secret(server: SandboxServer) -> None:
    body = b'{"webhookEvent":"jira:issue_updated"}'
    source = _source(server.env())
    source.verify(signed(body), body)
    with pytest.raises(InvalidWebhook):
        source.verify(signed(body, "wrong-secret"), body)
    with pytest.raises(InvalidWebhook):
        source.verify(signed(body), body + b" ")  # re-serialised bodies fail
    with pytest.raises(InvalidWebhook):
        source.verify({}, body)
    unconfigured = _source({**server.env(), "JIRA_WEBHOOK_SECRET": ""})
    with pytest.raises(NotConfigured):
        unconfigured.verify(signed(body), body)


def _event(name: str, **extra: Any) -> bytes:
    payload = {"timestamp": 1_700_000_000_123, "webhookEvent": name,
               "issue": {"id": "10001", "key": "SUBS-1", "fields": {"project": {"key": "SUBS"}}}, **extra}
    return json.dumps(payload).encode()


@pytest.mark.parametrize("event,op", [
    ("jira:issue_created", "sync"), ("jira:issue_updated", "sync"), ("comment_created", "sync"),
    ("comment_updated", "sync"), ("comment_deleted", "sync"), ("jira:issue_deleted", "delete"),
])
def test_parse_issue_and_comment_events(event: str, op: str) -> None:
    body = _event(event)
    result = _source(PARSE_ONLY).parse(signed(body), body)
    assert result.delivery_id == "d-1"
    assert result.refs == [Ref("jira", "10001", "SUBS", op, 1_700_000_000.123)]


def test_parse_unknown_scope_and_malformed_events() -> None:
    source = _source(PARSE_ONLY)
    ignored = source.parse({}, _event("worklog_created"))
    assert ignored.refs == [] and "worklog_created" in ignored.note
    archived = source.parse({}, json.dumps({"webhookEvent": "project_archived",
                                            "project": {"key": "OPS"}}).encode())
    assert archived.scope_events == [("archived", "OPS")] and archived.refs == []
    with pytest.raises(MalformedWebhook):
        source.parse({}, b"{not json")
    with pytest.raises(MalformedWebhook):
        source.parse({}, b"[1, 2]")
    with pytest.raises(MalformedWebhook):
        source.parse({}, json.dumps({"webhookEvent": "jira:issue_updated"}).encode())


def test_parse_comment_event_names_its_issue_by_the_comment_url() -> None:
    """A comment event without an issue object (as a cascade's comment_deleted may come) still
    re-syncs its issue, named in comment.self; without either it is malformed."""
    source = _source(PARSE_ONLY)
    comment = {"id": "20001", "self": "https://acme.atlassian.net/rest/api/2/issue/10042/comment/20001"}
    body = json.dumps({"timestamp": 1_700_000_000_000, "webhookEvent": "comment_deleted",
                       "comment": comment}).encode()
    assert source.parse({}, body).refs == [Ref("jira", "10042", "", "sync", 1_700_000_000.0)]
    with pytest.raises(MalformedWebhook):
        source.parse({}, json.dumps({"webhookEvent": "comment_deleted", "comment": {"id": "1"}}).encode())
    with pytest.raises(MalformedWebhook):  # the fallback is for comment events only
        source.parse({}, json.dumps({"webhookEvent": "jira:issue_updated", "comment": comment}).encode())


def test_out_of_order_webhooks_end_in_the_newest_state(server: SandboxServer) -> None:
    sink = server.sims["sink"]
    assert isinstance(sink, Sink)
    with control(server) as ctl:
        issue = ctl.post("/issues", json={"project": "WEB", "summary": "v0"}).json()
        server.run_coroutine(sim_of(server).webhooks.drain(10))
        sink.received.clear()
        ctl.put("/settings", json={"webhook_mode": "hold"})
        try:
            ctl.put(f"/issues/{issue['id']}", json={"summary": "v1"})
            ctl.put(f"/issues/{issue['id']}", json={"summary": "v2"})
        finally:
            ctl.put("/settings", json={"webhook_mode": "now"})
        ctl.post("/webhooks/release", json={"order": "reverse"})
    source = _source(server.env())
    refs = [source.parse(h, b).refs[0] for h, b in sink.received]
    assert len(refs) == 2 and refs[0].event_at is not None and refs[1].event_at is not None
    assert refs[0].event_at >= refs[1].event_at  # the newer event arrived first
    # Whatever order the events arrive in, a fetch reads the current truth.
    docs = with_source(server, lambda s: asyncio.gather(*(s.fetch(r) for r in refs)))
    assert [d.title.split(": ", 1)[1] for d in docs] == ["v2", "v2"]
