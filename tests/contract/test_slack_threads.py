"""Slack threads end to end: deleted and edited replies reach the index whatever shape their
event takes, and without any event at all.

A Slack document is a whole thread (``slack:{channel}:{thread_ts}``). Slack's documented
``message_deleted`` carries only ``deleted_ts``, not the thread the message was in, and a
deleted reply moves no timestamp that ``conversations.history`` shows: only the parent's
``reply_count`` and ``latest_reply`` change. Real receiver, worker, Postgres, Redis, and
reconciler ticks, against the Slack simulator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.runtime import SourceSet
from reconciler.reconcile import Reconciler
from sandbox.server import SandboxServer
from sandbox.slack import BOT_USER, TEAM_ID, SlackSimulator, micro_to_ts
from tests.contract.conftest import System, start_sandbox, unique


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    server = start_sandbox(["slack"])
    yield server
    server.stop()


def sim(system: System) -> SlackSimulator:
    slack = system.sandbox.sims["slack"]
    assert isinstance(slack, SlackSimulator)
    return slack


def channel(system: System) -> str:
    return str(system.control("slack", "POST", "/channels", json={"name": unique("threads")}).json()["id"])


def post(system: System, cid: str, text: str, thread_ts: str | None = None) -> str:
    body: dict[str, Any] = {"channel": cid, "text": text}
    if thread_ts:
        body["thread_ts"] = thread_ts
    return str(system.control("slack", "POST", "/messages", json=body).json()["ts"])


def thread(system: System, cid: str, words: list[str]) -> tuple[str, list[str]]:
    """A root about words[0] and one reply per further word; indexed through the webhooks."""
    root = post(system, cid, f"Thread on {words[0]} {words[0]}")
    replies = [post(system, cid, f"Reply about {w} {w}", root) for w in words[1:]]
    system.settle("slack")
    return root, replies


def delete(system: System, cid: str, ts: str, shape: str) -> None:
    system.control("slack", "DELETE", "/messages", params={"channel": cid, "ts": ts, "shape": shape})


def last_event(system: System) -> dict[str, Any]:
    return dict(json.loads(system.deliveries("slack")[-1].body)["event"])


@pytest.mark.parametrize("shape", ["documented", "full"])
def test_deleted_reply_leaves_the_index_through_its_webhook(system: System, shape: str) -> None:
    cid = channel(system)
    topic, kept, doomed = unique("topic"), unique("kept"), unique("doomed")
    root, (keep, drop) = thread(system, cid, [topic, kept, doomed])
    document_id = f"slack:{cid}:{root}"
    assert system.found(doomed, document_id, "slack") and system.found(kept, document_id, "slack")

    delete(system, cid, drop, shape)
    system.settle("slack")
    event = last_event(system)
    assert event["subtype"] == "message_deleted" and event["deleted_ts"] == drop
    assert ("previous_message" in event) == (shape == "full")
    assert doomed not in system.chunk_texts(document_id), "the deleted reply is still indexed"
    assert not system.found(doomed, document_id, "slack")
    assert system.found(kept, document_id, "slack") and system.found(topic, document_id, "slack")
    assert system.stats("slack")["failed"] == 0


def test_edited_reply_in_documented_shape_reaches_the_index(system: System) -> None:
    """Slack's documented message_changed carries the message without its thread_ts."""
    cid = channel(system)
    topic, before, after = unique("topic"), unique("before"), unique("after")
    root, (reply,) = thread(system, cid, [topic, before])
    document_id = f"slack:{cid}:{root}"
    system.control("slack", "PATCH", "/messages",
                   json={"channel": cid, "ts": reply, "text": f"Now {after} {after}", "shape": "documented"})
    system.settle("slack")
    assert "thread_ts" not in last_event(system)["message"]
    assert system.found(after, document_id, "slack")
    assert before not in system.chunk_texts(document_id)


def test_deleted_root_follows_slack_tombstone_rules_in_documented_shape(system: System) -> None:
    cid = channel(system)
    topic, reply_word, lone_word = unique("topic"), unique("reply"), unique("lone")
    root, (reply,) = thread(system, cid, [topic, reply_word])
    lone = post(system, cid, f"Alone {lone_word} {lone_word}")
    system.settle("slack")
    document_id, lone_id = f"slack:{cid}:{root}", f"slack:{cid}:{lone}"
    assert system.found(lone_word, lone_id, "slack")

    delete(system, cid, root, "documented")  # a root with replies: a tombstone stays
    delete(system, cid, lone, "documented")  # a lone root: the document goes
    system.settle("slack")
    assert topic not in system.chunk_texts(document_id)
    assert system.found(reply_word, document_id, "slack")
    assert system.chunk_ids(lone_id) == [] and system.row(lone_id)["deleted_at"] is not None  # type: ignore[index]

    delete(system, cid, reply, "documented")  # its last reply: the whole thread goes
    system.settle("slack")
    assert system.chunk_ids(document_id) == []
    assert system.row(document_id)["deleted_at"] is not None  # type: ignore[index]


