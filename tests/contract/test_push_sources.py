"""End-to-end contract for the four pushing sources: Jira, Slack, GitHub and Notion.

One sandbox (the four simulators, small profile) serves the module; each test runs a real
receiver (the simulators' webhook target), a real Dramatiq worker, real Postgres and Redis, and
reconciler passes through ``Reconciler.tick()``. A small adapter per source says how to create,
edit and delete an item through that simulator's control API and which document id it becomes;
every contract test runs once per source.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import pytest

from core.documents import vector_id
from tests.conftest import make_settings
from tests.contract.conftest import FAST_ENV, System, long_text, start_sandbox, unique

_scopes = itertools.count(1)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    server = start_sandbox(["jira", "slack", "github", "notion"])
    server.sims["jira"].retry_delay = 0.05  # type: ignore[attr-defined]
    server.sims["notion"].aggregation_window = 0.1  # type: ignore[attr-defined]
    yield server
    server.stop()


@dataclass
class Item:
    document_id: str
    handle: dict[str, Any]


class Adapter(Protocol):
    """How to change one kind of item in a simulator, and what document it becomes."""

    name: str

    def scope(self, system: System) -> str: ...

    def create(self, system: System, scope: str, title: str, text: str) -> Item: ...

    def edit(self, system: System, item: Item, text: str) -> None: ...

    def delete(self, system: System, item: Item) -> None: ...


class JiraAdapter(Adapter):
    """Issues in a project made for the test (so its scope holds only the test's issues)."""

    name = "jira"

    def scope(self, system: System) -> str:
        key = f"CT{next(_scopes)}"
        system.control("jira", "POST", "/jira/projects", json={"key": key, "name": f"Contract {key}"})
        return key

    def create(self, system: System, scope: str, title: str, text: str) -> Item:
        issue = system.control("jira", "POST", "/jira/issues",
                               json={"project": scope, "summary": title, "description": text}).json()
        return Item(f"jira:{issue['id']}", {"id": issue["id"], "key": issue["key"]})

    def edit(self, system: System, item: Item, text: str) -> None:
        system.control("jira", "PUT", f"/jira/issues/{item.handle['id']}", json={"description": text})

    def delete(self, system: System, item: Item) -> None:
        system.control("jira", "DELETE", f"/jira/issues/{item.handle['id']}")


class SlackAdapter(Adapter):
    """Root messages (one thread = one document) in a channel made for the test."""

    name = "slack"

    def scope(self, system: System) -> str:
        channel = system.control("slack", "POST", "/channels", json={"name": f"contract-{next(_scopes)}"}).json()
        return str(channel["id"])

    def create(self, system: System, scope: str, title: str, text: str) -> Item:
        message = system.control("slack", "POST", "/messages",
                                 json={"channel": scope, "text": f"{title}\n\n{text}"}).json()
        return Item(f"slack:{scope}:{message['ts']}", {"channel": scope, "ts": message["ts"], "title": title})

    def edit(self, system: System, item: Item, text: str) -> None:
        system.control("slack", "PATCH", "/messages",
                       json={"channel": item.handle["channel"], "ts": item.handle["ts"],
                             "text": f"{item.handle['title']}\n\n{text}"})

    def delete(self, system: System, item: Item) -> None:
        system.control("slack", "DELETE", "/messages",
                       params={"channel": item.handle["channel"], "ts": item.handle["ts"]})


class GitHubAdapter(Adapter):
    """Issues in the seeded ``acme/api`` repo (GitHub scopes come from GITHUB_REPOS)."""

    name = "github"

    def scope(self, system: System) -> str:
        return "acme/api"

    def create(self, system: System, scope: str, title: str, text: str) -> Item:
        issue = system.control("github", "POST", f"/repos/{scope}/issues",
                               json={"title": title, "body": text}).json()
        return Item(f"github:{scope}/issues/{issue['number']}", {"repo": scope, "number": issue["number"]})

    def edit(self, system: System, item: Item, text: str) -> None:
        system.control("github", "PATCH", f"/repos/{item.handle['repo']}/issues/{item.handle['number']}",
                       json={"body": text})

    def delete(self, system: System, item: Item) -> None:
        system.control("github", "DELETE", f"/repos/{item.handle['repo']}/issues/{item.handle['number']}")


class NotionAdapter(Adapter):
    """Top-level pages in the one workspace scope; each paragraph a block."""

    name = "notion"

    def scope(self, system: System) -> str:
        return "workspace"

    @staticmethod
    def blocks(text: str) -> list[dict[str, str]]:
        return [{"type": "paragraph", "text": p} for p in text.split("\n\n")]

    def create(self, system: System, scope: str, title: str, text: str) -> Item:
        page = system.control("notion", "POST", "/pages",
                              json={"title": title, "parent": {"type": "workspace"},
                                    "blocks": self.blocks(text)}).json()
        return Item(f"notion:{page['id']}", {"id": page["id"]})

    def edit(self, system: System, item: Item, text: str) -> None:
        system.control("notion", "PUT", f"/pages/{item.handle['id']}/blocks", json={"blocks": self.blocks(text)})

    def delete(self, system: System, item: Item) -> None:
        system.control("notion", "POST", f"/pages/{item.handle['id']}/trash", json={})


ADAPTERS = [JiraAdapter(), SlackAdapter(), GitHubAdapter(), NotionAdapter()]


@pytest.fixture(params=ADAPTERS, ids=lambda a: a.name)
def adapter(request: pytest.FixtureRequest) -> Adapter:
    return request.param


def make_item(system: System, adapter: Adapter, scope: str, word: str, text: str | None = None) -> Item:
    item = adapter.create(system, scope, f"Contract item {word}", text or f"The {word} decision was made: {word}.")
    return item


def indexed_with(system: System, item: Item, word: str, source: str) -> bool:
    """The document's vectors hold ``word`` and a search for it finds the document."""
    return word in system.chunk_texts(item.document_id) and system.found(word, item.document_id, source)


# --- 1. webhook alone ---------------------------------------------------------------------------


def test_change_reaches_index_through_webhook_alone(system: System, adapter: Adapter) -> None:
    name = adapter.name
    scope = adapter.scope(system)
    first, second = unique("alpha"), unique("beta")
    item = make_item(system, adapter, scope, first)
    system.settle(name)
    # Indexed by the webhook: no reconciler pass ran at all.
    assert system.run_count() == 0
    assert indexed_with(system, item, first, name)
    row = system.row(item.document_id)
    assert row is not None and row["deleted_at"] is None and row["chunk_count"] >= 1
    assert row["scope"] == scope
    # An edit, again through the webhook alone, replaces the old text.
    adapter.edit(system, item, f"The {second} decision replaced it: {second}.")
    system.settle(name)
    assert indexed_with(system, item, second, name)
    assert f"The {first} decision" not in system.chunk_texts(item.document_id)
    assert system.run_count() == 0
    assert all(d.status == 200 for d in system.deliveries(name)[-2:] if not d.dropped)


# --- 2. dropped webhook, caught by the reconciler -----------------------------------------------


def test_dropped_webhook_is_caught_by_the_next_reconciler_pass(system: System, adapter: Adapter) -> None:
    name = adapter.name
    scope = adapter.scope(system)
    old, new, created = unique("old"), unique("new"), unique("created")
    item = make_item(system, adapter, scope, old)
    system.settle(name)
    system.reconcile(name, scope)  # the first pass lists the scope and sets its cursor
    first = system.last_run("reconcile", name)
    assert first["status"] == "succeeded" and first["counters"]["since"] is None
    assert first["counters"]["cursor"] is not None

    system.knobs(name, webhook_drop_rate=1)
    sent = len(system.deliveries(name))
    adapter.edit(system, item, f"The {new} decision replaced it: {new}.")
    fresh = make_item(system, adapter, scope, created)
    system.settle(name)
    lost = system.deliveries(name)[sent:]
    assert lost and all(d.dropped for d in lost), "the change's webhooks were not dropped"
    # Nothing reached the index: the webhooks were lost.
    assert new not in system.chunk_texts(item.document_id)
    assert system.row(fresh.document_id) is None

    system.reconcile(name, scope)  # the next pass lists what changed since the cursor
    second = system.last_run("reconcile", name)
    assert second["status"] == "succeeded"
    assert second["counters"]["since"] is not None, "the second pass was not incremental"
    assert indexed_with(system, item, new, name)
    assert indexed_with(system, fresh, created, name)


# --- 3. deletes remove every chunk --------------------------------------------------------------


def test_delete_removes_every_chunk_through_webhook_and_through_prune(system: System, adapter: Adapter) -> None:
    name = adapter.name
    scope = adapter.scope(system)
    pushed, pruned = unique("gone"), unique("pruned")
    item = make_item(system, adapter, scope, pushed, long_text(pushed))
    system.settle(name)
    chunks = system.chunk_ids(item.document_id)
    assert len(chunks) >= 3, f"expected several chunks, got {chunks}"
    assert chunks == sorted(vector_id(item.document_id, n) for n in range(len(chunks)))

    adapter.delete(system, item)
    system.settle(name)
    assert system.chunk_ids(item.document_id) == []
    assert not system.found(pushed, item.document_id, name)
    row = system.row(item.document_id)
    assert row is not None and row["deleted_at"] is not None

    # Deleted upstream with the webhook lost: the reconciler's prune removes it.
    other = make_item(system, adapter, scope, pruned, long_text(pruned))
    system.settle(name)
    system.reconcile(name, scope)
    assert len(system.chunk_ids(other.document_id)) >= 3
    system.knobs(name, webhook_drop_rate=1)
    adapter.delete(system, other)
    system.settle(name)
    assert len(system.chunk_ids(other.document_id)) >= 3, "the delete webhook was not dropped"
    system.reconcile(name, scope, prune=True)
    prune = system.last_run("prune", name)
    assert prune["status"] == "succeeded", prune
    assert prune["counters"]["deletes_enqueued"] >= 1
    assert system.chunk_ids(other.document_id) == []
    assert system.row(other.document_id)["deleted_at"] is not None  # type: ignore[index]


# --- 4. signatures and missing secrets ----------------------------------------------------------

SECRET_VARS = {"jira": "JIRA_WEBHOOK_SECRET", "slack": "SLACK_SIGNING_SECRET",
               "github": "GITHUB_WEBHOOK_SECRET", "notion": "NOTION_WEBHOOK_TOKEN"}
SIGNATURE_HEADERS = {"jira": "X-Hub-Signature", "slack": "X-Slack-Signature",
                     "github": "X-Hub-Signature-256", "notion": "X-Notion-Signature"}


def _tampered_signature(value: str) -> str:
    last = value[-1]
    return value[:-1] + ("0" if last != "0" else "1")


def test_bad_signature_is_refused_and_nothing_is_enqueued(system: System, receiver_factory: Any, infra: Any,
                                                          adapter: Adapter) -> None:
    name = adapter.name
    scope = adapter.scope(system)
    system.settle(name)
    system.knobs(name, webhook_drop_rate=1)  # recorded, signed, never sent
    item = make_item(system, adapter, scope, unique("signed"))
    system.flush_webhooks(name)
    delivery = system.deliveries(name)[-1]
    assert delivery.dropped
    body, headers = delivery.body, dict(delivery.headers)
    header = SIGNATURE_HEADERS[name]
    # (Creating a Slack channel sent channel_created before the drop: claimed, nothing to sync.)
    claimed, received = system.delivery_count(), system.stats(name)["webhooks_received"]

    forged = {**headers, header: _tampered_signature(headers[header])}
    assert system.post_delivery(name, body, forged).status_code == 401
    altered_body = body.rstrip()[:-1] + b" }"  # still valid JSON, one byte more
    json.loads(altered_body)
    assert system.post_delivery(name, altered_body, headers).status_code == 401
    unsigned = {k: v for k, v in headers.items() if k.lower() != header.lower()}
    assert system.post_delivery(name, body, unsigned).status_code == 401
    # Nothing was enqueued: the queue is empty and, once the worker is idle, nothing was synced.
    assert system.queue_depth() == 0
    system.worker.drain()
    assert system.row(item.document_id) is None
    assert system.delivery_count() == claimed
    stats = system.stats(name)
    assert stats["webhooks_rejected"] == 3 and stats["webhooks_received"] == received
    assert stats["synced"] == stats["failed"] == 0

    # A receiver without the source's secret refuses even a correctly signed delivery.
    no_secret = make_settings(infra, **{**system.sandbox.env(), **FAST_ENV, SECRET_VARS[name]: ""})
    closed = receiver_factory(no_secret)
    refused = system.post_delivery(name, body, headers, receiver=closed)
    assert refused.status_code == 403, refused.text
    assert "not set" in refused.json()["error"]
    assert system.queue_depth() == 0
    system.worker.drain()
    assert system.row(item.document_id) is None
    assert system.delivery_count() == claimed

    # The same delivery, untouched, is accepted and indexed: the refusals were the signature's.
    accepted = system.post_delivery(name, body, headers)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["enqueued"] >= 1
    system.worker.drain()
    row = system.row(item.document_id)
    assert row is not None and row["chunk_count"] >= 1


# --- 5. duplicate deliveries --------------------------------------------------------------------


def test_duplicate_delivery_is_enqueued_and_processed_once(system: System, adapter: Adapter) -> None:
    name = adapter.name
    scope = adapter.scope(system)
    word = unique("dup")
    item = make_item(system, adapter, scope, word)
    system.settle(name)
    assert indexed_with(system, item, word, name)
    delivery = system.deliveries(name)[-1]
    assert delivery.status == 200 and not delivery.dropped
    before = system.stats(name)
    embeds = system.worker.pipeline.embedder.requests
    deliveries = system.delivery_count()
    assert deliveries >= 1

    if name == "github":  # GitHub's own manual redelivery: same bytes, same X-GitHub-Delivery
        guid = delivery.headers["X-GitHub-Delivery"]
        sent = len(system.deliveries(name))
        system.control("github", "POST", f"/deliveries/{guid}/redeliver")
        system.settle(name)
        redelivered = system.deliveries(name)[sent:]
        assert [d.headers["X-GitHub-Delivery"] for d in redelivered] == [guid]
        assert redelivered[0].status == 200
    else:  # the recorded delivery again, byte for byte, as the sender's retry would send it
        again = system.post_delivery(name, delivery.body, dict(delivery.headers))
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "duplicate"
        system.settle(name)

    after = system.stats(name)
    for counter in ("synced", "unchanged", "metadata_only", "deleted", "stale_ignored", "failed"):
        assert after[counter] == before[counter], f"{counter}: the duplicate was processed again"
    assert after["webhooks_received"] == before["webhooks_received"]
    assert system.worker.pipeline.embedder.requests == embeds
    assert system.delivery_count() == deliveries


# --- 6. out-of-order updates --------------------------------------------------------------------


def test_out_of_order_updates_end_in_the_newest_state(system: System, adapter: Adapter) -> None:
    name = adapter.name
    scope = adapter.scope(system)
    v1, v2, v3 = unique("first"), unique("second"), unique("third")
    item = make_item(system, adapter, scope, v1)
    system.settle(name)
    assert indexed_with(system, item, v1, name)

    if name == "jira":
        # Jira's own hold-and-release: the webhooks leave newest first.
        system.control("jira", "PUT", "/jira/settings", json={"webhook_mode": "hold"})
        adapter.edit(system, item, f"The {v2} version: {v2}.")
        adapter.edit(system, item, f"The {v3} version: {v3}.")
        system.control("jira", "PUT", "/jira/settings", json={"webhook_mode": "now"})
        released = system.control("jira", "POST", "/jira/webhooks/release", json={"order": "reverse"}).json()
        assert released["released"] == 2
        system.settle(name)
        last_two = system.deliveries(name)[-2:]
        stamps = [json.loads(d.body)["timestamp"] for d in last_two]
        assert stamps[0] >= stamps[1], "the newer event was not delivered first"
    else:
        # Record both edits' webhooks without sending them, then deliver newest first, each
        # processed before the next arrives.
        system.knobs(name, webhook_drop_rate=1)
        sent = len(system.deliveries(name))
        adapter.edit(system, item, f"The {v2} version: {v2}.")
        system.flush_webhooks(name)
        middle = len(system.deliveries(name))
        adapter.edit(system, item, f"The {v3} version: {v3}.")
        system.flush_webhooks(name)
        older, newer = system.deliveries(name)[sent:middle], system.deliveries(name)[middle:]
        assert older and newer
        system.knobs(name, webhook_drop_rate=0)
        for delivery in newer:
            assert system.post_delivery(name, delivery.body, dict(delivery.headers)).status_code == 200
        system.worker.drain()
        assert indexed_with(system, item, v3, name)
        embeds = system.worker.pipeline.embedder.requests
        for delivery in older:
            assert system.post_delivery(name, delivery.body, dict(delivery.headers)).status_code == 200
        system.worker.drain()
        # The late, older event changed nothing: no re-embedding, the newest text stays.
        assert system.worker.pipeline.embedder.requests == embeds

    text = system.chunk_texts(item.document_id)
    assert v3 in text and v2 not in text
    assert indexed_with(system, item, v3, name)
    assert not system.found(v2, item.document_id, name)


# --- 7. Jira: a moved issue keeps one document --------------------------------------------------


def test_jira_issue_moved_between_projects_keeps_one_document(system: System) -> None:
    adapter = JiraAdapter()
    source_project, target_project = adapter.scope(system), adapter.scope(system)
    word = unique("moved")
    item = make_item(system, adapter, source_project, word, long_text(word, 4))
    system.settle("jira")
    before = system.metadata(item.document_id)
    assert before["key"] == item.handle["key"] and before["scope"] == source_project
    chunks = system.chunk_ids(item.document_id)
    assert len(chunks) >= 2

    moved = system.control("jira", "POST", f"/jira/issues/{item.handle['id']}/move",
                           json={"project": target_project}).json()
    assert moved["id"] == item.handle["id"] and moved["key"] != item.handle["key"]
    system.settle("jira")

    after = system.metadata(item.document_id)
    assert after["key"] == moved["key"]
    assert after["project"] == target_project and after["scope"] == target_project
    assert system.chunk_ids(item.document_id) == chunks  # same document, same vectors
    with system.services.pool.connection() as conn:
        rows = conn.execute(
            "SELECT document_id, scope FROM documents WHERE source = 'jira' AND deleted_at IS NULL"
        ).fetchall()
    assert rows == [(item.document_id, target_project)]
    hits = [r for r in system.search(word, "jira") if r["document_id"] == item.document_id]
    assert len(hits) == 1 and hits[0]["scope"] == target_project
    assert moved["key"] in hits[0]["title"]

    # Neither project's reconcile and prune loses it or makes a second document.
    system.reconcile("jira", source_project, prune=True)
    system.reconcile("jira", target_project, prune=True)
    assert system.chunk_ids(item.document_id) == chunks
    assert system.metadata(item.document_id)["scope"] == target_project
    with system.services.pool.connection() as conn:
        count = conn.execute("SELECT count(*) FROM documents WHERE source = 'jira'").fetchone()[0]
    assert count == 1


# --- 8. Jira: comment_deleted, alone and in the cascade of an issue delete -------------------


def _comment(system: System, issue_id: str, text: str) -> str:
    created = system.control("jira", "POST", f"/jira/issues/{issue_id}/comments", json={"body": text}).json()
    return str(created["id"])


def _events(system: System, start: int) -> list[tuple[str, str]]:
    return [(json.loads(d.body)["webhookEvent"], d.headers.get("X-Atlassian-Webhook-Flow", ""))
            for d in system.deliveries("jira")[start:]]


def test_jira_deleted_comment_leaves_its_live_issue(system: System) -> None:
    adapter = JiraAdapter()
    project = adapter.scope(system)
    word, kept, dropped = unique("issue"), unique("kept"), unique("dropped")
    item = make_item(system, adapter, project, word)
    _comment(system, item.handle["id"], f"Keep {kept} {kept}")
    doomed = _comment(system, item.handle["id"], f"Drop {dropped} {dropped}")
    system.settle("jira")
    assert system.found(dropped, item.document_id, "jira")

    start = len(system.deliveries("jira"))
    system.control("jira", "DELETE", f"/jira/issues/{item.handle['id']}/comments/{doomed}")
    system.settle("jira")
    assert _events(system, start) == [("comment_deleted", "Primary")]
    text = system.chunk_texts(item.document_id)
    assert dropped not in text and kept in text and word in text
    assert system.row(item.document_id)["deleted_at"] is None  # type: ignore[index]
    assert system.stats("jira")["failed"] == 0


@pytest.mark.parametrize("order", ["fifo", "reverse"])
def test_jira_comment_deleted_cascade_after_an_issue_delete(system: System, order: str) -> None:
    """Jira sends jira:issue_deleted, then (Secondary flow, possibly minutes later)
    comment_deleted for each of its comments; delivered either way round, the issue stays
    deleted and nothing fails."""
    adapter = JiraAdapter()
    project = adapter.scope(system)
    word, said = unique("cascade"), unique("said")
    item = make_item(system, adapter, project, word, long_text(word, 3))
    for n in range(2):
        _comment(system, item.handle["id"], f"Comment {n}: {said} {said}")
    survivor = make_item(system, adapter, project, unique("survivor"))
    system.settle("jira")
    assert len(system.chunk_ids(item.document_id)) >= 2 and system.found(said, item.document_id, "jira")

    start = len(system.deliveries("jira"))
    system.control("jira", "PUT", "/jira/settings", json={"webhook_mode": "hold"})
    system.control("jira", "DELETE", f"/jira/issues/{item.handle['id']}")
    system.control("jira", "PUT", "/jira/settings", json={"webhook_mode": "now"})
    assert system.control("jira", "POST", "/jira/webhooks/release", json={"order": order}).json()["released"] == 3
    system.settle("jira")
    events = _events(system, start)
    cascade = [("jira:issue_deleted", "Primary")] + [("comment_deleted", "Secondary")] * 2
    assert events == (cascade if order == "fifo" else cascade[::-1])
    assert all(d.status == 200 for d in system.deliveries("jira")[start:])

    assert system.chunk_ids(item.document_id) == []
    assert not system.found(said, item.document_id, "jira")
    assert system.row(item.document_id)["deleted_at"] is not None  # type: ignore[index]
    assert system.stats("jira")["failed"] == 0 and system.queue_depth() == 0
    # A late comment_deleted (the Secondary flow can lag ~15 min) resurrects nothing either.
    for delivery in system.deliveries("jira")[start:]:
        if b'"comment_deleted"' in delivery.body:
            replay = dict(delivery.headers, **{"X-Atlassian-Webhook-Identifier": unique("late")})
            assert system.post_delivery("jira", delivery.body, replay).status_code == 200
    system.worker.drain()
    system.reconcile("jira", project, prune=True)
    assert system.chunk_ids(item.document_id) == []
    assert system.row(item.document_id)["deleted_at"] is not None  # type: ignore[index]
    assert system.chunk_ids(survivor.document_id), "the project's other issue went too"
    assert system.stats("jira")["failed"] == 0


# --- 9. GitHub: reviews and review comments live in their pull request's document ------------


def test_github_review_comments_through_webhooks_reconcile_and_deletion(system: System) -> None:
    approved, line_word, reply_word, edited = unique("approve"), unique("line"), unique("reply"), unique("edited")
    pull = system.control("github", "POST", "/repos/acme/api/pulls",
                          json={"title": "Contract review PR", "head": "fix/contract"}).json()
    document_id = f"github:acme/api/pulls/{pull['number']}"
    system.control("github", "POST", f"/repos/acme/api/pulls/{pull['number']}/reviews",
                   json={"user": "mona", "event": "APPROVE", "body": f"Approved: {approved} {approved}.",
                         "comments": [{"path": "billing/ledger.py", "line": 7, "body": f"{line_word} {line_word}"}]})
    system.settle("github")
    assert system.run_count() == 0  # webhooks alone
    assert system.found(approved, document_id, "github") and system.found(line_word, document_id, "github")
    [root] = httpx_get(system, f"/repos/acme/api/pulls/{pull['number']}/comments")
    reply = system.control("github", "POST", f"/repos/acme/api/pulls/{pull['number']}/comments",
                           json={"user": "hubot", "body": f"{reply_word} {reply_word}", "in_reply_to": root["id"]}).json()
    system.settle("github")
    assert system.found(reply_word, document_id, "github")
    assert "on billing/ledger.py line 7" in system.chunk_texts(document_id)

    # A deleted review comment leaves the index (its PR stays).
    system.control("github", "DELETE", f"/repos/acme/api/pulls/comments/{reply['id']}")
    system.settle("github")
    assert reply_word not in system.chunk_texts(document_id) and line_word in system.chunk_texts(document_id)
    assert system.row(document_id)["deleted_at"] is None  # type: ignore[index]

    # A seeded (2024) PR's review comment edited with its webhook dropped: the PR's updated_at
    # does not move, and the next pass finds the edit through /pulls/comments?since.
    system.reconcile("github", "acme/api")
    seeded = httpx_get(system, "/repos/acme/api/pulls/comments?per_page=1")[0]
    old_id = "github:acme/api/pulls/" + seeded["pull_request_url"].rsplit("/", 1)[1]
    assert f"on {seeded['path']} line {seeded['line']}" in system.chunk_texts(old_id)
    system.knobs("github", webhook_drop_rate=1)
    system.control("github", "PATCH", f"/repos/acme/api/pulls/comments/{seeded['id']}",
                   json={"body": f"{edited} {edited}"})
    system.settle("github")
    assert edited not in system.chunk_texts(old_id)
    system.reconcile("github", "acme/api")
    assert system.last_run("reconcile", "github")["counters"]["since"] is not None
    assert system.found(edited, old_id, "github")


def httpx_get(system: System, path: str) -> Any:
    """GET from the GitHub simulator's API as the connector's token."""
    env = system.sandbox.env()
    response = httpx.get(env["GITHUB_API_URL"] + path, headers={"Authorization": f"Bearer {env['GITHUB_TOKEN']}"},
                         timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_jira_comment_changes_with_webhooks_lost_reach_the_index_in_one_pass(system: System) -> None:
    """Issue 15: Jira comments kept in step with their issue without any webhook. Adding,
    editing and deleting a comment move the issue's ``updated`` (as the simulator models Jira),
    so the pass's ``updated >= since`` JQL lists the issue and the re-read carries the comments."""
    adapter = JiraAdapter()
    project = adapter.scope(system)
    word, said, revised = unique("issue"), unique("said"), unique("revised")
    item = make_item(system, adapter, project, word)
    system.settle("jira")
    system.reconcile("jira", project)  # the first pass sets the cursor
    system.reconcile("jira", project)
    assert indexed_with(system, item, word, "jira")

    system.knobs("jira", webhook_drop_rate=1)
    start = len(system.deliveries("jira"))
    comment = _comment(system, item.handle["id"], f"Note {said} {said}")
    system.settle("jira")
    system.reconcile("jira", project)
    assert indexed_with(system, item, said, "jira"), "an added comment was missed"

    system.control("jira", "PUT", f"/jira/issues/{item.handle['id']}/comments/{comment}",
                   json={"body": f"Note {revised} {revised}"})
    system.settle("jira")
    system.reconcile("jira", project)
    text = system.chunk_texts(item.document_id)
    assert revised in text and said not in text, "an edited comment was missed"

    system.control("jira", "DELETE", f"/jira/issues/{item.handle['id']}/comments/{comment}")
    system.settle("jira")
    system.reconcile("jira", project)
    text = system.chunk_texts(item.document_id)
    assert revised not in text and word in text, "a deleted comment is still indexed"
    deliveries = system.deliveries("jira")[start:]
    assert deliveries and all(d.dropped for d in deliveries)
    assert system.stats("jira")["failed"] == 0
