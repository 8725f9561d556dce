"""Indexing from what the webhook already says (issue 12): a verified webhook that carries the
whole document is indexed from its payload, asking the source only for what the payload lacks;
the document is the one a fetch would make (same content and metadata hash, same access); an
older event never overwrites a newer one; a burst of events for one document is one write.

Real simulators, receiver, worker, Postgres and Redis over loopback. Webhooks are recorded by
the simulator (no target) and posted to the receiver by the test, in the order a test needs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest

from core import coalesce
from core.documents import Document, Ref
from core.settings import Settings
from core.sources.github import GitHubSource, build
from core.sources.jira import JiraSource
from core.sources.jira import build as build_jira
from core.sources.slack import build as build_slack
from sandbox.server import SandboxServer, create_simulators
from tests.conftest import FAST_BUDGETS, make_settings, wait_for

PUBLIC, PRIVATE = "acme/web", "acme/api"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    sims = create_simulators(["github", "jira", "slack"], profile="small", seed=12)
    for sim in sims.values():
        sim.knobs.rate_limit = 0
    server = SandboxServer(sims).start()
    yield server
    server.stop()


def gh(sandbox: SandboxServer) -> Any:
    return sandbox.sims["github"]


def control(sandbox: SandboxServer, source: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    r = httpx.request(method, sandbox.url(source) + "/_sandbox" + path, json=body, timeout=10)
    assert r.status_code < 300, r.text
    sandbox.run_coroutine(sandbox.sims[source].webhooks.drain(5))
    return r.json()


def recorded(sandbox: SandboxServer, source: str, guid: str | None = None) -> tuple[dict[str, str], bytes]:
    """The (headers, raw body) of a webhook the simulator sent: the one named ``guid``, else the
    last one."""
    deliveries = sandbox.sims[source].webhooks.deliveries
    if guid is not None:
        deliveries = [d for d in deliveries if d.headers.get("X-GitHub-Delivery") == guid]
    return dict(deliveries[-1].headers), deliveries[-1].body


def with_source(make: Callable[[httpx.AsyncClient], Any],
                body: Callable[[Any], Coroutine[Any, Any, Any]]) -> tuple[Any, int]:
    """``body(source)`` with a fresh connector (no cache shared between the two reads compared),
    and the number of requests it sent."""
    sent: list[httpx.Request] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request)

    async def main() -> Any:
        async with httpx.AsyncClient(timeout=10, event_hooks={"request": [count]}) as client:
            return await body(make(client))

    return asyncio.run(main()), len(sent)


def github(sandbox: SandboxServer) -> Callable[[httpx.AsyncClient], GitHubSource]:
    return lambda client: build(Settings.from_environ(sandbox.env()).source("github"), client)


def jira(sandbox: SandboxServer) -> Callable[[httpx.AsyncClient], JiraSource]:
    return lambda client: build_jira(Settings.from_environ(sandbox.env()).source("jira"), client)


def slack(sandbox: SandboxServer) -> Callable[[httpx.AsyncClient], Any]:
    return lambda client: build_slack(Settings.from_environ(sandbox.env()).source("slack"), client)


def parsed_ref(source: Any, headers: dict[str, str], body: bytes) -> Ref:
    source.verify(headers, body)
    (ref,) = source.parse(headers, body).refs
    return ref


def both_ways(make: Callable[[httpx.AsyncClient], Any], headers: dict[str, str], body: bytes) -> tuple[Document, Document, int, int]:
    """The document built from the webhook's payload and the one fetched, and the requests
    each cost the simulator."""

    async def built(source: Any) -> Any:
        ref = parsed_ref(source, headers, body)
        assert ref.payload is not None, "the webhook's document should ride in the ref"
        return await source.from_payload(ref)

    async def fetched(source: Any) -> Any:
        return await source.fetch(parsed_ref(source, headers, body))

    from_payload, payload_cost = with_source(make, built)
    from_fetch, fetch_cost = with_source(make, fetched)
    assert isinstance(from_payload, Document) and isinstance(from_fetch, Document)
    return from_payload, from_fetch, payload_cost, fetch_cost


def assert_same(a: Document, b: Document) -> None:
    assert a.content_hash() == b.content_hash()
    assert a.metadata_hash() == b.metadata_hash()
    assert (a.updated_at, a.access_type, a.access_list) == (b.updated_at, b.access_type, b.access_list)
    assert a == b


# --- the document from a payload is the fetched one ---------------------------------------------
class TestSameDocumentAsAFetch:
    def test_github_issue_without_comments_costs_no_request(self, sandbox: SandboxServer) -> None:
        control(sandbox, "github", "PUT", f"/repos/{PUBLIC}/access", {"private": False})
        opened = control(sandbox, "github", "POST", f"/repos/{PUBLIC}/issues",
                         {"title": "Invoice rounding", "body": "Totals are off by a cent.", "labels": ["bug"]})
        built, fetched, payload_cost, fetch_cost = both_ways(
            github(sandbox), *recorded(sandbox, "github", opened["delivery"]))
        assert_same(built, fetched)
        assert (payload_cost, fetch_cost) == (0, 2)  # fetch: the issue and the repository's access

    def test_github_comment_event_asks_only_for_the_comments(self, sandbox: SandboxServer) -> None:
        control(sandbox, "github", "PUT", f"/repos/{PUBLIC}/access", {"private": False})
        n = control(sandbox, "github", "POST", f"/repos/{PUBLIC}/issues", {"title": "Login timeout"})["number"]
        comment = control(sandbox, "github", "POST", f"/repos/{PUBLIC}/issues/{n}/comments",
                          {"body": "Root cause: no timeout on the call.", "user": "bob-ops"})
        built, fetched, payload_cost, fetch_cost = both_ways(
            github(sandbox), *recorded(sandbox, "github", comment["delivery"]))
        assert_same(built, fetched)
        assert "Root cause" in built.text
        assert (payload_cost, fetch_cost) == (1, 3)

    def test_github_pull_request_skips_only_the_pull_itself(self, sandbox: SandboxServer) -> None:
        control(sandbox, "github", "PUT", f"/repos/{PUBLIC}/access", {"private": False})
        pull = control(sandbox, "github", "POST", f"/repos/{PUBLIC}/pulls", {"title": "Add timeout", "head": "fix/t"})
        built, fetched, payload_cost, fetch_cost = both_ways(
            github(sandbox), *recorded(sandbox, "github", pull["delivery"]))
        assert_same(built, fetched)
        # Neither the pull nor the repository is asked for; the simulator's webhook pull has no
        # comment counts (GitHub's has), so both listings are asked where a fetch knows they are 0.
        assert payload_cost <= fetch_cost

    def test_github_payload_it_cannot_read_is_fetched_instead(self, sandbox: SandboxServer) -> None:
        from sandbox.github import WEBHOOK_SECRET, sign

        control(sandbox, "github", "PUT", f"/repos/{PUBLIC}/access", {"private": False})
        opened = control(sandbox, "github", "POST", f"/repos/{PUBLIC}/issues", {"title": "Odd payload"})
        headers, body = recorded(sandbox, "github", opened["delivery"])
        payload = json.loads(body)
        payload["issue"]["user"] = "not-an-object"  # signed by GitHub, but not what a fetch returns
        body = json.dumps(payload).encode()
        headers["X-Hub-Signature-256"] = sign(WEBHOOK_SECRET, body, "sha256")
        built, fetched, payload_cost, fetch_cost = both_ways(github(sandbox), headers, body)
        assert_same(built, fetched)
        assert built.author == "octocat" and payload_cost == fetch_cost

    def test_github_comment_event_whose_issue_counts_none_still_reads_the_comments(
            self, sandbox: SandboxServer) -> None:
        from sandbox.github import WEBHOOK_SECRET, sign

        control(sandbox, "github", "PUT", f"/repos/{PUBLIC}/access", {"private": False})
        n = control(sandbox, "github", "POST", f"/repos/{PUBLIC}/issues", {"title": "Count behind"})["number"]
        comment = control(sandbox, "github", "POST", f"/repos/{PUBLIC}/issues/{n}/comments", {"body": "First!"})
        headers, body = recorded(sandbox, "github", comment["delivery"])
        payload = json.loads(body)
        payload["issue"]["comments"] = 0  # a count behind the comment the event is about
        body = json.dumps(payload).encode()
        headers["X-Hub-Signature-256"] = sign(WEBHOOK_SECRET, body, "sha256")
        built, fetched, _, _ = both_ways(github(sandbox), headers, body)
        assert_same(built, fetched)
        assert "First!" in built.text

    def test_github_private_repository_has_the_same_readers(self, sandbox: SandboxServer) -> None:
        control(sandbox, "github", "PUT", f"/repos/{PRIVATE}/access",
                {"private": True, "collaborators": {"alice-dev": "write", "bob-ops": "admin"}})
        try:
            opened = control(sandbox, "github", "POST", f"/repos/{PRIVATE}/issues", {"title": "Rotate the keys"})
            built, fetched, _, _ = both_ways(
                github(sandbox), *recorded(sandbox, "github", opened["delivery"]))
            assert_same(built, fetched)
            assert built.access_type == "restricted" and len(built.access_list) == 2
        finally:
            control(sandbox, "github", "PUT", f"/repos/{PRIVATE}/access", {"private": False})


# --- through the receiver and a worker ------------------------------------------------------------
@pytest.fixture
def github_settings(sandbox: SandboxServer, infra: dict[str, str], services: Any) -> Settings:
    return make_settings(infra, **{**sandbox.env(), **FAST_BUDGETS})


def post(receiver: Any, source: str, headers: dict[str, str], body: bytes) -> None:
    r = httpx.post(f"{receiver.url}/webhooks/{source}", content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text


def stored(services: Any, document_id: str) -> dict[str, Any] | None:
    with services.pool.connection() as conn:
        row = conn.execute("SELECT title, source_updated_at FROM documents WHERE document_id = %s",
                           (document_id,)).fetchone()
    return None if row is None else {"title": row[0], "updated_at": row[1]}


def counters(services: Any, source: str) -> dict[str, int]:
    with services.pool.connection() as conn:
        row = conn.execute("SELECT synced, metadata_only, stale_ignored, unchanged FROM source_stats "
                           "WHERE source = %s", (source,)).fetchone()
    return dict(zip(("synced", "metadata_only", "stale_ignored", "unchanged"), row or (0, 0, 0, 0), strict=True))


def next_second(after: float) -> None:
    """Wait until GitHub's clock (whole seconds) has moved past ``after``, so two events differ."""
    wait_for(lambda: time.time() >= int(after) + 1.01, timeout=5, interval=0.05)


