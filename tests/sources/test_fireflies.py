"""The Fireflies connector against the simulator over real HTTP, and its pure functions."""

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

from core.documents import Document, Gone, Ref, chunk_text
from core.errors import InvalidWebhook, MalformedWebhook, NotConfigured, PermanentSourceError
from core.settings import Settings, SourceSettings
from core.sources import fireflies
from core.sources.base import Scope, StaticContext
from sandbox.server import SandboxServer, create_simulators

T = TypeVar("T")
JIRA = [Scope("jira", "SUBS", "Subscriptions"), Scope("jira", "OPS", "Operations")]


def run(factory: Callable[[fireflies.FirefliesSource], Awaitable[T]], env: dict[str, str],
        context: StaticContext | None = None) -> T:
    """Build a connector on a fresh client and run ``factory(source)`` to completion."""

    async def main() -> T:
        async with httpx.AsyncClient(timeout=10) as client:
            return await factory(fireflies.build(settings(env), client, None, context))

    return asyncio.run(main())


def settings(env: dict[str, str]) -> SourceSettings:
    return Settings.from_environ(env).source("fireflies")


async def collect(source: fireflies.FirefliesSource, since: float | None) -> list[Ref]:
    refs: list[Ref] = []
    async for page in source.changes(fireflies.SCOPE, since, None):
        refs.extend(page.refs)
    return refs


async def ids(source: fireflies.FirefliesSource) -> list[str]:
    return [i async for i in source.live_ids(fireflies.SCOPE)]


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    sims = create_simulators(["fireflies"], profile="small", seed=5)
    sims["fireflies"].knobs.rate_limit = 0
    srv = SandboxServer(sims).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def scale() -> Iterator[SandboxServer]:
    sims = create_simulators(["fireflies"], profile="scale", seed=6)
    sims["fireflies"].knobs.rate_limit = 0
    srv = SandboxServer(sims).start()
    yield srv
    srv.stop()


def control(server: SandboxServer, method: str, path: str, **body: Any) -> dict[str, Any]:
    response = httpx.request(method, server.url("fireflies") + "/_sandbox" + path,
                             json=body or None, timeout=10)
    response.raise_for_status()
    return response.json()


def test_backfill_lists_every_transcript_once(server: SandboxServer) -> None:
    truth = {t["id"] for t in control(server, "GET", "/transcripts")["transcripts"]}
    refs = run(lambda s: collect(s, None), server.env())
    assert sorted(r.id for r in refs) == sorted(truth)
    assert all(r.document is None and r.scope == "account" for r in refs)


def test_scale_paging_returns_each_of_200_once(scale: SandboxServer) -> None:
    refs = run(lambda s: collect(s, None), scale.env())
    assert len(refs) == 200 and len({r.id for r in refs}) == 200
    assert len(run(ids, scale.env())) == 200


def test_incremental_window_reaches_48h_before_since(server: SandboxServer) -> None:
    now = time.time()
    recent = control(server, "POST", "/transcripts", title="OPS retro", date=int((now - 30 * 3600) * 1000))
    old = control(server, "POST", "/transcripts", title="OPS old", date=int((now - 80 * 3600) * 1000))
    listed = {r.id for r in run(lambda s: collect(s, now - 3600), server.env())}
    assert recent["id"] in listed and old["id"] not in listed


def test_processed_transcript_becomes_a_restricted_document(server: SandboxServer) -> None:
    created = control(server, "POST", "/transcripts", title="SUBS planning: billing retries",
                      participants=["ada@example.com", "ben@example.com"],
                      organizer_email="chloe@example.com")
    control(server, "POST", f"/transcripts/{created['id']}/process", sentence_count=30)
    doc = run(lambda s: s.fetch(Ref("fireflies", created["id"])), server.env(), StaticContext({"jira": JIRA}))
    assert isinstance(doc, Document)
    assert doc.title == "SUBS planning: billing retries"
    assert doc.access_type == "restricted"
    assert doc.access_list == ("ada@example.com", "ben@example.com", "chloe@example.com")
    assert doc.metadata["project_tags"] == ["SUBS"]
    assert "Overview: " in doc.text and "Action items:" in doc.text
    speakers = {s["name"] for s in created["speakers"]}
    turns = [p for p in doc.text.split("\n\n") if p.split(":")[0] in speakers]
    assert turns, "speaker turns are paragraphs starting with the speaker's name"
    for chunk in chunk_text(doc.text, max_tokens=512):
        if not chunk.startswith(("SUBS planning", "Overview", "Action", "Keywords")):
            assert chunk.split(":")[0].removesuffix(" (continued)") in speakers


def test_not_processed_raises_then_is_picked_up(server: SandboxServer) -> None:
    created = control(server, "POST", "/transcripts", title="WEB standup")
    ref = Ref("fireflies", created["id"])
    with pytest.raises(fireflies.NotProcessedYet):
        run(lambda s: s.fetch(ref), server.env())
    control(server, "POST", f"/transcripts/{created['id']}/process", sentence_count=4)
    doc = run(lambda s: s.fetch(ref), server.env())
    assert isinstance(doc, Document) and doc.text.count("\n\n") >= 2


def test_deleted_transcript_is_gone_and_leaves_live_ids(server: SandboxServer) -> None:
    created = control(server, "POST", "/transcripts", title="to delete")
    assert created["id"] in run(ids, server.env())
    control(server, "DELETE", f"/transcripts/{created['id']}")
    assert run(lambda s: s.fetch(Ref("fireflies", created["id"])), server.env()) == Gone("fireflies", created["id"])
    assert created["id"] not in run(ids, server.env())


