"""The Notion simulator, exercised over real HTTP with the official notion-client SDK."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from notion_client import APIResponseError, AsyncClient, Client
from notion_client.errors import APIErrorCode, UnknownHTTPResponseError
from notion_client.helpers import async_collect_paginated_api, collect_paginated_api, iterate_paginated_api

from sandbox.notion import NotionSimulator
from sandbox.server import SandboxServer, create_simulators
from tests.sinks import Sink


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    sims: dict[str, Any] = create_simulators(["notion"], profile="small")
    sims["sink"] = Sink()
    sims["notion"].knobs.rate_limit = 0  # unlimited unless a test asks for the real limit
    srv = SandboxServer(sims).start()
    sims["notion"].webhooks.target = srv.url("sink") + "/hook"
    yield srv
    srv.stop()


@pytest.fixture()
def sim(server: SandboxServer) -> NotionSimulator:
    sim = server.sims["notion"]
    assert isinstance(sim, NotionSimulator)
    return sim


@pytest.fixture()
def sink(server: SandboxServer, sim: NotionSimulator) -> Iterator[Sink]:
    sink = server.sims["sink"]
    assert isinstance(sink, Sink)
    server.run_coroutine(sim.drain(10))  # earlier tests' events must not land in this one
    sink.received.clear()
    yield sink
    sink.statuses.clear()


def client(server: SandboxServer, version: str = "2022-06-28", **kwargs: Any) -> Client:
    env = server.env()
    return Client(auth=kwargs.pop("auth", env["NOTION_TOKEN"]), base_url=env["NOTION_API_URL"],
                  notion_version=version, **kwargs)


def control(server: SandboxServer, method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, server.url("notion") + "/_sandbox" + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def title_of(page: dict[str, Any]) -> str:
    prop = next(p for p in page["properties"].values() if p["type"] == "title")
    return "".join(t["plain_text"] for t in prop["title"])


# --- SDK over the read API ---------------------------------------------------------------------
def test_search_pages_through_every_cursor_with_the_sdk(server: SandboxServer, sim: NotionSimulator) -> None:
    notion = client(server)
    pages = list(iterate_paginated_api(notion.search, filter={"property": "object", "value": "page"},
                                       sort={"direction": "descending", "timestamp": "last_edited_time"},
                                       page_size=4))
    live = {pid for pid, p in sim.truth()["pages"].items() if not p["in_trash"] and p["shared"]}
    assert {p["id"] for p in pages} == live
    assert len(pages) == len(live)  # no page repeated across cursors
    edited = [p["last_edited_time"] for p in pages]
    assert edited == sorted(edited, reverse=True)
    assert all(p["last_edited_time"].endswith(":00.000Z") for p in pages)  # rounded to the minute
    assert "Old draft (trashed)" not in {title_of(p) for p in pages}


def test_search_query_and_database_filter(server: SandboxServer) -> None:
    notion = client(server)
    found = notion.search(query="pgvector", filter={"property": "object", "value": "page"})
    assert [title_of(p) for p in found["results"]] == ["Architecture decision: pgvector"]
    assert found["type"] == "page_or_database" and found["page_or_database"] == {}
    databases = notion.search(filter={"property": "object", "value": "database"})["results"]
    assert [d["object"] for d in databases] == ["database"]
    assert "Status" in databases[0]["properties"]


def test_block_children_nested_with_async_client(server: SandboxServer, sim: NotionSimulator) -> None:
    asyncio.run(_nested_blocks(server, sim))


async def _nested_blocks(server: SandboxServer, sim: NotionSimulator) -> None:
    env = server.env()
    notion = AsyncClient(auth=env["NOTION_TOKEN"], base_url=env["NOTION_API_URL"], notion_version="2022-06-28")
    page = next(p for p in sim.pages.values() if p.title == "Onboarding guide")
    blocks = await async_collect_paginated_api(notion.blocks.children.list, block_id=page.id, page_size=3)
    types = [b["type"] for b in blocks]
    assert types[:4] == ["heading_1", "paragraph", "callout", "heading_2"]
    assert "child_page" in types  # the sub-page "Q3 ..." or similar shows as a block
    bullet = next(b for b in blocks if b["type"] == "bulleted_list_item")
    assert bullet["has_children"] is True
    nested = await async_collect_paginated_api(notion.blocks.children.list, block_id=bullet["id"])
    assert nested[0]["paragraph"]["rich_text"][0]["plain_text"].startswith("Follow-up note")
    code = next(b for b in blocks if b["type"] == "code")
    assert code["code"]["language"] == "shell"
    await notion.aclose()


def test_page_shape_per_version(server: SandboxServer, sim: NotionSimulator) -> None:
    page = next(p for p in sim.pages.values() if p.parent[0] == "database_id")
    old = client(server, "2022-06-28").pages.retrieve(page_id=page.id)
    assert old["archived"] is False and old["in_trash"] is False
    assert old["parent"] == {"type": "database_id", "database_id": page.parent[1]}
    assert old["properties"]["Status"]["select"]["name"]
    new = client(server, "2026-03-11").pages.retrieve(page_id=page.id.replace("-", ""))
    assert "archived" not in new and new["in_trash"] is False
    assert new["parent"]["type"] == "data_source_id" and new["parent"]["database_id"] == page.parent[1]
    assert new["created_by"]["object"] == "user"


def test_databases_and_data_sources(server: SandboxServer, sim: NotionSimulator) -> None:
    db = next(iter(sim.databases.values()))
    headers = {"Authorization": f"Bearer {server.env()['NOTION_TOKEN']}"}
    base = server.url("notion")
    rows = httpx.post(f"{base}/v1/databases/{db.id}/query", json={"page_size": 2},
                      headers={**headers, "Notion-Version": "2022-06-28"}).json()
    assert rows["object"] == "list" and len(rows["results"]) == 2 and rows["has_more"] is True
    rest = httpx.post(f"{base}/v1/databases/{db.id}/query", json={"start_cursor": rows["next_cursor"]},
                      headers={**headers, "Notion-Version": "2022-06-28"}).json()
    assert len(rest["results"]) == 2 and rest["has_more"] is False
    new = client(server, "2025-09-03")
    database = new.databases.retrieve(database_id=db.id)
    assert "properties" not in database
    ds_id = database["data_sources"][0]["id"]
    queried = collect_paginated_api(new.data_sources.query, data_source_id=ds_id)
    assert {title_of(p) for p in queried} >= {"Ship Notion connector", "Status dashboard"}
    moved = httpx.post(f"{base}/v1/databases/{db.id}/query", json={},
                       headers={**headers, "Notion-Version": "2025-09-03"})
    assert moved.status_code == 400 and moved.json()["code"] == "invalid_request_url"


# --- errors in Notion's shape --------------------------------------------------------------------
def test_bad_token_is_unauthorized(server: SandboxServer) -> None:
    with pytest.raises(APIResponseError) as err:
        client(server, auth="ntn_wrong").search()
    assert err.value.code == APIErrorCode.Unauthorized and err.value.status == 401
    raw = httpx.post(server.url("notion") + "/v1/search", json={}, headers={"Notion-Version": "2022-06-28"})
    assert raw.status_code == 401
    assert raw.json() | {"request_id": ""} == {"object": "error", "status": 401, "code": "unauthorized",
                                               "message": "API token is invalid.", "request_id": ""}


def test_missing_or_unknown_version(server: SandboxServer) -> None:
    auth = {"Authorization": f"Bearer {server.env()['NOTION_TOKEN']}"}
    missing = httpx.post(server.url("notion") + "/v1/search", json={}, headers=auth)
    assert missing.status_code == 400 and missing.json()["code"] == "missing_version"
    with pytest.raises(APIResponseError) as err:
        client(server, "2021-01-01").search()
    assert err.value.code == APIErrorCode.ValidationError


def test_validation_errors(server: SandboxServer) -> None:
    notion = client(server)
    for kwargs in ({"sort": {"timestamp": "created_time", "direction": "ascending"}},
                   {"page_size": 101},
                   {"filter": {"property": "object", "value": "data_source"}},
                   {"start_cursor": "not-a-cursor"}):
        with pytest.raises(APIResponseError) as err:
            notion.search(**kwargs)
        assert err.value.code == APIErrorCode.ValidationError and err.value.status == 400, kwargs
    with pytest.raises(APIResponseError) as err:
        notion.pages.retrieve(page_id="not-a-uuid")
    assert err.value.code == APIErrorCode.ValidationError
    with pytest.raises(APIResponseError) as err:
        notion.pages.retrieve(page_id="00000000-0000-4000-8000-000000000000")
    assert err.value.code == APIErrorCode.ObjectNotFound and err.value.status == 404


def test_rate_limit_answers_429_with_whole_second_retry_after(server: SandboxServer, sim: NotionSimulator) -> None:
    sim.knobs.rate_limit = None  # Notion's documented ~3/s with bursts
    try:
        notion = client(server, retry=False)
        with pytest.raises(APIResponseError) as err:
            for _ in range(40):
                notion.users.me()
        assert err.value.code == APIErrorCode.RateLimited and err.value.status == 429
        assert err.value.headers["retry-after"].isdigit() and int(err.value.headers["retry-after"]) >= 1
    finally:
        sim.knobs.rate_limit = 0


# --- control API and webhooks ------------------------------------------------------------------------
def verify(headers: dict[str, str], body: bytes, token: str) -> bool:
    """HMAC-SHA256 over the raw body, as notion-sdk-py's verify_webhook_signature does (the
    installed notion-client 3.1.0 has no webhook helper, so this is the documented algorithm)."""
    expected = "sha256=" + hmac.new(token.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("x-notion-signature", ""), expected)


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_verification_request_is_unsigned(server: SandboxServer, sink: Sink) -> None:
    sent = control(server, "POST", "/webhook/verify")
    wait_for(lambda: sink.received)
    headers, body = sink.received[0]
    assert json.loads(body) == {"verification_token": sent["verification_token"]}
    assert "x-notion-signature" not in headers
    assert sent["verification_token"] == server.env()["NOTION_WEBHOOK_TOKEN"]


def test_page_lifecycle_events_are_signed_and_carry_ids_only(server: SandboxServer, sim: NotionSimulator,
                                                            sink: Sink) -> None:
    token = server.env()["NOTION_WEBHOOK_TOKEN"]
    parent = next(p for p in sim.pages.values() if p.title == "Q3 roadmap")
    page = control(server, "POST", "/pages", {"title": "Secret plans", "parent": {"page_id": parent.id},
                                              "blocks": [{"type": "paragraph", "text": "classified"}],
                                              "author": "Grace Hopper"})
    control(server, "PATCH", f"/pages/{page['id']}", {"title": "Public plans"})
    control(server, "POST", f"/pages/{page['id']}/move", {"parent": {"type": "workspace"}})
    control(server, "POST", f"/pages/{page['id']}/trash")
    control(server, "POST", f"/pages/{page['id']}/restore")
    wait_for(lambda: len(sink.received) >= 5)
    assert all(verify(h, b, token) for h, b in sink.received)
    events = sink.events()
    assert [e["type"] for e in events] == ["page.created", "page.properties_updated", "page.moved",
                                           "page.deleted", "page.undeleted"]
    first = events[0]
    assert set(first) >= {"id", "timestamp", "workspace_id", "subscription_id", "integration_id", "type",
                          "authors", "attempt_number", "entity", "data"}
    assert first["entity"] == {"id": page["id"], "type": "page"}
    assert first["data"]["parent"] == {"id": parent.id, "type": "page"}
    assert first["authors"][0]["type"] == "person" and first["attempt_number"] == 1
    assert events[1]["data"]["updated_properties"] == ["title"]
    assert events[2]["data"]["parent"]["type"] == "space"
    assert all(b"classified" not in body for _, body in sink.received)  # ids only, never content


def test_trash_hides_from_search_and_restore_brings_back(server: SandboxServer, sim: NotionSimulator) -> None:
    notion = client(server, "2026-03-11")
    page = next(p for p in sim.pages.values() if p.title == "Release checklist")
    control(server, "POST", f"/pages/{page.id}/trash")
    assert notion.pages.retrieve(page_id=page.id)["in_trash"] is True
    assert not notion.search(query="Release checklist")["results"]
    control(server, "POST", f"/pages/{page.id}/restore")
    assert [p["id"] for p in notion.search(query="Release checklist")["results"]] == [page.id]


def test_unshared_pages_are_invisible(server: SandboxServer) -> None:
    page = control(server, "POST", "/pages", {"title": "Private diary", "shared": False})
    notion = client(server)
    with pytest.raises(APIResponseError) as err:
        notion.pages.retrieve(page_id=page["id"])
    assert err.value.code == APIErrorCode.ObjectNotFound
    assert not notion.search(query="Private diary")["results"]


def test_content_updates_aggregate_into_one_event_with_several_authors(
    server: SandboxServer, sim: NotionSimulator, sink: Sink
) -> None:
    page = next(p for p in sim.pages.values() if p.title == "API style guide")
    control(server, "PUT", "/settings", {"aggregation_window": 0.3})
    control(server, "POST", f"/pages/{page.id}/blocks", {"blocks": [{"type": "paragraph", "text": "one"}],
                                                         "author": "Ada Lovelace"})
    control(server, "PUT", f"/pages/{page.id}/blocks",
            {"blocks": [{"type": "heading_1", "text": "two", "children": []}], "author": "Alan Turing"})
    wait_for(lambda: sink.received)
    time.sleep(0.4)  # past the window: nothing more may arrive
    events = [e for e in sink.events() if e["type"] == "page.content_updated"]
    assert len(events) == 1
    names = {sim.users[a["id"]]["name"] for a in events[0]["authors"]}
    assert names == {"Ada Lovelace", "Alan Turing"}
    assert len(events[0]["data"]["updated_blocks"]) == 2
    assert sim.page_text(page) == ["two"]


def test_failed_deliveries_retry_with_growing_attempt_number(server: SandboxServer, sim: NotionSimulator,
                                                             sink: Sink) -> None:
    sink.statuses[:] = [500, 503, 200]
    control(server, "POST", "/pages", {"title": "Retry me"})
    wait_for(lambda: len(sink.received) >= 3)
    events = sink.events()
    assert [e["attempt_number"] for e in events] == [1, 2, 3]
    assert len({e["id"] for e in events}) == 1  # the same event each time
    token = server.env()["NOTION_WEBHOOK_TOKEN"]
    assert all(verify(h, b, token) for h, b in sink.received)  # each attempt re-signed


def test_retries_stop_after_eight_attempts(server: SandboxServer, sim: NotionSimulator, sink: Sink) -> None:
    control(server, "PUT", "/settings", {"retry_delay": 0.005})
    sink.statuses[:] = [500] * 20
    control(server, "POST", "/pages", {"title": "Never accepted"})
    server.run_coroutine(sim.drain(10))
    assert [e["attempt_number"] for e in sink.events()] == list(range(1, 9))
    control(server, "PUT", "/settings", {"retry_delay": 0.05})


def test_clock_advance_moves_last_edited_time(server: SandboxServer, sim: NotionSimulator) -> None:
    before = control(server, "POST", "/pages", {"title": "Clocked"})
    control(server, "POST", "/clock", {"advance": 120})
    try:
        after = control(server, "PATCH", f"/pages/{before['id']}", {"title": "Clocked later"})
    finally:
        control(server, "POST", "/clock", {"advance": -120})
    assert after["last_edited_time"] > before["last_edited_time"]


def test_control_api_rejects_bad_input(server: SandboxServer) -> None:
    bad = httpx.post(server.url("notion") + "/_sandbox/pages",
                     json={"title": "x", "blocks": [{"type": "hologram"}]})
    assert bad.status_code == 400 and bad.json()["code"] == "validation_error"
    missing = httpx.post(server.url("notion") + "/_sandbox/pages/00000000-0000-4000-8000-000000000000/trash")
    assert missing.status_code == 404


def test_scale_profile_seeds_1500_pages_with_nested_blocks() -> None:
    sim = create_simulators(["notion"], profile="scale")["notion"]
    assert isinstance(sim, NotionSimulator)
    assert len(sim.pages) == 1500
    nested = [b for b in sim.blocks.values() if b.parent[0] == "block_id"]
    assert len(nested) >= 1500  # every page has nested blocks


def test_scale_profile_pages_through_search(server: SandboxServer) -> None:
    sims = create_simulators(["notion"], profile="scale")
    sims["notion"].knobs.rate_limit = 0
    srv = SandboxServer(sims).start()
    try:
        env = srv.env()
        notion = Client(auth=env["NOTION_TOKEN"], base_url=env["NOTION_API_URL"], notion_version="2022-06-28")
        ids = [p["id"] for p in iterate_paginated_api(notion.search, filter={"property": "object", "value": "page"})]
        assert len(ids) == len(set(ids)) == 1500
    finally:
        srv.stop()


def test_drain_flushes_pending_aggregation(server: SandboxServer, sim: NotionSimulator, sink: Sink) -> None:
    # drain() flushes pending aggregation at once instead of waiting for the window.
    control(server, "PUT", "/settings", {"aggregation_window": 30})
    page = next(p for p in sim.pages.values() if p.title == "Onboarding guide")
    control(server, "POST", f"/pages/{page.id}/blocks", {"blocks": [{"type": "paragraph", "text": "late"}]})
    assert sim._pending
    server.run_coroutine(sim.drain(5))
    assert not sim._pending
    assert [e["type"] for e in sink.events()] == ["page.content_updated"]
    control(server, "PUT", "/settings", {"aggregation_window": 1.0})


# --- older versions and load shedding ----------------------------------------------------------
def test_older_versions_are_served_and_made_up_ones_refused(server: SandboxServer, sim: NotionSimulator) -> None:
    page = next(p for p in sim.pages.values() if p.title == "Onboarding guide")
    for version in ("2022-02-22", "2021-08-16", "2021-05-13"):
        notion = client(server, version)
        got = notion.pages.retrieve(page_id=page.id)
        assert got["id"] == page.id and got["archived"] is False  # pre-2026 shape
        blocks = collect_paginated_api(notion.blocks.children.list, block_id=page.id)
        paragraph = next(b for b in blocks if b["type"] == "paragraph")["paragraph"]
        # 2022-02-22 renamed a block's ``text`` to ``rich_text``.
        key = "rich_text" if version >= "2022-02-22" else "text"
        assert set(paragraph) & {"rich_text", "text"} == {key}
        assert paragraph[key][0]["plain_text"]
    db = next(iter(sim.databases.values()))
    rows = client(server, "2022-02-22").request(path=f"databases/{db.id}/query", method="POST", body={})
    assert rows["object"] == "list" and rows["results"]
    for bogus in ("2022-06-29", "2020-01-01", "latest"):
        with pytest.raises(APIResponseError) as err:
            client(server, bogus).users.me()
        assert err.value.status == 400 and err.value.code == APIErrorCode.ValidationError


def test_overload_knob_answers_529_service_overload(server: SandboxServer, sim: NotionSimulator) -> None:
    assert control(server, "PUT", "/settings", {"overload_next": 2})["overload_next"] == 2
    try:
        raw = httpx.get(server.url("notion") + "/v1/users/me", headers={
            "Authorization": f"Bearer {server.env()['NOTION_TOKEN']}", "Notion-Version": "2022-06-28"})
        assert raw.status_code == 529
        assert raw.json() | {"request_id": ""} == {
            "object": "error", "status": 529, "code": "service_overload",
            "message": "Notion is unavailable due to high load. Please try again later.", "request_id": ""}
        # notion-client knows no ``service_overload`` code: it raises its "unknown" error with the
        # body, and does not retry (a caller must back off on 529 itself).
        with pytest.raises(UnknownHTTPResponseError) as err:
            client(server).users.me()
        assert err.value.status == 529 and json.loads(err.value.body)["code"] == "service_overload"
        assert client(server).users.me()["type"] == "bot"  # the knob's two calls are spent
    finally:
        control(server, "PUT", "/settings", {"overload_next": 0, "overload_rate": 0})
    assert sim.overloaded >= 2
    bad = httpx.put(server.url("notion") + "/_sandbox/settings", json={"overload_rate": 2})
    assert bad.status_code == 400


# --- comments ----------------------------------------------------------------------------------
def test_comments_list_and_create_through_the_sdk(server: SandboxServer, sim: NotionSimulator, sink: Sink) -> None:
    token = server.env()["NOTION_WEBHOOK_TOKEN"]
    page = control(server, "POST", "/pages", {"title": "Commented page",
                                              "blocks": [{"type": "paragraph", "text": "body"}]})
    edited_before = sim.pages[page["id"]].edited
    notion = client(server)
    first = notion.comments.create(parent={"page_id": page["id"]},
                                   rich_text=[{"text": {"content": "First thought"}}])
    assert first["object"] == "comment" and first["parent"] == {"type": "page_id", "page_id": page["id"]}
    assert set(first) >= {"id", "discussion_id", "parent", "created_time", "last_edited_time",
                          "created_by", "rich_text"}
    assert first["created_by"] == {"object": "user", "id": sim.bot_id}
    assert first["rich_text"][0]["plain_text"] == "First thought"
    reply = notion.comments.create(discussion_id=first["discussion_id"],
                                   rich_text=[{"text": {"content": "A reply"}}])
    assert reply["discussion_id"] == first["discussion_id"] and reply["parent"] == first["parent"]
    for n in range(3):
        control(server, "POST", f"/pages/{page['id']}/comments", {"text": f"Person note {n}", "author": "Ada Lovelace"})
    # Paged two at a time through every cursor, oldest first.
    listed = collect_paginated_api(notion.comments.list, block_id=page["id"], page_size=2)
    assert [c["rich_text"][0]["plain_text"] for c in listed] == [
        "First thought", "A reply", "Person note 0", "Person note 1", "Person note 2"]
    assert sim.pages[page["id"]].edited == edited_before  # commenting does not edit the page
    # Webhooks: comment.created, entity = the comment, data names its page; signed.
    wait_for(lambda: len([e for e in sink.events() if e["type"].startswith("comment.")]) >= 5, timeout=30)
    assert all(verify(h, b, token) for h, b in sink.received)
    events = [e for e in sink.events() if e["type"].startswith("comment.")]
    assert [e["type"] for e in events] == ["comment.created"] * 5
    assert events[0]["entity"] == {"id": first["id"], "type": "comment"}
    assert events[0]["data"] == {"page_id": page["id"], "parent": {"id": page["id"], "type": "page"}}
    assert all(b"First thought" not in body for _, body in sink.received)  # ids only


def test_comment_edit_and_delete_events(server: SandboxServer, sim: NotionSimulator, sink: Sink) -> None:
    page = control(server, "POST", "/pages", {"title": "Edited comments",
                                              "blocks": [{"type": "paragraph", "text": "body"}]})
    block = sim.pages[page["id"]].children[0]
    on_block = control(server, "POST", f"/pages/{page['id']}/comments", {"text": "inline", "block_id": block})
    assert on_block["parent"] == {"type": "block_id", "block_id": block}
    control(server, "PATCH", f"/comments/{on_block['id']}", {"text": "inline, edited"})
    notion = client(server, "2026-03-11")
    assert notion.comments.list(block_id=block)["results"][0]["rich_text"][0]["plain_text"] == "inline, edited"
    assert notion.comments.list(block_id=page["id"])["results"] == []  # page-level only
    control(server, "DELETE", f"/comments/{on_block['id']}")
    assert notion.comments.list(block_id=block)["results"] == []
    wait_for(lambda: len([e for e in sink.events() if e["type"].startswith("comment.")]) >= 3, timeout=30)
    events = [e for e in sink.events() if e["type"].startswith("comment.")]
    assert [e["type"] for e in events] == ["comment.created", "comment.updated", "comment.deleted"]
    assert all(e["data"] == {"page_id": page["id"], "parent": {"id": block, "type": "block"}} for e in events)


def test_comment_errors(server: SandboxServer) -> None:
    notion = client(server)
    with pytest.raises(APIResponseError) as err:
        notion.comments.list()  # block_id is required
    assert err.value.code == APIErrorCode.ValidationError
    with pytest.raises(APIResponseError) as err:
        notion.comments.list(block_id="00000000-0000-4000-8000-000000000000")
    assert err.value.code == APIErrorCode.ObjectNotFound
    with pytest.raises(APIResponseError) as err:
        notion.comments.create(rich_text=[{"text": {"content": "no parent"}}])
    assert err.value.code == APIErrorCode.ValidationError
    with pytest.raises(APIResponseError) as err:
        notion.comments.create(parent="not an object", rich_text=[{"text": {"content": "x"}}])
    assert err.value.code == APIErrorCode.ValidationError
    page = control(server, "POST", "/pages", {"title": "No comment capability"})
    control(server, "PUT", "/settings", {"read_comments": False})
    try:
        with pytest.raises(APIResponseError) as err:
            notion.comments.list(block_id=page["id"])
        assert err.value.code == APIErrorCode.RestrictedResource and err.value.status == 403
    finally:
        control(server, "PUT", "/settings", {"read_comments": True})