class TestThroughTheWorker:
    def test_payload_complete_events_make_no_source_request(
            self, sandbox, github_settings, services, receiver_factory, worker_factory) -> None:
        control(sandbox, "github", "PUT", f"/repos/{PUBLIC}/access", {"private": False})
        receiver, worker = receiver_factory(github_settings), worker_factory(github_settings)
        opened = [control(sandbox, "github", "POST", f"/repos/{PUBLIC}/issues", {"title": f"Payload issue {i}"})
                  for i in range(5)]
        before = gh(sandbox).requests
        for event in opened:
            post(receiver, "github", *recorded(sandbox, "github", event["delivery"]))
        worker.drain(60)
        for event in opened:
            assert stored(services, f"github:{PUBLIC}/issues/{event['number']}")["title"] == event["title"]
        assert gh(sandbox).requests == before

    def test_an_older_event_never_overwrites_a_newer_one(
            self, sandbox, github_settings, services, receiver_factory, worker_factory) -> None:
        receiver, worker = receiver_factory(github_settings), worker_factory(github_settings)
        opened = control(sandbox, "github", "POST", f"/repos/{PUBLIC}/issues", {"title": "First title"})
        n, doc = opened["number"], f"github:{PUBLIC}/issues/{opened['number']}"
        next_second(time.time())
        edited = control(sandbox, "github", "PATCH", f"/repos/{PUBLIC}/issues/{n}", {"title": "Second title"})
        # The newer event arrives first and is written; then the older one arrives.
        post(receiver, "github", *recorded(sandbox, "github", edited["delivery"]))
        worker.drain(60)
        assert stored(services, doc)["title"] == "Second title"
        post(receiver, "github", *recorded(sandbox, "github", opened["delivery"]))
        worker.drain(60)
        assert stored(services, doc)["title"] == "Second title"
        # And with no registered version to screen it (expired, or Redis lost it), the
        # pipeline's own rule ignores it: older updated_at than what is stored.
        services.broker.client.delete(coalesce.key(doc))
        ignored = counters(services, "github")["stale_ignored"]
        headers, body = recorded(sandbox, "github", opened["delivery"])
        post(receiver, "github", {**headers, "X-GitHub-Delivery": "late-copy-of-the-opened-event"}, body)
        worker.drain(60)
        assert stored(services, doc)["title"] == "Second title"
        assert counters(services, "github")["stale_ignored"] == ignored + 1

    def test_a_burst_of_twenty_events_for_one_issue_is_one_write(
            self, sandbox, github_settings, services, receiver_factory, worker_factory) -> None:
        receiver = receiver_factory(github_settings)
        opened = control(sandbox, "github", "POST", f"/repos/{PUBLIC}/issues", {"title": "Burst v0"})
        n, doc = opened["number"], f"github:{PUBLIC}/issues/{opened['number']}"
        events = [opened] + [control(sandbox, "github", "PATCH", f"/repos/{PUBLIC}/issues/{n}",
                                     {"title": f"Burst v{i}"}) for i in range(1, 20)]
        for event in events:  # all queued before a worker takes the first: a backlog
            post(receiver, "github", *recorded(sandbox, "github", event["delivery"]))
        worker = worker_factory(github_settings)
        worker.drain(60)
        assert stored(services, doc)["title"] == "Burst v19"
        written = counters(services, "github")
        assert written["synced"] + written["metadata_only"] <= 2, written
        assert worker.pipeline.embedder.requests <= 2