def test_failed_fetch_raises_never_gone(server: SandboxServer) -> None:
    env = {**server.env(), "FIREFLIES_API_KEY": "wrong"}
    with pytest.raises(PermanentSourceError) as err:
        run(lambda s: s.fetch(Ref("fireflies", "anything")), env)
    assert err.value.status == 401


def test_project_tags_from_title_and_summary() -> None:
    summary = {"overview": "We reviewed the operations backlog.", "keywords": []}
    assert fireflies.project_tags("SUBS-12 and more", {}, JIRA) == ["SUBS"]
    assert fireflies.project_tags("Weekly sync", summary, JIRA) == ["OPS"]
    assert fireflies.project_tags("SUBSCRIBERS call", {}, JIRA) == []


def test_to_document_merges_consecutive_sentences_of_one_speaker() -> None:
    raw = {"id": "t1", "title": "Sync", "date": 1714550400000, "duration": 12,
           "organizer_email": "Ada@Example.com", "participants": ["ben@example.com"],
           "speakers": [], "transcript_url": "https://app.fireflies.ai/view/t1",
           "summary": None,
           "sentences": [
               {"index": 0, "text": "Hello.", "speaker_name": "Ada"},
               {"index": 1, "text": "Second\n\nline.", "speaker_name": "Ada"},
               {"index": 2, "text": "Hi Ada.", "speaker_name": "Ben"},
           ]}
    doc = fireflies._to_document(raw, [])
    assert doc.text.split("\n\n")[1:] == ["Ada: Hello. Second line.", "Ben: Hi Ada."]
    assert doc.updated_at == 1714550400.0 and doc.metadata["date"] == "2024-05-01 08:00 UTC"
    assert doc.access_list == ("ada@example.com", "ben@example.com")


def test_long_turns_are_split_into_named_paragraphs() -> None:
    sentences = [{"index": i, "text": "word " * 60, "speaker_name": "Ada"} for i in range(20)]
    paragraphs = fireflies._turns(sentences)
    assert len(paragraphs) > 1
    assert all(len(p) <= fireflies.MAX_TURN_CHARS for p in paragraphs)
    assert paragraphs[0].startswith("Ada: ")
    assert all(p.startswith("Ada (continued): ") for p in paragraphs[1:])


def test_verify_requires_secret_and_sha256_signature(server: SandboxServer) -> None:
    env = server.env()
    source = fireflies.FirefliesSource(settings(env), httpx.AsyncClient())
    body = b'{"event":"meeting.transcribed","timestamp":1,"meeting_id":"m1"}'
    digest = hmac.new(env["FIREFLIES_WEBHOOK_SECRET"].encode(), body, hashlib.sha256).hexdigest()
    source.verify({"X-Hub-Signature": f"sha256={digest}"}, body)
    source.verify({"x-hub-signature": f"sha256={digest}"}, body)
    for bad in (digest, "sha256=" + "0" * 64, ""):
        with pytest.raises(InvalidWebhook):
            source.verify({"X-Hub-Signature": bad}, body)
    with pytest.raises(InvalidWebhook):
        source.verify({"X-Hub-Signature": f"sha256={digest}"}, body + b" ")
    unsigned = fireflies.FirefliesSource(settings({**env, "FIREFLIES_WEBHOOK_SECRET": ""}), httpx.AsyncClient())
    with pytest.raises(NotConfigured):
        unsigned.verify({"X-Hub-Signature": f"sha256={digest}"}, body)


def test_parse_v2_v1_and_ignored_events() -> None:
    v2 = fireflies.parse_event(json.dumps({"event": "meeting.summarized", "timestamp": 1714550400000,
                                           "meeting_id": "m1"}).encode())
    assert [(r.id, r.op, r.event_at) for r in v2.refs] == [("m1", "sync", 1714550400.0)]
    assert v2.delivery_id == "meeting.summarized:m1:1714550400000"
    v1 = fireflies.parse_event(b'{"meetingId":"m2","eventType":"Transcription completed"}')
    assert [r.id for r in v1.refs] == ["m2"] and v1.delivery_id
    ignored = fireflies.parse_event(b'{"event":"meeting.bot_joined","timestamp":1,"meeting_id":"m3"}')
    assert ignored.refs == [] and "bot_joined" in ignored.note
    for bad in (b"not json", b"[1]", b'{"event":"meeting.transcribed"}', b"{}"):
        with pytest.raises(MalformedWebhook):
            fireflies.parse_event(bad)


def test_webhook_from_simulator_verifies_and_parses(server: SandboxServer) -> None:
    sim = server.sims["fireflies"]
    created = control(server, "POST", "/transcripts", title="webhook check")
    control(server, "POST", f"/transcripts/{created['id']}/process", sentence_count=2)
    server.run_coroutine(sim.webhooks.drain(5))
    delivery = [d for d in sim.webhooks.deliveries if created["id"].encode() in d.body][-1]
    source = fireflies.FirefliesSource(settings(server.env()), httpx.AsyncClient())
    source.verify(delivery.headers, delivery.body)
    assert [r.id for r in source.parse(delivery.headers, delivery.body).refs] == [created["id"]]


def test_bad_recheck_window_is_one_line_naming_the_setting(server: SandboxServer) -> None:
    from core.errors import SettingsError

    env = {**server.env(), "FIREFLIES_RECHECK_WINDOW": "fortnight"}
    with pytest.raises(SettingsError, match="FIREFLIES_RECHECK_WINDOW") as caught:
        fireflies.build(settings(env), httpx.AsyncClient())
    assert "\n" not in str(caught.value)
    assert fireflies.build(settings({**server.env(), "FIREFLIES_RECHECK_WINDOW": "0"}),
                           httpx.AsyncClient()).recheck == 0
    assert fireflies.build(settings(server.env()), httpx.AsyncClient()).recheck == 14 * 86400
