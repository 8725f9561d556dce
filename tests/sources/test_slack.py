"""The Slack connector against the Slack simulator over real HTTP, plus its pure functions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from core.documents import Document, Gone, Ref
from core.errors import (
    InvalidWebhook,
    MalformedWebhook,
    NotConfigured,
    PermanentSourceError,
    RateLimited,
    SettingsError,
    TransientSourceError,
)
from core.settings import Settings, SourceSettings
from core.sources import slack as slack_mod
from core.sources.base import Scope, Source
from core.sources.slack import SlackSource, build, parse_event, to_document, verify_signature
from sandbox.server import SandboxServer, create_simulators
from sandbox.slack import BOT_USER, SlackSimulator

T = TypeVar("T")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[tuple[SandboxServer, SlackSimulator]]:
    sims = create_simulators(["slack"], profile="small")
    slack = sims["slack"]
    assert isinstance(slack, SlackSimulator)
    slack.knobs.rate_limit = 0  # tests of budgets set their own
    server = SandboxServer(sims).start()
    yield server, slack
    server.stop()


@pytest.fixture
def sim(sandbox: tuple[SandboxServer, SlackSimulator]) -> Iterator[SlackSimulator]:
    yield sandbox[1]
    sandbox[1].knobs.rate_limit = 0
    sandbox[1].knobs.fault_rate = 0.0


def settings_for(env: dict[str, str], **overrides: str) -> SourceSettings:
    return Settings.from_environ({**env, **overrides}).source("slack")


def with_source(
    sandbox: tuple[SandboxServer, SlackSimulator],
    body: Callable[[SlackSource], Awaitable[T]],
    **overrides: str,
) -> T:
    """Run ``body`` with a connector built the way the workers build it, on a fresh client."""

    async def main() -> T:
        async with httpx.AsyncClient(timeout=10) as client:
            source = build(settings_for(sandbox[0].env(), **overrides), client)
            return await body(source)

    return asyncio.run(main())


def channel_id(sim: SlackSimulator, name: str) -> str:
    return next(c.id for c in sim.channels.values() if c.name == name)


def control(sandbox: tuple[SandboxServer, SlackSimulator]) -> httpx.Client:
    return httpx.Client(base_url=sandbox[0].url("slack") + "/_sandbox", timeout=10)


async def collect(source: SlackSource, scope: Scope, since: float | None = None,
                  checkpoint: str | None = None) -> list[Any]:
    return [page async for page in source.changes(scope, since, checkpoint)]


# --- pure normalisation ----------------------------------------------------------------------


CHANNEL = {"id": "C1", "name": "billing", "is_private": False}
NAMES = {"U1": "alice", "U2": "bob"}


def test_thread_to_document() -> None:
    messages = [
        {"ts": "1700000000.000100", "user": "U1", "text": "SUBS billing moves to Stripe\n\nDetails inside",
         "thread_ts": "1700000000.000100", "reply_count": 1, "latest_reply": "1700000300.000200"},
        {"ts": "1700000300.000200", "user": "U2", "text": "<@U1> agreed, ship it",
         "thread_ts": "1700000000.000100", "edited": {"user": "U2", "ts": "1700000900.000000"}},
    ]
    doc = to_document(CHANNEL, messages, NAMES)
    assert doc is not None
    assert doc.id == "C1:1700000000.000100" and doc.scope == "C1" and doc.source == "slack"
    assert doc.title == "#billing: SUBS billing moves to Stripe"
    assert doc.url == "https://slack.com/archives/C1/p1700000000000100"
    assert doc.author == "alice" and doc.updated_at == 1700000900.0
    paragraphs = doc.text.split("\n\n")
    assert paragraphs == [
        "#billing",
        "alice (2023-11-14 22:13 UTC): SUBS billing moves to Stripe\nDetails inside",
        "bob (2023-11-14 22:18 UTC): @alice agreed, ship it",
    ]
    assert doc.metadata["reply_count"] == 1 and doc.metadata["participants"] == ["alice", "bob"]
    assert doc.access_type == "public" and doc.access_list == ()


def test_private_channel_document_is_restricted_to_members() -> None:
    doc = to_document({**CHANNEL, "is_private": True}, [{"ts": "1.000001", "user": "U1", "text": "x"}],
                      NAMES, ["U1", "U2"])
    assert doc is not None and doc.access_type == "restricted" and doc.access_list == ("U1", "U2")


def test_tombstone_thread_keeps_replies_and_empty_is_none() -> None:
    tombstone = {"ts": "5.000001", "subtype": "tombstone", "user": "USLACKBOT",
                 "text": "This message was deleted.", "thread_ts": "5.000001", "reply_count": 1}
    reply = {"ts": "6.000001", "user": "U2", "text": "still relevant", "thread_ts": "5.000001"}
    doc = to_document(CHANNEL, [tombstone, reply], NAMES)
    assert doc is not None and doc.title == "#billing: (deleted message)"
    assert "deleted" not in doc.text and "still relevant" in doc.text and doc.author == ""
    assert to_document(CHANNEL, [tombstone], NAMES) is None
    assert to_document(CHANNEL, [], NAMES) is None


# --- webhooks: verify ----------------------------------------------------------------------


def signed(sim: SlackSimulator, body: bytes, at: int | None = None) -> dict[str, str]:
    return sim.signed_headers(body, timestamp=at)


def test_verify_accepts_good_and_refuses_bad(sandbox: tuple[SandboxServer, SlackSimulator]) -> None:
    sim = sandbox[1]
    source = build(settings_for(sandbox[0].env()), httpx.AsyncClient())
    body = b'{"type":"event_callback","event_id":"Ev1","event":{"type":"message"}}'
    headers = signed(sim, body)
    source.verify(headers, body)
    source.verify({k.lower(): v for k, v in headers.items()}, body)  # header case does not matter
    with pytest.raises(InvalidWebhook, match="signature"):
        source.verify(headers, body.replace(b"Ev1", b"Ev2"))
    with pytest.raises(InvalidWebhook, match="missing"):
        source.verify({"Content-Type": "application/json"}, body)
    stale = signed(sim, body, at=int(time.time()) - 301)
    with pytest.raises(InvalidWebhook, match="5 minutes"):
        source.verify(stale, body)
    # A request signed now is refused once the clock has moved on by more than five minutes.
    # (The clock is passed in rather than frozen: freezegun rescans every loaded module, which
    # with the SDKs a full test run has loaded takes minutes.)
    secret = sandbox[0].env()["SLACK_SIGNING_SECRET"]
    verify_signature(secret, headers, body, now=time.time() + 299)
    with pytest.raises(InvalidWebhook, match="5 minutes"):
        verify_signature(secret, headers, body, now=time.time() + 301)
    unsigned = build(settings_for(sandbox[0].env(), SLACK_SIGNING_SECRET=""), httpx.AsyncClient())
    with pytest.raises(NotConfigured):
        unsigned.verify(headers, body)


# --- webhooks: parse (bodies as the simulator sends them) ----------------------------------


def deliveries_of(sandbox: tuple[SandboxServer, SlackSimulator], action: Callable[[], Any]) -> list[dict[str, Any]]:
    """Run a control-API action and return the event bodies the simulator produced."""
    sim = sandbox[1]
    start = len(sim.webhooks.deliveries)
    action()
    sandbox[0].run_coroutine(sim.webhooks.drain(5))
    return [json.loads(d.body) for d in sim.webhooks.deliveries[start:]]


def test_parse_each_event_type(sandbox: tuple[SandboxServer, SlackSimulator]) -> None:
    sim = sandbox[1]
    with control(sandbox) as http:
        name = f"parse-{time.monotonic_ns()}"
        (created,) = deliveries_of(sandbox, lambda: http.post("/channels", json={"name": name}))
        cid = created["event"]["channel"]["id"]
        assert parse_event(json.dumps(created).encode()).refs == []  # channel_created: ignored
        (new,) = deliveries_of(sandbox, lambda: http.post("/messages", json={"channel": cid, "text": "root"}))
        root_ts = new["event"]["ts"]
        (reply,) = deliveries_of(sandbox, lambda: http.post(
            "/messages", json={"channel": cid, "text": "reply", "thread_ts": root_ts}))
        reply_ts = reply["event"]["ts"]
        (edit,) = deliveries_of(sandbox, lambda: http.patch(
            "/messages", json={"channel": cid, "ts": reply_ts, "text": "edited reply"}))
        (gone_reply,) = deliveries_of(sandbox, lambda: http.delete(
            "/messages", params={"channel": cid, "ts": reply_ts}))
        (gone_root,) = deliveries_of(sandbox, lambda: http.delete(
            "/messages", params={"channel": cid, "ts": root_ts}))
        (archived,) = deliveries_of(sandbox, lambda: http.post(f"/channels/{cid}/archive"))
        (deleted,) = deliveries_of(sandbox, lambda: http.delete(f"/channels/{cid}"))
    thread = f"{cid}:{root_ts}"

    def only_ref(payload: dict[str, Any]) -> Ref:
        result = parse_event(json.dumps(payload).encode())
        assert result.delivery_id == payload["event_id"] and len(result.refs) == 1
        return result.refs[0]

    first = only_ref(new)
    assert (first.id, first.op, first.scope) == (thread, "sync", cid)
    assert first.event_at == float(root_ts)
    assert only_ref(reply).id == thread and only_ref(reply).op == "sync"
    assert only_ref(edit).id == thread and only_ref(edit).event_at == float(edit["event"]["ts"])
    assert only_ref(gone_reply).id == thread and only_ref(gone_reply).op == "sync"
    assert only_ref(gone_root).id == thread and only_ref(gone_root).op == "delete"
    assert parse_event(json.dumps(archived).encode()).scope_events == [("archived", cid)]
    assert parse_event(json.dumps(deleted).encode()).scope_events == [("deleted", cid)]
    assert sim.channels.get(cid) is None


def test_parse_retry_keeps_delivery_id_and_handles_handshake_and_noise() -> None:
    envelope = {"type": "event_callback", "event_id": "Ev42", "event_time": 1700000000, "team_id": "T1",
                "event": {"type": "message", "channel": "C1", "user": "U1", "text": "hi",
                          "ts": "1700000000.000001"}}
    body = json.dumps(envelope).encode()
    first = parse_event(body)
    retried = parse_event(body)  # Slack resends the same body with X-Slack-Retry-Num
    assert first.delivery_id == retried.delivery_id == "Ev42"
    handshake = parse_event(b'{"token":"t","challenge":"abc123","type":"url_verification"}')
    assert handshake.reply == (200, b"abc123", "text/plain") and handshake.refs == []
    for subtype in ("channel_join", "message_replied", "channel_topic"):
        noisy = {**envelope, "event": {**envelope["event"], "subtype": subtype}}
        result = parse_event(json.dumps(noisy).encode())
        assert result.refs == [] and subtype in result.note and result.delivery_id == "Ev42"
    # A root deleted while it had replies becomes a tombstone in Slack: refetch, not delete.
    tomb = {**envelope, "event": {"type": "message", "subtype": "message_deleted", "channel": "C1",
                                  "ts": "9.000001", "deleted_ts": "1.000001",
                                  "previous_message": {"ts": "1.000001", "reply_count": 2,
                                                       "thread_ts": "1.000001"}}}
    (ref,) = parse_event(json.dumps(tomb).encode()).refs
    assert (ref.id, ref.op) == ("C1:1.000001", "sync")
    with pytest.raises(MalformedWebhook):
        parse_event(b"not json")
    with pytest.raises(MalformedWebhook):
        parse_event(b'{"type":"event_callback","event":{"type":"message"}}')  # no event_id
    with pytest.raises(MalformedWebhook):
        parse_event(json.dumps({**envelope, "event": {"type": "message", "ts": "1.1"}}).encode())
    assert parse_event(b'{"type":"app_rate_limited","team_id":"T1"}').note
    dm = {**envelope, "event": {**envelope["event"], "channel": "D1", "channel_type": "im"}}
    assert parse_event(json.dumps(dm).encode()).refs == []


def test_parse_documented_shapes() -> None:
    """Slack's documented examples: message_deleted without previous_message (so no thread_ts),
    message_changed whose message has no thread_ts. Each becomes a ref the fetch resolves:
    the deleted ts (a lone root's document, or a reply whose thread the fetch finds), the
    edited message's ts (a root, or a reply whose thread the fetch finds)."""
    envelope = {"token": "XXYYZZ", "team_id": "T123ABC456", "api_app_id": "A123ABC456",
                "type": "event_callback", "event_id": "Ev123ABC456", "event_time": 123456789}
    deleted = {**envelope, "event": {"type": "message", "subtype": "message_deleted", "hidden": True,
                                     "channel": "C123ABC456", "ts": "1358878755.000001",
                                     "deleted_ts": "1358878749.000002"}}
    (ref,) = parse_event(json.dumps(deleted).encode()).refs
    assert (ref.id, ref.scope, ref.op) == ("C123ABC456:1358878749.000002", "C123ABC456", "delete")
    assert ref.event_at == 1358878755.000001  # when it was deleted: newer than what remains
    changed = {**envelope, "event": {
        "type": "message", "subtype": "message_changed", "hidden": True, "channel": "C123ABC456",
        "ts": "1358878755.000001",
        "message": {"type": "message", "user": "U123ABC456", "text": "Hello, world!",
                    "ts": "1355517523.000005", "edited": {"user": "U123ABC456", "ts": "1358878755.000001"}}}}
    (ref,) = parse_event(json.dumps(changed).encode()).refs
    assert (ref.id, ref.op) == ("C123ABC456:1355517523.000005", "sync")


# --- Web API through the connector -----------------------------------------------------------


def test_source_protocol_and_scopes_join_public_channels(
    sandbox: tuple[SandboxServer, SlackSimulator], sim: SlackSimulator
) -> None:
    random_id = channel_id(sim, "random")
    assert BOT_USER not in sim.channels[random_id].members

    async def body(source: SlackSource) -> list[Scope]:
        assert isinstance(source, Source) and source.pushes
        return await source.scopes()

    scopes = with_source(sandbox, body)
    names = {s.name for s in scopes}
    assert {"general", "engineering", "random", "leadership"} <= names
    assert not names & {"hr-private", "old-launch"}  # not a member; archived
    assert all(s.source == "slack" and s.key in sim.channels for s in scopes)
    assert BOT_USER in sim.channels[random_id].members


def test_changes_lists_every_thread_paged_and_resumable(
    sandbox: tuple[SandboxServer, SlackSimulator], sim: SlackSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slack_mod, "PAGE_SIZE", 3)
    cid = channel_id(sim, "general")
    truth = sim.truth(sim.channels[cid])["threads"]

    async def body(source: SlackSource) -> tuple[list[Any], list[Any]]:
        scope = Scope("slack", cid, "general")
        pages = await collect(source, scope)
        resumed = await collect(source, scope, checkpoint=pages[0].checkpoint)
        return pages, resumed

    pages, resumed = with_source(sandbox, body)
    assert len(pages) > 2 and pages[-1].checkpoint is None
    ids = [r.id for p in pages for r in p.refs]
    assert sorted(ids) == sorted(f"{cid}:{ts}" for ts in truth)
    assert [r.id for p in resumed for r in p.refs] == ids[len(pages[0].refs):]
    for ref in (r for p in pages for r in p.refs):
        ts = ref.id.split(":")[1]
        lone = len(truth[ts]) == 1
        assert (ref.document is not None) == lone  # lone messages need no refetch
        if ref.document is not None:
            assert ref.document.text.endswith(truth[ts][0]["text"])
    assert all(p.high_water for p in pages)


def test_changes_since_includes_old_threads_with_new_replies(
    sandbox: tuple[SandboxServer, SlackSimulator], sim: SlackSimulator
) -> None:
    cid = channel_id(sim, "engineering")
    channel = sim.channels[cid]
    recent_root = [ts for ts in sim.truth(channel)["threads"]][-1]  # within the 7-day lookback
    since = time.time() - 1
    with control(sandbox) as http:
        http.post("/messages", json={"channel": cid, "text": "late answer", "thread_ts": recent_root})
        fresh = http.post("/messages", json={"channel": cid, "text": "brand new"}).json()

    async def body(source: SlackSource) -> list[Any]:
        return await collect(source, Scope("slack", cid), since=since)

    refs = [r for page in with_source(sandbox, body) for r in page.refs]
    assert sorted(r.id for r in refs) == sorted([f"{cid}:{recent_root}", f"{cid}:{fresh['ts']}"])
    assert all(r.event_at is not None and r.event_at >= since for r in refs)


def test_fetch_thread_private_and_gone(
    sandbox: tuple[SandboxServer, SlackSimulator], sim: SlackSimulator
) -> None:
    lead = channel_id(sim, "leadership")
    threaded = next(ts for ts, msgs in sim.truth(sim.channels[lead])["threads"].items() if len(msgs) > 1)
    with control(sandbox) as http:
        doomed = http.post("/channels", json={"name": f"doomed-{time.monotonic_ns()}"}).json()["id"]
        lone = http.post("/messages", json={"channel": doomed, "text": "short-lived"}).json()["ts"]
        kept = http.post("/messages", json={"channel": doomed, "text": "kept"}).json()["ts"]

    async def body(source: SlackSource) -> dict[str, Document | Gone]:
        out = {"thread": await source.fetch(Ref("slack", f"{lead}:{threaded}", lead))}
        out["kept"] = await source.fetch(Ref("slack", f"{doomed}:{kept}", doomed))
        with control(sandbox) as http:
            http.delete("/messages", params={"channel": doomed, "ts": lone})
        out["deleted"] = await source.fetch(Ref("slack", f"{doomed}:{lone}", doomed))
        out["missing"] = await source.fetch(Ref("slack", f"{lead}:1600000000.000001", lead))
        with control(sandbox) as http:
            http.post(f"/channels/{doomed}/archive")
        out["archived"] = await source.fetch(Ref("slack", f"{doomed}:{kept}", doomed))
        with control(sandbox) as http:
            http.delete(f"/channels/{doomed}")
        out["channel_gone"] = await source.fetch(Ref("slack", f"{doomed}:{kept}", doomed))
        return out

    got = with_source(sandbox, body)
    doc = got["thread"]
    assert isinstance(doc, Document)
    truth = sim.truth(sim.channels[lead])["threads"][threaded]
    assert doc.text.count("\n\n") == len(truth)  # channel line + one paragraph per message
    for message in truth:
        assert message["text"] in doc.text
    # Members as emails (users.info profile.email); the bot has none and keeps its user id.
    emails = {sim.users[u]["profile"].get("email") or u for u in sim.channels[lead].members}
    assert doc.access_type == "restricted" and set(doc.access_list) == emails
    assert doc.author == sim.users[truth[0]["user"]]["profile"]["display_name"]
    assert isinstance(got["kept"], Document) and got["kept"].access_type == "public"
    for key in ("deleted", "missing", "archived", "channel_gone"):
        assert isinstance(got[key], Gone), key


def test_failed_fetch_raises_never_gone(
    sandbox: tuple[SandboxServer, SlackSimulator], sim: SlackSimulator
) -> None:
    cid = channel_id(sim, "general")
    ts = next(iter(sim.truth(sim.channels[cid])["threads"]))
    ref = Ref("slack", f"{cid}:{ts}", cid)

    async def bad_token(source: SlackSource) -> None:
        with pytest.raises(PermanentSourceError, match="invalid_auth"):
            await source.fetch(ref)

    with_source(sandbox, bad_token, SLACK_BOT_TOKEN="xoxb-revoked")

    async def server_down(source: SlackSource) -> None:
        source.http.attempts = 1  # no backoff in a test
        sim.knobs.fault_rate = 1.0
        try:
            with pytest.raises(TransientSourceError):
                await source.fetch(ref)
        finally:
            sim.knobs.fault_rate = 0.0

    with_source(sandbox, server_down)


def test_live_ids_match_ground_truth(
    sandbox: tuple[SandboxServer, SlackSimulator], sim: SlackSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slack_mod, "PAGE_SIZE", 4)
    cid = channel_id(sim, "leadership")

    async def body(source: SlackSource) -> list[str]:
        return [i async for i in source.live_ids(Scope("slack", cid))]

    ids = with_source(sandbox, body)
    assert sorted(ids) == sorted(f"{cid}:{ts}" for ts in sim.truth(sim.channels[cid])["threads"])


def test_429_retry_after_is_honoured_then_surfaced(
    sandbox: tuple[SandboxServer, SlackSimulator], sim: SlackSimulator
) -> None:
    cid = channel_id(sim, "general")
    ts = next(iter(sim.truth(sim.channels[cid])["threads"]))
    ref = Ref("slack", f"{cid}:{ts}", cid)

    async def body(source: SlackSource) -> tuple[Document | Gone, int]:
        await source.names(sim.users)  # warm the name cache: info + replies calls counted below
        before = source.http.requests
        sim.knobs.rate_limit = 2.0  # burst of 2, then one every 0.5 s: Retry-After 1
        first = await source.fetch(ref)
        second = await source.fetch(ref)
        third = await source.fetch(ref)
        assert first == second == third
        sent = source.http.requests - before
        source.http.max_wait = 0.5  # a caller that will not wait: RateLimited, not a failure
        with pytest.raises(RateLimited) as caught:
            for _ in range(3):
                await source.fetch(ref)
        assert caught.value.retry_after >= 1
        return first, sent

    document, sent = with_source(sandbox, body)
    assert isinstance(document, Document)
    assert sent > 6, "some calls must have been answered 429 and retried"


def test_bad_lookback_setting_is_one_line_error(sandbox: tuple[SandboxServer, SlackSimulator]) -> None:
    with pytest.raises(SettingsError, match="SLACK_THREAD_LOOKBACK"):
        build(settings_for(sandbox[0].env(), SLACK_THREAD_LOOKBACK="soon"), httpx.AsyncClient())


def test_thread_sweep_setting(sandbox: tuple[SandboxServer, SlackSimulator]) -> None:
    env = sandbox[0].env()
    assert not build(settings_for(env), httpx.AsyncClient()).sweep_every_pass  # prune by default
    assert build(settings_for(env, SLACK_THREAD_SWEEP="Pass"), httpx.AsyncClient()).sweep_every_pass
    assert not build(settings_for(env, SLACK_THREAD_SWEEP="prune"), httpx.AsyncClient()).sweep_every_pass
    with pytest.raises(SettingsError, match="SLACK_THREAD_SWEEP"):
        build(settings_for(env, SLACK_THREAD_SWEEP="sometimes"), httpx.AsyncClient())


def test_deleted_root_with_replies_keeps_the_replies_until_they_go(
    sandbox: tuple[SandboxServer, SlackSimulator], sim: SlackSimulator
) -> None:
    cid = channel_id(sim, "general")
    with control(sandbox) as http:
        root = http.post("/messages", json={"channel": cid, "text": "Incident: search is down"}).json()["ts"]
        reply = http.post("/messages", json={"channel": cid, "text": "Root cause: full disk",
                                             "thread_ts": root}).json()["ts"]
        sandbox[0].run_coroutine(sim.webhooks.drain(5))
        (tombstoned,) = deliveries_of(sandbox, lambda: http.delete("/messages",
                                                                   params={"channel": cid, "ts": root}))
    (ref,) = parse_event(json.dumps(tombstoned).encode()).refs
    assert (ref.id, ref.op) == (f"{cid}:{root}", "sync")

    async def body(source: SlackSource) -> tuple[Document | Gone, list[Ref], Document | Gone]:
        kept = await source.fetch(ref)
        with control(sandbox) as http:
            events = deliveries_of(sandbox, lambda: http.delete("/messages",
                                                                params={"channel": cid, "ts": reply}))
        refs = [r for e in events for r in parse_event(json.dumps(e).encode()).refs]
        return kept, refs, await source.fetch(ref)

    kept, refs, after = with_source(sandbox, body)
    assert isinstance(kept, Document) and "Root cause: full disk" in kept.text
    assert "Incident" not in kept.text and kept.title.endswith("(deleted message)")
    assert [(r.id, r.op) for r in refs] == [(f"{cid}:{root}", "sync"), (f"{cid}:{root}", "delete")]
    assert isinstance(after, Gone)


def test_scale_channel_lists_completely(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slack_mod, "PAGE_SIZE", 200)  # several pages even at Slack's page maximum
    sims = create_simulators(["slack"], profile="scale")
    sim = sims["slack"]
    assert isinstance(sim, SlackSimulator)
    sim.knobs.rate_limit = 0
    server = SandboxServer(sims).start()
    try:
        busiest = max(sim.channels.values(), key=lambda c: len(c.roots))

        async def body(source: SlackSource) -> tuple[list[Any], list[str]]:
            scope = Scope("slack", busiest.id)
            pages = await collect(source, scope)
            return pages, [i async for i in source.live_ids(scope)]

        pages, live = with_source((server, sim), body)
    finally:
        server.stop()
    expected = {f"{busiest.id}:{ts}" for ts in sim.truth(busiest)["threads"]}
    ids = [r.id for p in pages for r in p.refs]
    assert len(pages) > 1 and len(ids) == len(set(ids)) and set(ids) == expected == set(live)
    threaded = {f"{busiest.id}:{ts}" for ts, replies in busiest.threads.items() if replies}
    assert {r.id for p in pages for r in p.refs if r.document is None} == threaded


# --- thread facts, with our real state (Postgres) and queue (Redis) ---------------------------


def queued_ids(services: Any) -> list[str]:
    """Document ids of the refs waiting on the live queue."""
    raw = services.broker.client.hvals("dramatiq:sync.msgs")
    return sorted(r["id"] for m in raw for r in json.loads(m)["args"][0])


def test_fetch_of_a_reply_or_a_deleted_reply_syncs_its_thread(
    sandbox: tuple[SandboxServer, SlackSimulator], services: Any
) -> None:
    from core.runtime import DatabaseContext

    sim = sandbox[1]
    cid = channel_id(sim, "general")
    with control(sandbox) as http:
        root = http.post("/messages", json={"channel": cid, "text": "facts root"}).json()["ts"]
        reply = http.post("/messages", json={"channel": cid, "text": "facts reply", "thread_ts": root}).json()["ts"]
        other = http.post("/messages", json={"channel": cid, "text": "another", "thread_ts": root}).json()["ts"]
    thread_id = f"{cid}:{root}"
    context = DatabaseContext(services.pool, services.settings.redis_url)

    async def main() -> tuple[Any, Any, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            source = build(settings_for(sandbox[0].env()), client, None, context)
            assert source.facts is context
            document = await source.fetch(Ref("slack", thread_id, cid))
            as_reply = await source.fetch(Ref("slack", f"{cid}:{reply}", cid))  # an event without thread_ts
            with control(sandbox) as http:
                http.delete("/messages", params={"channel": cid, "ts": other, "shape": "documented"})
            deleted = await source.fetch(Ref("slack", f"{cid}:{other}", cid, "delete", time.time()))
            return document, as_reply, deleted

    try:
        document, as_reply, deleted = asyncio.run(main())
    finally:
        context.close()
    assert isinstance(document, Document) and "another" in document.text
    assert isinstance(as_reply, Gone) and isinstance(deleted, Gone)  # neither ts is a document
    # Each time, the thread that holds the ts was asked for: from the API (a reply's ts names
    # its thread), then from the message ts the first fetch remembered (the deleted ts is gone).
    assert queued_ids(services) == [thread_id, thread_id]
    with services.pool.connection() as conn:
        facts, parts = conn.execute("SELECT facts, parts FROM source_facts WHERE document_id = %s",
                                    (f"slack:{thread_id}",)).fetchone()
    assert facts == {"reply_count": 2, "latest_reply": other} and parts == [root, reply, other]