def held_jira(sandbox: SandboxServer, method: str, path: str, body: Any) -> tuple[dict[str, Any], tuple[dict[str, str], bytes]]:
    """A Jira change, and the webhook it fired (held by the simulator, not sent)."""
    sim = sandbox.sims["jira"]
    control(sandbox, "jira", "PUT", "/jira/settings", {"webhook_mode": "hold"})
    answer = control(sandbox, "jira", method, path, body)
    held = sim.held[-1]
    return answer, (dict(held.headers), held.body)


class TestJiraSameDocumentAsAFetch:
    def test_issue_events_cost_no_request(self, sandbox: SandboxServer) -> None:
        project = next(iter(sandbox.sims["jira"].projects.values())).key
        issue, created = held_jira(sandbox, "POST", "/jira/issues",
                                   {"project": project, "summary": "Refund flow", "description": "Refunds fail twice.",
                                    "labels": ["billing"]})
        built, fetched, payload_cost, fetch_cost = both_ways(jira(sandbox), *created)
        assert_same(built, fetched)
        assert (payload_cost, fetch_cost) == (0, 1)
        control(sandbox, "jira", "POST", f"/jira/issues/{issue['key']}/comments", {"body": "Seen on the 3rd."})
        _, updated = held_jira(sandbox, "PUT", f"/jira/issues/{issue['key']}", {"status": "In Progress"})
        built, fetched, payload_cost, _ = both_ways(jira(sandbox), *updated)
        assert_same(built, fetched)
        assert "Seen on the 3rd." in built.text and payload_cost == 0

    def test_a_comment_event_or_a_partial_issue_is_fetched(self, sandbox: SandboxServer) -> None:
        project = next(iter(sandbox.sims["jira"].projects.values())).key
        issue, _ = held_jira(sandbox, "POST", "/jira/issues", {"project": project, "summary": "Partial"})
        _, commented = held_jira(sandbox, "POST", f"/jira/issues/{issue['key']}/comments", {"body": "A note."})

        async def parse(source: Any) -> Ref:
            return parsed_ref(source, *commented)

        ref, _ = with_source(jira(sandbox), parse)
        assert ref.payload is None  # a comment event's issue holds a few fields only


