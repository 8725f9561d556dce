"""The Notion connector: pure normalisation, then every path against the simulator over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from core.documents import Document, Gone, Ref
from core.errors import InvalidWebhook, MalformedWebhook, NotConfigured, PermanentSourceError
from core.settings import Settings
from core.sources.base import Source
from core.sources.notion import (
    SCOPE,
    BlockNode,
    NotionSource,
    build,
    event_to_result,
    page_to_document,
)
from sandbox.notion import NotionSimulator, rich_text
from sandbox.server import SandboxServer, create_simulators
from tests.sinks import Sink

T = TypeVar("T")


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    sims: dict[str, Any] = create_simulators(["notion"], profile="small")
    sims["sink"] = Sink()
    sims["notion"].knobs.rate_limit = 0
    srv = SandboxServer(sims).start()
    sims["notion"].webhooks.target = srv.url("sink") + "/hook"
    yield srv
    srv.stop()


@pytest.fixture()
def sim(server: SandboxServer) -> NotionSimulator:
    sim = server.sims["notion"]
    assert isinstance(sim, NotionSimulator)
    return sim


def settings_for(env: dict[str, str], **extra: str) -> Any:
    return Settings.from_environ({**env, **extra}).source("notion")


def run(env: dict[str, str], body: Callable[[NotionSource], Awaitable[T]], **extra: str) -> T:
    """Build the connector on a fresh AsyncClient and run ``body`` with it."""
    async def main() -> T:
        async with httpx.AsyncClient(timeout=10) as client:
            return await body(build(settings_for(env, **extra), client))
    return asyncio.run(main())


def control(server: SandboxServer, method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, server.url("notion") + "/_sandbox" + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


async def collect(aiter: Any) -> list[Any]:
    return [item async for item in aiter]


def by_title(sim: NotionSimulator, title: str) -> Any:
    return next(p for p in sim.pages.values() if p.title == title)


# --- pure normalisation ---------------------------------------------------------------------------
def block(kind: str, text: str = "", **extra: Any) -> dict[str, Any]:
    return {"object": "block", "id": f"b-{kind}-{text}", "type": kind, "has_children": False,
            kind: {"rich_text": rich_text(text), **extra}}


RAW_PAGE = {
    "object": "page", "id": "11111111-2222-4333-8444-555555555555",
    "created_time": "2025-06-01T10:00:00.000Z", "last_edited_time": "2025-06-02T11:30:00.000Z",
    "created_by": {"object": "user", "id": "u1"}, "last_edited_by": {"object": "user", "id": "u2"},
    "parent": {"type": "data_source_id", "data_source_id": "ds1", "database_id": "db1"},
    "in_trash": False, "url": "https://www.notion.so/Ship-it-111",
    "properties": {
        "Name": {"id": "title", "type": "title", "title": rich_text("Ship it")},
        "Status": {"id": "s", "type": "select", "select": {"name": "In progress"}},
        "Owner": {"id": "o", "type": "people", "people": [{"object": "user", "id": "u1"}]},
        "Tags": {"id": "t", "type": "multi_select", "multi_select": [{"name": "a"}, {"name": "b"}]},
        "Done": {"id": "d", "type": "checkbox", "checkbox": False},
        "Due": {"id": "du", "type": "date", "date": {"start": "2025-07-01", "end": None}},
        "Empty": {"id": "e", "type": "rich_text", "rich_text": []},
    },
}


def test_page_to_document_builds_sections_from_nested_blocks() -> None:
    tree = [
        BlockNode(block("paragraph", "Intro line.")),
        BlockNode(block("heading_1", "Plan")),
        BlockNode(block("numbered_list_item", "first")),
        BlockNode(block("numbered_list_item", "second"), [BlockNode(block("bulleted_list_item", "nested"))]),
        BlockNode(block("to_do", "call finance", checked=True)),
        BlockNode(block("heading_2", "Code")),
        BlockNode(block("code", "a = 1\n\nb = 2", language="python")),
        BlockNode(block("toggle", "More"), [BlockNode(block("quote", "deep thought"))]),
        BlockNode({"object": "block", "id": "c", "type": "child_page", "has_children": True,
                   "child_page": {"title": "Sub page"}}),
    ]
    doc = page_to_document(RAW_PAGE, tree, {"u1": "Ada Lovelace", "u2": "Alan Turing"})
    paragraphs = doc.text.split("\n\n")
    assert paragraphs[0] == "Ship it"
    assert paragraphs[1].splitlines() == ["Status: In progress", "Owner: Ada Lovelace", "Tags: a, b",
                                          "Done: No", "Due: 2025-07-01"]
    assert paragraphs[2] == "Intro line."
    assert paragraphs[3] == "# Plan\n1. first\n2. second\n  - nested\n[x] call finance"
    assert paragraphs[4] == "## Code\n```python\na = 1\nb = 2\n```\nMore\n  > deep thought\nSub-page: Sub page"
    assert doc.id == RAW_PAGE["id"] and doc.source == "notion" and doc.scope == "workspace"
    assert doc.title == "Ship it" and doc.url == RAW_PAGE["url"]
    assert doc.author == "Ada Lovelace"
    assert doc.updated_at == 1748863800.0  # 2025-06-02T11:30:00Z
    assert doc.metadata == {"parent_type": "database_id", "parent_id": "db1", "database_id": "db1",
                            "created_at": 1748772000.0, "last_edited_by": "Alan Turing",
                            "last_edited_by_id": "u2"}


def test_plain_page_has_no_property_lines_and_keeps_ids_without_names() -> None:
    page = {**RAW_PAGE, "parent": {"type": "workspace", "workspace": True},
            "properties": {"title": {"id": "title", "type": "title", "title": rich_text("Notes")}}}
    doc = page_to_document(page, [BlockNode(block("paragraph", "Body"))])
    assert doc.text == "Notes\n\nBody"
    assert doc.author == "u1" and "database_id" not in doc.metadata
    assert doc.metadata["parent_type"] == "workspace"


def envelope(kind: str, entity: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "evt-1", "timestamp": "2025-06-01T12:00:00.500Z", "workspace_id": "w",
            "subscription_id": "s", "integration_id": "i", "type": kind,
            "authors": [{"id": "u1", "type": "person"}], "attempt_number": 1,
            "entity": entity or {"id": "p1", "type": "page"}, "data": {}, **extra}


@pytest.mark.parametrize("kind,op", [
    ("page.created", "sync"), ("page.content_updated", "sync"), ("page.properties_updated", "sync"),
    ("page.moved", "sync"), ("page.undeleted", "sync"), ("page.deleted", "delete"),
])
def test_page_events_become_refs(kind: str, op: str) -> None:
    result = event_to_result(envelope(kind))
    assert result.refs == [Ref("notion", "p1", "workspace", op, event_at=1748779200.5)]  # type: ignore[arg-type]
    assert result.delivery_id == "evt-1"


@pytest.mark.parametrize("kind,entity", [
    ("database.schema_updated", {"id": "db1", "type": "database"}),
    ("data_source.content_updated", {"id": "ds1", "type": "data_source"}),
    ("comment.created", {"id": "c1", "type": "comment"}),  # no data.page_id: nothing to re-fetch
])
def test_non_page_events_are_ignored_with_a_note(kind: str, entity: dict[str, str]) -> None:
    result = event_to_result(envelope(kind, entity))
    assert result.refs == [] and result.delivery_id == "evt-1"
    assert kind in result.note


@pytest.mark.parametrize("kind", ["comment.created", "comment.updated", "comment.deleted"])
def test_comment_events_refetch_their_page(kind: str) -> None:
    event = envelope(kind, {"id": "c1", "type": "comment"},
                     data={"page_id": "p9", "parent": {"id": "b1", "type": "block"}})
    result = event_to_result(event)
    assert result.refs == [Ref("notion", "p9", "workspace", "sync", event_at=1748779200.5)]  # type: ignore[arg-type]


def test_malformed_events_are_refused() -> None:
    with pytest.raises(MalformedWebhook):
        event_to_result({"id": "x", "type": "page.created"})  # no entity


# --- webhooks: handshake, verify, parse ------------------------------------------------------------------
def source_for(env: dict[str, str], **extra: str) -> NotionSource:
    return build(settings_for(env, **extra), httpx.AsyncClient())


def sign(token: str, body: bytes) -> str:
    return "sha256=" + hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def test_handshake_returns_the_verification_token(server: SandboxServer) -> None:
    # Before NOTION_WEBHOOK_TOKEN is configured, the unsigned handshake is recorded ...
    source = source_for({**server.env(), "NOTION_WEBHOOK_TOKEN": ""})
    assert isinstance(source, Source)
    body = json.dumps({"verification_token": "secret_abc"}).encode()
    assert source.handshake({"content-type": "application/json"}, body) == "secret_abc"
    # ... after it, an unsigned handshake is refused: nobody can plant a token.
    with pytest.raises(NotConfigured, match="NOTION_WEBHOOK_TOKEN"):
        source_for(server.env()).handshake({}, body)
    assert source.handshake({"X-Notion-Signature": "sha256=00"}, body) is None  # signed: not a handshake
    assert source.handshake({}, json.dumps(envelope("page.created")).encode()) is None
    assert source.handshake({}, b"not json") is None


def test_verify_accepts_good_and_refuses_bad_or_missing(server: SandboxServer) -> None:
    env = server.env()
    source = source_for(env)
    body = json.dumps(envelope("page.created")).encode()
    good = sign(env["NOTION_WEBHOOK_TOKEN"], body)
    source.verify({"X-Notion-Signature": good}, body)
    source.verify({"x-notion-signature": good}, body)  # header names are case-insensitive
    with pytest.raises(InvalidWebhook):
        source.verify({"X-Notion-Signature": sign("other", body)}, body)
    with pytest.raises(InvalidWebhook):
        source.verify({"X-Notion-Signature": good}, body + b" ")  # raw bytes, not re-serialised
    with pytest.raises(InvalidWebhook):
        source.verify({}, body)
    with pytest.raises(NotConfigured):
        source_for(env, NOTION_WEBHOOK_TOKEN="").verify({"X-Notion-Signature": good}, body)


def test_parse_refuses_non_json(server: SandboxServer) -> None:
    with pytest.raises(MalformedWebhook):
        source_for(server.env()).parse({}, b"{oops")


def test_simulator_events_verify_and_aggregate_into_one_ref(server: SandboxServer, sim: NotionSimulator) -> None:
    sink = server.sims["sink"]
    assert isinstance(sink, Sink)
    server.run_coroutine(sim.drain(10))  # earlier tests' events must not land in this one
    sink.received.clear()
    # A window no loaded machine can outlast between three requests; drain() then closes it
    # (the test used a 0.3 s window and failed whenever the three edits took longer).
    control(server, "PUT", "/settings", {"aggregation_window": 600})
    page = by_title(sim, "Customer interview notes")
    try:
        for author in ("Ada Lovelace", "Grace Hopper", "Ada Lovelace"):
            control(server, "POST", f"/pages/{page.id}/blocks",
                    {"blocks": [{"type": "paragraph", "text": f"note by {author}"}], "author": author})
        assert not sink.received  # still aggregating
        server.run_coroutine(sim.drain(30))
    finally:
        control(server, "PUT", "/settings", {"aggregation_window": 1.0})
    source = source_for(server.env())
    results = []
    for headers, body in sink.received:
        source.verify(headers, body)
        results.append(source.parse(headers, body))
    assert len(results) == 1
    assert results[0].refs[0].id == page.id and results[0].refs[0].op == "sync"
    event = json.loads(sink.received[0][1])
    assert {sim.users[a["id"]]["name"] for a in event["authors"]} == {"Ada Lovelace", "Grace Hopper"}
    assert results[0].delivery_id == event["id"]


# --- fetch, changes, live_ids against the simulator --------------------------------------------------------
def test_fetch_turns_nested_blocks_into_text(server: SandboxServer, sim: NotionSimulator) -> None:
    page = by_title(sim, "SUBS billing migration")
    doc = run(server.env(), lambda s: s.fetch(Ref("notion", page.id)))
    assert isinstance(doc, Document)
    assert doc.title == "SUBS billing migration"
    assert "# Summary\nWe decided to move SUBS billing to monthly invoicing from July." in doc.text
    assert "  Follow-up note" in doc.text  # child of a bulleted item, indented
    assert "  > Never silently stale" in doc.text  # inside a toggle
    assert "Sub-page: Meeting notes 2025-06-02" in doc.text
    assert "Agreed to freeze SUBS pricing" not in doc.text  # a child page is its own document
    assert doc.author == sim.users[page.created_by]["name"]
    assert doc.metadata["parent_type"] == "workspace"
    assert doc.updated_at == page.edited // 60 * 60


def test_fetch_database_row_includes_properties(server: SandboxServer, sim: NotionSimulator) -> None:
    page = by_title(sim, "Ship Notion connector")
    for version in ("2022-06-28", "2026-03-11"):
        doc = run(server.env(), lambda s: s.fetch(Ref("notion", page.id)), NOTION_VERSION=version)
        assert isinstance(doc, Document)
        assert "Status: In progress" in doc.text and "Owner: Ada Lovelace" in doc.text
        assert "Tags: search, notion" in doc.text and "Estimate: 5" in doc.text
        assert doc.metadata["database_id"] == page.parent[1]


@pytest.mark.parametrize("version", ["2022-06-28", "2026-03-11"])
def test_trashed_page_is_gone_and_restored_page_comes_back(server: SandboxServer, sim: NotionSimulator,
                                                           version: str) -> None:
    page = by_title(sim, "Incident review: queue backlog")
    control(server, "POST", f"/pages/{page.id}/trash")
    try:
        gone = run(server.env(), lambda s: s.fetch(Ref("notion", page.id)), NOTION_VERSION=version)
        assert gone == Gone("notion", page.id)
    finally:
        control(server, "POST", f"/pages/{page.id}/restore")
    back = run(server.env(), lambda s: s.fetch(Ref("notion", page.id)), NOTION_VERSION=version)
    assert isinstance(back, Document)


def test_unknown_or_unshared_page_is_gone(server: SandboxServer) -> None:
    hidden = control(server, "POST", "/pages", {"title": "Not shared", "shared": False})
    for pid in ("00000000-0000-4000-8000-000000000000", hidden["id"]):
        assert run(server.env(), lambda s: s.fetch(Ref("notion", pid))) == Gone("notion", pid)


def test_failed_fetch_raises_never_gone(server: SandboxServer, sim: NotionSimulator) -> None:
    page = by_title(sim, "Q3 roadmap")
    with pytest.raises(PermanentSourceError) as err:
        run(server.env(), lambda s: s.fetch(Ref("notion", page.id)), NOTION_TOKEN="ntn_revoked")
    assert err.value.status == 401
    # A 404 that is not Notion's object_not_found (wrong base URL) is a failure, not a deletion.
    wrong = {**server.env(), "NOTION_API_URL": server.url("notion") + "/nope"}
    with pytest.raises(PermanentSourceError):
        run(wrong, lambda s: s.fetch(Ref("notion", page.id)))


def test_changes_since_stops_at_older_pages(server: SandboxServer, sim: NotionSimulator) -> None:
    since = time.time() - 3 * 86400

    async def body(source: NotionSource) -> tuple[list[Any], int]:
        pages = await collect(source.changes(SCOPE, since, None))
        return pages, source.http.requests

    pages, requests = run(server.env(), body)
    assert requests == 1
    ids = {r.id for p in pages for r in p.refs}
    expected = {pid for pid, p in sim.pages.items() if p.edited // 60 * 60 >= since // 60 * 60
                and p.shared and not p.in_trash}
    assert ids == expected and by_title(sim, "Action items").id in ids
    assert pages[-1].checkpoint is None
    assert pages[0].high_water == max(sim.pages[i].edited // 60 * 60 for i in ids)
    assert all(r.document is None and r.op == "sync" for p in pages for r in p.refs)  # refs only


def test_live_ids_lists_every_visible_page(server: SandboxServer, sim: NotionSimulator) -> None:
    ids = run(server.env(), lambda s: collect(s.live_ids(SCOPE)))
    assert set(ids) == {pid for pid, p in sim.pages.items() if p.shared and not p.in_trash}
    assert len(ids) == len(set(ids))


def test_changes_pages_with_checkpoints_and_resumes_on_scale() -> None:
    sims = create_simulators(["notion"], profile="scale")
    sims["notion"].knobs.rate_limit = 0
    srv = SandboxServer(sims).start()
    try:
        env = srv.env()
        pages = run(env, lambda s: collect(s.changes(SCOPE, None, None)))
        assert len(pages) == 15 and sum(len(p.refs) for p in pages) == 1500
        assert all(p.checkpoint for p in pages[:-1]) and pages[-1].checkpoint is None
        resumed = run(env, lambda s: collect(s.changes(SCOPE, None, pages[4].checkpoint)))
        assert [r.id for p in resumed for r in p.refs] == [r.id for p in pages[5:] for r in p.refs]
        since = time.time() - 30 * 86400  # about a twelfth of the year of edits
        recent = run(env, lambda s: collect(s.changes(SCOPE, since, None)))
        assert 1 <= len(recent) < 5
        assert all(p.high_water is None or p.high_water >= since // 60 * 60 for p in recent)
        assert _live_ids_with_an_edit_midway(srv) == set(sims["notion"].pages)
    finally:
        srv.stop()


def _live_ids_with_an_edit_midway(srv: SandboxServer) -> set[str]:
    """List live ids, editing a not-yet-listed page after the first page of results: the edit
    moves it in the sort order, and it must still be listed (else pruning would delete it)."""
    async def body(source: NotionSource) -> set[str]:
        ids: list[str] = []
        async for pid in source.live_ids(SCOPE):
            ids.append(pid)
            if len(ids) == 150:
                unlisted = next(p for p in srv.sims["notion"].pages if p not in ids)  # type: ignore[attr-defined]
                async with httpx.AsyncClient() as client:
                    answer = await client.patch(f"{srv.url('notion')}/_sandbox/pages/{unlisted}",
                                                json={"title": "edited while listing"})
                    assert answer.status_code == 200
        assert len(ids) == len(set(ids))
        return set(ids)
    return run(srv.env(), body)


def test_rate_limited_requests_wait_retry_after_through_source_http(server: SandboxServer,
                                                                    sim: NotionSimulator) -> None:
    titles = ("Onboarding guide", "API style guide", "Release checklist", "Q3 roadmap")
    ids = [by_title(sim, t).id for t in titles]
    sim.knobs.rate_limit = None  # Notion's own ~3/s with bursts

    async def body(source: NotionSource) -> tuple[list[Any], int]:
        docs = await asyncio.gather(*(source.fetch(Ref("notion", pid)) for pid in ids))
        return list(docs), source.http.requests

    try:  # inline comments off: this is about 429s, and each block's request would cost ~0.3 s here
        docs, requests = run(server.env(), body, NOTION_BLOCK_COMMENTS="0")
    finally:
        sim.knobs.rate_limit = 0
    assert [d.title for d in docs] == list(titles)
    logical = sum(1 + _blocks_with_children(sim, pid) for pid in ids) + 4  # + user look-ups
    assert requests > logical  # some were answered 429, waited out and sent again


def _blocks_with_children(sim: NotionSimulator, page_id: str) -> int:
    count = 0

    def walk(ids: list[str]) -> None:
        nonlocal count
        for bid in ids:
            b = sim.blocks[bid]
            if b.children and b.type not in ("child_page", "child_database"):
                count += 1
                walk(b.children)

    walk(sim.pages[page_id].children)
    return count


# --- deep block trees -----------------------------------------------------------------------------
def nested_spec(depth: int, label: str) -> list[dict[str, Any]]:
    """``depth`` toggles, each inside the previous one, each with its own text."""
    spec: dict[str, Any] = {"type": "toggle", "text": f"{label} level {depth}"}
    for level in range(depth - 1, 0, -1):
        spec = {"type": "toggle", "text": f"{label} level {level}", "children": [spec]}
    return [spec]


def test_fetch_reads_a_20_level_block_tree_completely(server: SandboxServer, sim: NotionSimulator) -> None:
    page = control(server, "POST", "/pages", {"title": "Deep outline", "blocks": nested_spec(20, "Deep")})
    assert sim.page_text(sim.pages[page["id"]])[-1] == "Deep level 20"  # the simulator holds all 20
    doc = run(server.env(), lambda s: s.fetch(Ref("notion", page["id"])))
    assert isinstance(doc, Document)
    for level in range(1, 21):
        assert f"Deep level {level}\n" in doc.text + "\n", f"level {level} missing"
    # Deeper levels read after shallower ones, in tree order.
    assert doc.text.index("Deep level 19") < doc.text.index("Deep level 20")


def test_fetch_over_the_block_budget_fails_loudly(server: SandboxServer, sim: NotionSimulator) -> None:
    page = control(server, "POST", "/pages", {"title": "Too many blocks", "blocks": nested_spec(6, "Budget")})

    async def fetch_with_budget(source: NotionSource) -> Any:
        source.max_blocks = 5  # the page has 6 blocks
        return await source.fetch(Ref("notion", page["id"]))

    with pytest.raises(PermanentSourceError, match="more than 5 blocks"):
        run(server.env(), fetch_with_budget)
    exact = run(server.env(), lambda s: s.fetch(Ref("notion", page["id"])))
    assert isinstance(exact, Document) and "Budget level 6" in exact.text


def test_rendering_a_very_deep_tree_does_not_recurse() -> None:
    depth = 5000  # far past Python's recursion limit
    root = node = BlockNode({"type": "paragraph", "paragraph": {"rich_text": rich_text("level 1")}})
    for level in range(2, depth + 1):
        child = BlockNode({"type": "paragraph", "paragraph": {"rich_text": rich_text(f"level {level}")}})
        node.children.append(child)
        node = child
    doc = page_to_document({"id": "p-deep", "properties": {}}, [root])
    lines = doc.text.split("\n")
    assert [line.strip() for line in lines[2:]] == [f"level {n}" for n in range(1, depth + 1)]
    assert max(len(line) - len(line.lstrip()) for line in lines) <= 2 * 12  # indent is capped


# --- comments ------------------------------------------------------------------------------------
def test_fetch_includes_comments_and_drops_deleted_ones(server: SandboxServer, sim: NotionSimulator) -> None:
    page = control(server, "POST", "/pages", {"title": "Design review",
                                              "blocks": [{"type": "paragraph", "text": "The proposal."}]})
    first = control(server, "POST", f"/pages/{page['id']}/comments",
                    {"text": "Looks good\nto me", "author": "Grace Hopper"})
    control(server, "POST", f"/pages/{page['id']}/comments", {"text": "One question", "author": "Alan Turing"})
    control(server, "POST", f"/pages/{page['id']}/comments",
            {"text": "Answered inline", "author": "Ada Lovelace", "discussion_id": first["discussion_id"]})
    for n in range(3):  # more than one page of comments at the connector's page size below
        control(server, "POST", f"/pages/{page['id']}/comments", {"text": f"Extra {n}", "author": "Ada Lovelace"})

    async def fetch_small_pages(source: NotionSource) -> Any:
        import core.sources.notion as notion
        saved, notion.PAGE_SIZE = notion.PAGE_SIZE, 2
        try:
            return await source.fetch(Ref("notion", page["id"]))
        finally:
            notion.PAGE_SIZE = saved

    doc = run(server.env(), fetch_small_pages)
    assert isinstance(doc, Document)
    assert doc.text.endswith("Comments:\nGrace Hopper: Looks good to me\nAda Lovelace: Answered inline\n"
                             "Alan Turing: One question\nAda Lovelace: Extra 0\nAda Lovelace: Extra 1\n"
                             "Ada Lovelace: Extra 2")
    assert doc.metadata["comment_ids"][0] == first["id"]
    assert doc.updated_at == sim.pages[page["id"]].edited // 60 * 60  # comments do not edit the page

    control(server, "PATCH", f"/comments/{first['id']}", {"text": "Changed my mind"})
    control(server, "DELETE", f"/comments/{doc.metadata['comment_ids'][-1]}")
    again = run(server.env(), lambda s: s.fetch(Ref("notion", page["id"])))
    assert isinstance(again, Document)
    assert "Grace Hopper: Changed my mind" in again.text and "Looks good" not in again.text
    assert "Extra 2" not in again.text and len(again.metadata["comment_ids"]) == 5


def test_without_the_comments_capability_pages_index_without_comments(server: SandboxServer,
                                                                     sim: NotionSimulator) -> None:
    page = control(server, "POST", "/pages", {"title": "Private remarks",
                                              "blocks": [{"type": "paragraph", "text": "Visible body."}]})
    control(server, "POST", f"/pages/{page['id']}/comments", {"text": "Hidden remark"})
    control(server, "PUT", "/settings", {"read_comments": False})
    try:
        async def twice(source: NotionSource) -> list[Any]:
            docs = [await source.fetch(Ref("notion", page["id"])) for _ in range(2)]
            assert source.comments_readable is False  # remembered: later fetches skip the call
            return docs
        docs = run(server.env(), twice)
    finally:
        control(server, "PUT", "/settings", {"read_comments": True})
    for doc in docs:
        assert isinstance(doc, Document)
        assert "Visible body." in doc.text and "Hidden remark" not in doc.text


# --- inline comments (on blocks) ------------------------------------------------------------------
def _inline_page(server: SandboxServer, sim: NotionSimulator, title: str) -> tuple[str, list[str]]:
    """A page of three blocks (the last nested in a toggle); its block ids in document order."""
    page = control(server, "POST", "/pages", {"title": title, "blocks": [
        {"type": "paragraph", "text": "The budget is ten thousand."},
        {"type": "toggle", "text": "Details", "children": [{"type": "paragraph", "text": "Vendor is Acme."}]}]})
    top = sim.pages[page["id"]].children
    return page["id"], [top[0], top[1], sim.blocks[top[1]].children[0]]


def test_fetch_includes_inline_comments_under_the_text_they_are_on(server: SandboxServer,
                                                                 sim: NotionSimulator) -> None:
    page_id, (budget, _, vendor) = _inline_page(server, sim, "Inline review")
    first = control(server, "POST", f"/pages/{page_id}/comments",
                    {"text": "Too low", "author": "Grace Hopper", "block_id": budget})
    control(server, "POST", f"/pages/{page_id}/comments",
            {"text": "Agreed", "author": "Alan Turing", "discussion_id": first["discussion_id"]})
    nested = control(server, "POST", f"/pages/{page_id}/comments",
                     {"text": "Which Acme?", "author": "Ada Lovelace", "block_id": vendor})
    control(server, "POST", f"/pages/{page_id}/comments", {"text": "Page note", "author": "Ada Lovelace"})

    doc = run(server.env(), lambda s: s.fetch(Ref("notion", page_id)))
    assert isinstance(doc, Document)
    assert doc.text.endswith('Comments:\nAda Lovelace: Page note\n'
                             'On "The budget is ten thousand.":\nGrace Hopper: Too low\nAlan Turing: Agreed\n'
                             'On "Vendor is Acme.":\nAda Lovelace: Which Acme?')
    assert nested["id"] in doc.metadata["comment_ids"] and "block_comments_unchecked" not in doc.metadata

    control(server, "DELETE", f"/comments/{nested['id']}")
    again = run(server.env(), lambda s: s.fetch(Ref("notion", page_id)))
    assert isinstance(again, Document)
    assert "Which Acme?" not in again.text and "Vendor is Acme." in again.text and "Too low" in again.text


def test_inline_comments_cost_one_request_per_block_bounded_by_the_setting(server: SandboxServer,
                                                                         sim: NotionSimulator) -> None:
    page_id, (_, _, vendor) = _inline_page(server, sim, "Inline budget")
    control(server, "POST", f"/pages/{page_id}/comments", {"text": "Late remark", "block_id": vendor})

    def fetch(limit: str) -> tuple[Document, int]:
        async def body(source: NotionSource) -> tuple[Document, int]:
            await source.fetch(Ref("notion", page_id))  # users resolved and cached first
            before = source.http.requests
            doc = await source.fetch(Ref("notion", page_id))
            assert isinstance(doc, Document)
            return doc, source.http.requests - before
        return run(server.env(), body, NOTION_BLOCK_COMMENTS=limit)

    (off, off_cost), (two, two_cost), (every, every_cost) = fetch("0"), fetch("2"), fetch("200")
    assert "Late remark" in every.text and "block_comments_unchecked" not in every.metadata
    assert every_cost - off_cost == 3  # one GET /v1/comments per block: three blocks
    assert two_cost - off_cost == 2 and "Late remark" not in two.text  # the third block is not asked...
    assert two.metadata["block_comments_unchecked"] == 1  # ...and the document says so
    assert "Late remark" not in off.text and "block_comments_unchecked" not in off.metadata
