"""Notion comments and deep block trees end to end.

A comment added to a page becomes searchable in the page's document, an edited comment shows
its new text, a deleted one leaves the index, each through its ``comment.*`` webhook alone
(commenting moves no ``last_edited_time`` the reconciler could see); a 20-level block tree is
indexed to its deepest level. Real receiver, worker, Postgres and Redis against the Notion
simulator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from sandbox.server import SandboxServer
from tests.contract.conftest import System, start_sandbox, unique


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    server = start_sandbox(["notion"])
    server.sims["notion"].aggregation_window = 0.1  # type: ignore[attr-defined]
    yield server
    server.stop()


def last_event(system: System) -> dict[str, object]:
    return dict(json.loads(system.deliveries("notion")[-1].body))


def test_comment_added_edited_and_deleted_reach_the_index_through_webhooks(system: System) -> None:
    topic, said, changed, doomed = unique("topic"), unique("said"), unique("changed"), unique("doomed")
    page = system.control("notion", "POST", "/pages", json={
        "title": f"Comment contract {topic}", "blocks": [{"type": "paragraph", "text": f"About {topic}."}]}).json()
    document_id = f"notion:{page['id']}"
    system.settle("notion")
    assert system.found(topic, document_id, "notion")

    kept = system.control("notion", "POST", f"/pages/{page['id']}/comments",
                          json={"text": f"I think {said} {said}", "author": "Grace Hopper"}).json()
    gone = system.control("notion", "POST", f"/pages/{page['id']}/comments",
                          json={"text": f"Remove {doomed} {doomed}", "author": "Alan Turing"}).json()
    system.settle("notion")
    assert last_event(system)["type"] == "comment.created"
    assert system.found(said, document_id, "notion") and system.found(doomed, document_id, "notion")
    assert f"Grace Hopper: I think {said}" in system.chunk_texts(document_id)
    assert system.run_count() == 0  # the webhooks alone did it

    system.control("notion", "PATCH", f"/comments/{kept['id']}", json={"text": f"Now {changed} {changed}"})
    system.settle("notion")
    assert last_event(system)["type"] == "comment.updated"
    assert system.found(changed, document_id, "notion")
    assert said not in system.chunk_texts(document_id)

    system.control("notion", "DELETE", f"/comments/{gone['id']}")
    system.settle("notion")
    assert last_event(system)["type"] == "comment.deleted"
    texts = system.chunk_texts(document_id)
    assert doomed not in texts and changed in texts and topic in texts
    assert not system.found(doomed, document_id, "notion")
    row = system.row(document_id)
    assert row is not None and row["deleted_at"] is None and row["last_error"] is None


def test_a_20_level_block_tree_is_indexed_to_its_deepest_level(system: System) -> None:
    words = [unique(f"lvl{n}x") for n in range(1, 21)]
    spec: dict[str, object] = {"type": "toggle", "text": f"Deepest {words[-1]}"}
    for word in reversed(words[:-1]):
        spec = {"type": "toggle", "text": f"Level {word}", "children": [spec]}
    page = system.control("notion", "POST", "/pages", json={"title": "Deep contract", "blocks": [spec]}).json()
    document_id = f"notion:{page['id']}"
    system.settle("notion")
    texts = system.chunk_texts(document_id)
    assert all(word in texts for word in words)
    assert system.found(words[-1], document_id, "notion")


def test_inline_comment_on_a_block_added_and_deleted_reach_the_index_through_webhooks(system: System) -> None:
    topic, inline = unique("anchor"), unique("inline")
    page = system.control("notion", "POST", "/pages", json={
        "title": f"Inline contract {topic}", "blocks": [
            {"type": "paragraph", "text": f"Intro {topic}."},
            {"type": "toggle", "text": "Decision", "children": [{"type": "paragraph", "text": "Ship on Friday."}]}]}).json()
    document_id = f"notion:{page['id']}"
    system.settle("notion")
    assert system.found(topic, document_id, "notion")

    sim = system.sandbox.sims["notion"]
    nested = sim.blocks[sim.pages[page["id"]].children[1]].children[0]  # type: ignore[attr-defined]
    comment = system.control("notion", "POST", f"/pages/{page['id']}/comments", json={
        "text": f"Friday is {inline} {inline}", "author": "Grace Hopper", "block_id": nested}).json()
    system.settle("notion")
    event = last_event(system)
    assert event["type"] == "comment.created" and event["data"]["parent"]["type"] == "block"  # type: ignore[index]
    assert system.found(inline, document_id, "notion")
    assert f'On "Ship on Friday.":\nGrace Hopper: Friday is {inline}' in system.chunk_texts(document_id)
    assert system.run_count() == 0  # the webhook alone did it

    system.control("notion", "DELETE", f"/comments/{comment['id']}")
    system.settle("notion")
    assert last_event(system)["type"] == "comment.deleted"
    texts = system.chunk_texts(document_id)
    assert inline not in texts and "Ship on Friday." in texts
    assert not system.found(inline, document_id, "notion")