class TestSlackSameDocumentAsAFetch:
    @pytest.mark.parametrize("private", [False, True])
    def test_a_new_message_skips_only_the_replies_call(self, sandbox: SandboxServer, private: bool) -> None:
        sim = sandbox.sims["slack"]
        people = [u for u in sim.users if u.startswith("U") and u != "U05BOTSYNC"][:3]
        channel = control(sandbox, "slack", "POST", "/channels",
                          {"name": f"payload-{'private' if private else 'public'}", "is_private": private,
                           "members": people})
        control(sandbox, "slack", "POST", "/messages",
                {"channel": channel["id"], "user": people[0], "text": f"Ship it <@{people[1]}>, SUBS billing is fixed"})
        built, fetched, payload_cost, fetch_cost = both_ways(slack(sandbox), *recorded(sandbox, "slack"))
        assert_same(built, fetched)
        assert built.access_type == ("restricted" if private else "public")
        assert payload_cost == fetch_cost - 1  # conversations.replies is not asked

    def test_a_reply_is_fetched(self, sandbox: SandboxServer) -> None:
        channel = control(sandbox, "slack", "POST", "/channels", {"name": "payload-replies"})
        root = control(sandbox, "slack", "POST", "/messages", {"channel": channel["id"], "text": "Root"})
        control(sandbox, "slack", "POST", "/messages", {"channel": channel["id"], "text": "Reply",
                                                        "thread_ts": root["ts"]})

        async def parse(source: Any) -> Ref:
            return parsed_ref(source, *recorded(sandbox, "slack"))

        ref, _ = with_source(slack(sandbox), parse)
        assert ref.id == f"{channel['id']}:{root['ts']}" and ref.payload is None  # the thread has more