def test_deleted_replies_with_their_webhooks_lost_are_gone_after_one_pass(system: System) -> None:
    cid = channel(system)
    topic, middle, kept, newest = unique("topic"), unique("middle"), unique("kept"), unique("newest")
    root, (middle_ts, _, newest_ts) = thread(system, cid, [topic, middle, kept, newest])
    document_id = f"slack:{cid}:{root}"
    system.reconcile("slack", cid)  # the first pass sets the cursor
    system.reconcile("slack", cid)
    assert system.found(middle, document_id, "slack") and system.found(newest, document_id, "slack")

    system.knobs("slack", webhook_drop_rate=1)
    delete(system, cid, middle_ts, "documented")  # moves no timestamp at all
    delete(system, cid, newest_ts, "documented")  # moves latest_reply *back*
    system.settle("slack")
    assert all(d.dropped for d in system.deliveries("slack")[-2:])
    text = system.chunk_texts(document_id)
    assert middle in text and newest in text  # nothing told us yet

    system.reconcile("slack", cid)  # one pass: the parent's reply_count and latest_reply moved
    assert system.last_run("reconcile", "slack")["counters"]["since"] is not None
    text = system.chunk_texts(document_id)
    assert middle not in text and newest not in text, "still indexed after a reconcile pass"
    assert system.found(kept, document_id, "slack") and system.found(topic, document_id, "slack")
    assert system.stats("slack")["failed"] == 0


def _with_env(system: System, **env: str) -> Any:
    source = system.settings.source("slack")
    return system.settings.replace(sources={
        **system.settings.sources, "slack": dataclasses.replace(source, env={**source.env, **env})})


def _reconcile_with(system: System, settings: Any, key: str, prune: bool = False) -> None:
    async def one_tick() -> int:
        sources = SourceSet(settings, system.services.pool)
        try:
            reconciler = Reconciler(settings, system.services, sources, "threads-test")
            await reconciler.discover(sources.configured(), force=True)
            await asyncio.to_thread(system._make_due, "slack", key, prune)
            return await reconciler.tick()
        finally:
            await sources.aclose()

    assert asyncio.run(one_tick()) == 1
    system.worker.drain()


def test_lookback_all_reads_old_threads_on_every_pass(system: System) -> None:
    """SLACK_THREAD_LOOKBACK=all: each pass reads the whole history, so a reply deleted from a
    thread of last month (webhook lost) is gone after one pass, without waiting for a prune."""
    slack = sim(system)
    week_ago = time.time() - 8 * 86400
    channel, root = next((c, ts) for c in slack.channels.values() if BOT_USER in c.members
                         and not c.is_archived for ts, r in c.threads.items() if len(r) > 1
                         and float(r[-1]) < week_ago)
    everything = _with_env(system, SLACK_THREAD_LOOKBACK="all")
    document_id = f"slack:{channel.id}:{root}"
    _reconcile_with(system, everything, channel.id)  # the first, full pass
    _reconcile_with(system, everything, channel.id)
    removed_ts = channel.threads[root][0]  # (the next test takes the next old reply)
    removed = channel.messages[removed_ts]["text"]
    assert removed in system.chunk_texts(document_id)

    system.knobs("slack", webhook_drop_rate=1)
    delete(system, channel.id, removed_ts, "documented")
    system.settle("slack")
    # The 7-day lookback with the sweep left to the prune pass: no pass sees it.
    _reconcile_with(system, _with_env(system, SLACK_THREAD_SWEEP="prune"), channel.id)
    assert removed in system.chunk_texts(document_id)
    _reconcile_with(system, everything, channel.id)
    assert system.last_run("reconcile", "slack")["counters"]["since"] is not None
    assert removed not in system.chunk_texts(document_id)


def test_reply_changes_in_a_thread_older_than_the_lookback_reach_the_index(system: System) -> None:
    """A seeded thread from days ago, past SLACK_THREAD_LOOKBACK (7 days): new and deleted
    replies with their webhooks lost show in no pass's window; the prune pass, which reads the
    whole history, compares every parent's reply_count and latest_reply and re-reads them
    (SLACK_THREAD_SWEEP=prune, the default; with pass every pass compares them)."""
    slack = sim(system)
    week_ago = time.time() - 8 * 86400
    old = [(c, ts) for c in slack.channels.values() if BOT_USER in c.members and not c.is_archived
           for ts, replies in c.threads.items() if replies and float(replies[-1]) < week_ago]
    assert old, "the small seed should hold a thread older than the lookback"
    general, root = old[0]
    document_id = f"slack:{general.id}:{root}"
    system.reconcile("slack", general.id)  # the whole channel (first pass)
    system.reconcile("slack", general.id)
    removed = general.messages[general.threads[root][0]]["text"]
    assert removed in system.chunk_texts(document_id)

    added = unique("late")
    system.knobs("slack", webhook_drop_rate=1)
    delete(system, general.id, general.threads[root][0], "documented")
    post(system, general.id, f"Late answer {added} {added}", root)
    system.settle("slack")
    # Past the lookback, with SLACK_THREAD_SWEEP=prune (the default): no pass sees it.
    _reconcile_with(system, _with_env(system, SLACK_THREAD_SWEEP="prune"), general.id)
    assert removed in system.chunk_texts(document_id)
    system.reconcile("slack", general.id, prune=True)
    system.worker.drain()
    prune = system.last_run("prune", "slack")
    assert prune["status"] == "succeeded" and prune["counters"]["deletes_enqueued"] == 0, prune
    text = system.chunk_texts(document_id)
    assert removed not in text and added in text
    assert system.found(added, document_id, "slack")