class TestCoalescingRules:
    """The registered versions in Redis (core/coalesce.py), read the way the worker reads them."""

    def test_older_dropped_newest_kept_and_a_tie_fetched(self, services: Any) -> None:
        client = services.broker.client

        def ref(event_at: float, seen_at: float, n: str = "7") -> Ref:
            return Ref("github", f"acme/web/issues/{n}", "acme/web", event_at=event_at, seen_at=seen_at,
                       payload={"item": {}})

        older, newer = ref(100.0, 1.0), ref(200.0, 2.0)
        coalesce.register(client, [newer])
        coalesce.register(client, [older])  # arrives late: does not replace the newer one
        screened = coalesce.screen(client, [older, newer, Ref("github", "acme/web/issues/7", "acme/web")])
        assert screened.superseded == 1 and [r.event_at for r in screened.refs] == [200.0, None]
        assert screened.refs[0].payload is not None
        # Two reads of one second: which came first cannot be told; the later read fetches.
        same_second = ref(200.0, 3.0)
        coalesce.register(client, [same_second])
        screened = coalesce.screen(client, [newer, same_second])
        assert screened.superseded == 1 and screened.ambiguous == 1
        assert screened.refs == [same_second] and screened.refs[0].payload is None
        # A newer second clears the tie.
        latest = ref(300.0, 4.0)
        coalesce.register(client, [latest])
        screened = coalesce.screen(client, [latest])
        assert screened.refs[0].payload is not None and screened.ambiguous == 0