def _old_thread(system: System, cid: str, days: int, words: list[str]) -> tuple[str, list[str]]:
    """A thread put straight into the simulator ``days`` ago: a root on words[0], a reply
    a minute apart for each further word (a control call can only post at the current time)."""
    ch = sim(system).channels[cid]
    start = int((time.time() - days * 86400) * 1_000_000)
    root = micro_to_ts(start)
    ch.add_root({"type": "message", "user": ch.creator, "text": f"Old thread on {words[0]} {words[0]}",
                 "ts": root, "team": TEAM_ID})
    replies = []
    for n, word in enumerate(words[1:], 1):
        ts = micro_to_ts(start + n * 60_000_000)
        ch.add_reply(root, {"type": "message", "user": ch.creator, "text": f"Reply {word} {word}",
                            "ts": ts, "thread_ts": root, "parent_user_id": ch.creator, "team": TEAM_ID})
        replies.append(ts)
    return root, replies


def edit(system: System, cid: str, ts: str, word: str) -> None:
    system.control("slack", "PATCH", "/messages",
                   json={"channel": cid, "ts": ts, "text": f"Now {word} {word}", "shape": "documented"})


def test_replies_to_a_ninety_day_old_thread_reach_the_index_in_one_pass(system: System) -> None:
    """Issue 15: a thread whose root is 90 days old, far past SLACK_THREAD_LOOKBACK, webhooks
    lost. A reply added or deleted moves the parent's reply_count / latest_reply, which every
    pass compares over the whole history with SLACK_THREAD_SWEEP=pass: one pass each. (The
    default, prune, leaves that to the daily prune: tested above.)"""
    every_pass = _with_env(system, SLACK_THREAD_SWEEP="pass")
    cid = channel(system)
    first, second, quiet_word = unique("first"), unique("second"), unique("quiet")
    root, replies = _old_thread(system, cid, 90, [unique("ancient"), first, second])
    quiet, (quiet_reply,) = _old_thread(system, cid, 80, [unique("still"), quiet_word])
    post(system, cid, f"Today's chatter {unique('today')}")  # the pass cursor is now, not 90 days ago
    document_id = f"slack:{cid}:{root}"
    _reconcile_with(system, every_pass, cid)  # the first pass: the whole channel
    assert system.found(first, document_id, "slack") and system.found(second, document_id, "slack")
    _reconcile_with(system, every_pass, cid)

    system.knobs("slack", webhook_drop_rate=1)
    added = unique("added")
    post(system, cid, f"Late reply {added} {added}", root)
    system.settle("slack")
    assert system.deliveries("slack")[-1].dropped
    _reconcile_with(system, every_pass, cid)
    assert system.found(added, document_id, "slack"), "a new reply in an old thread was missed"

    delete(system, cid, replies[0], "documented")
    system.settle("slack")
    _reconcile_with(system, every_pass, cid)
    assert first not in system.chunk_texts(document_id), "a deleted old reply is still indexed"
    assert system.found(second, document_id, "slack") and system.found(added, document_id, "slack")

    # An edit moves no parent fact. In the thread just active (within the lookback) the prune
    # re-reads it; in a thread quiet for 80 days neither a pass nor that prune sees it, only a
    # prune with SLACK_THREAD_LOOKBACK=all (which re-reads every thread).
    edited, hidden = unique("edited"), unique("hidden")
    edit(system, cid, replies[1], edited)
    edit(system, cid, quiet_reply, hidden)
    system.settle("slack")
    _reconcile_with(system, every_pass, cid)
    _reconcile_with(system, every_pass, cid, prune=True)
    assert system.found(edited, document_id, "slack") and second not in system.chunk_texts(document_id)
    quiet_id = f"slack:{cid}:{quiet}"
    assert quiet_word in system.chunk_texts(quiet_id) and hidden not in system.chunk_texts(quiet_id)
    _reconcile_with(system, _with_env(system, SLACK_THREAD_LOOKBACK="all"), cid, prune=True)
    assert system.found(hidden, quiet_id, "slack") and quiet_word not in system.chunk_texts(quiet_id)
    assert system.stats("slack")["failed"] == 0
