"""The Slack simulator, driven over real HTTP by the official ``slack_sdk`` clients.

``WebClient`` proves the Web API shapes (paging, ``ok: false`` errors, 429), and
``SignatureVerifier`` proves the Events API webhooks are signed as Slack signs them. A small
receiver, served on loopback next to the simulator, records what the simulator delivers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.base import Simulator
from sandbox.server import SandboxServer, create_simulators
from sandbox.slack import BOT_USER, SIGNING_SECRET, SlackSimulator


class Receiver(Simulator):
    """A stand-in webhook receiver: records each request; can fail or stall on purpose."""

    name = "receiver"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_next = 0  # answer 500 to this many requests
        self.stall = 0.0  # seconds to wait before answering

    def routes(self) -> list[BaseRoute]:
        return [Route("/webhooks/slack", self.handle, methods=["POST"])]

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append((dict(request.headers), body))
        if self.stall:
            await asyncio.sleep(self.stall)
        if self.fail_next > 0:
            self.fail_next -= 1
            return JSONResponse({"error": "down"}, 500)
        payload = json.loads(body)
        if payload.get("type") == "url_verification":
            return PlainTextResponse(payload["challenge"])
        return Response(status_code=200)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[tuple[SandboxServer, SlackSimulator, Receiver]]:
    sims: dict[str, Simulator] = dict(create_simulators(["slack"], profile="small"))
    receiver = Receiver()
    sims["receiver"] = receiver
    server = SandboxServer(sims).start()
    slack = sims["slack"]
    assert isinstance(slack, SlackSimulator)
    slack.webhooks.target = server.url("receiver") + "/webhooks/slack"
    yield server, slack, receiver
    server.stop()


@pytest.fixture
def env(sandbox: tuple[SandboxServer, SlackSimulator, Receiver]) -> dict[str, str]:
    return sandbox[0].env()


@pytest.fixture
def client(env: dict[str, str]) -> WebClient:
    return WebClient(token=env["SLACK_BOT_TOKEN"], base_url=env["SLACK_API_URL"] + "/")


@pytest.fixture
def control(sandbox: tuple[SandboxServer, SlackSimulator, Receiver]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox[0].url("slack") + "/_sandbox", timeout=10) as http:
        yield http


def channel_id(slack: SlackSimulator, name: str) -> str:
    return next(c.id for c in slack.channels.values() if c.name == name)


def drain(sandbox: tuple[SandboxServer, SlackSimulator, Receiver]) -> None:
    sandbox[0].run_coroutine(sandbox[1].webhooks.drain(10))


def events_since(receiver: Receiver, start: int) -> list[dict[str, Any]]:
    return [json.loads(body) for _, body in receiver.requests[start:]]


# --- Web API -----------------------------------------------------------------------------


def test_auth_errors_are_http_200_ok_false(env: dict[str, str], client: WebClient) -> None:
    assert client.auth_test()["user_id"] == BOT_USER
    for token, code in [("xoxb-wrong", "invalid_auth"), (None, "not_authed")]:
        bad = WebClient(token=token, base_url=env["SLACK_API_URL"] + "/")
        with pytest.raises(SlackApiError) as caught:
            bad.conversations_list()
        assert caught.value.response.status_code == 200
        assert caught.value.response["error"] == code


def test_list_shows_public_and_member_private_channels_paged(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], client: WebClient
) -> None:
    names: list[str] = []
    cursor = None
    while True:
        page = client.conversations_list(
            types="public_channel,private_channel", exclude_archived=True, limit=2, cursor=cursor
        )
        names += [c["name"] for c in page["channels"]]
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            break
    # hr-private excludes the bot, so it is invisible; old-launch is archived.
    assert sorted(names) == ["engineering", "general", "leadership", "random"]
    public_only = client.conversations_list()["channels"]
    assert {c["name"] for c in public_only} == {"general", "engineering", "random", "old-launch"}
    with pytest.raises(SlackApiError) as caught:
        client.conversations_list(cursor="bm9wZQ==")
    assert caught.value.response["error"] == "invalid_cursor"


def test_history_pages_parents_newest_first(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], client: WebClient
) -> None:
    slack = sandbox[1]
    general = channel_id(slack, "general")
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.conversations_history(channel=general, limit=3, cursor=cursor)
        seen += page["messages"]
        if not page["has_more"]:
            assert "response_metadata" not in page or not page["response_metadata"]["next_cursor"]
            break
        cursor = page["response_metadata"]["next_cursor"]
    truth = list(slack.truth(slack.channels[general])["threads"])
    stamps = [m["ts"] for m in seen]
    assert stamps == sorted(truth, key=float, reverse=True)
    assert all("parent_user_id" not in m for m in seen), "replies must not be in history"
    threaded = [m for m in seen if m.get("reply_count")]
    assert threaded and all(m["thread_ts"] == m["ts"] and m["latest_reply"] for m in threaded)


def test_history_oldest_latest_inclusive(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], client: WebClient
) -> None:
    slack = sandbox[1]
    general = channel_id(slack, "general")
    stamps = sorted(slack.truth(slack.channels[general])["threads"], key=float)
    low, high = stamps[1], stamps[4]
    exclusive = client.conversations_history(channel=general, oldest=low, latest=high)
    assert [m["ts"] for m in exclusive["messages"]] == stamps[2:4][::-1]
    inclusive = client.conversations_history(channel=general, oldest=low, latest=high, inclusive=True)
    assert [m["ts"] for m in inclusive["messages"]] == stamps[1:5][::-1]


def test_membership_rules_and_join(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], client: WebClient
) -> None:
    slack = sandbox[1]
    hr = channel_id(slack, "hr-private")
    old = channel_id(slack, "old-launch")
    with pytest.raises(SlackApiError) as caught:
        client.conversations_history(channel=hr)
    assert caught.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as caught:
        client.conversations_join(channel=old)
    assert caught.value.response["error"] == "is_archived"
    # A public channel the bot has not joined: join it, then read it; joining twice warns.
    name = f"fresh-{time.monotonic_ns()}"
    fresh = slack.create_channel(name, bot_member=False)
    slack.channels[fresh.id].add_root({"type": "message", "user": "U05ALICE01", "text": "hi",
                                       "ts": "1700000000.000001"})
    with pytest.raises(SlackApiError) as caught:
        client.conversations_history(channel=fresh.id)
    assert caught.value.response["error"] == "not_in_channel"
    assert "warning" not in client.conversations_join(channel=fresh.id).data
    assert client.conversations_join(channel=fresh.id)["warning"] == "already_in_channel"
    assert [m["text"] for m in client.conversations_history(channel=fresh.id)["messages"]] == ["hi"]


def test_replies_root_then_replies_paged(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], client: WebClient
) -> None:
    slack = sandbox[1]
    channel = next(c for c in slack.channels.values() if c.threads and BOT_USER in c.members)
    root = max(channel.threads, key=lambda ts: len(channel.threads[ts]))
    expected = [root, *channel.threads[root]]
    got: list[str] = []
    cursor = None
    while True:
        page = client.conversations_replies(channel=channel.id, ts=root, limit=2, cursor=cursor)
        got += [m["ts"] for m in page["messages"]]
        cursor = page["response_metadata"]["next_cursor"]
        if not page["has_more"]:
            break
    assert got == expected
    # A reply's ts names the whole thread.
    whole = client.conversations_replies(channel=channel.id, ts=expected[-1])
    assert [m["ts"] for m in whole["messages"]] == expected
    with pytest.raises(SlackApiError) as caught:
        client.conversations_replies(channel=channel.id, ts="1600000000.000000")
    assert caught.value.response["error"] == "thread_not_found"


def test_members_and_users(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], client: WebClient
) -> None:
    slack = sandbox[1]
    leadership = channel_id(slack, "leadership")
    members: list[str] = []
    cursor = None
    while True:
        page = client.conversations_members(channel=leadership, limit=2, cursor=cursor)
        members += page["members"]
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            break
    assert members == slack.channels[leadership].members
    person = next(m for m in members if m != BOT_USER)
    assert client.users_info(user=person)["user"]["real_name"] == slack.users[person]["real_name"]
    with pytest.raises(SlackApiError) as caught:
        client.users_info(user="UNOBODY")
    assert caught.value.response["error"] == "user_not_found"


def test_rate_limit_answers_429_with_retry_after(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], client: WebClient
) -> None:
    slack = sandbox[1]
    general = channel_id(slack, "general")
    slack.knobs.rate_limit = 0.2  # one request, then one every 5 s
    try:
        client.conversations_history(channel=general, limit=1)
        with pytest.raises(SlackApiError) as caught:
            client.conversations_history(channel=general, limit=1)
        response = caught.value.response
        assert response.status_code == 429
        assert response["error"] == "ratelimited"
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        slack.knobs.rate_limit = 0


def test_documented_tiers_by_default() -> None:
    slack = create_simulators(["slack"], profile="empty")["slack"]
    assert isinstance(slack, SlackSimulator)
    # Tier 2 (conversations.list) allows a burst of 20, then throttles.
    waits = [slack._bucket("conversations.list").take() for _ in range(21)]
    assert waits[:20] == [0.0] * 20 and waits[20] > 0
    # Tier 3 methods get 50.
    assert [slack._bucket("conversations.history").take() for _ in range(50)] == [0.0] * 50


# --- Events API webhooks ------------------------------------------------------------------


def test_message_events_are_signed_and_verify_with_slack_sdk(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], control: httpx.Client
) -> None:
    _, slack, receiver = sandbox
    general = channel_id(slack, "general")
    start = len(receiver.requests)
    root = control.post("/messages", json={"channel": general, "user": "U05ALICE01",
                                           "text": "Decision: ship SUBS billing Friday"}).json()
    reply = control.post("/messages", json={"channel": general, "user": "U05BOBBY02",
                                            "text": "agreed", "thread_ts": root["ts"]}).json()
    drain(sandbox)
    verifier = SignatureVerifier(SIGNING_SECRET)
    delivered = receiver.requests[start:]
    assert len(delivered) == 2
    for headers, body in delivered:
        assert verifier.is_valid_request(body, headers)
        assert not verifier.is_valid_request(body.replace(b"agreed", b"AGREED").replace(b"ship", b"SHIP"), headers)
    first, second = (json.loads(body) for _, body in delivered)
    assert first["type"] == "event_callback" and first["team_id"] and first["event_id"] != second["event_id"]
    assert isinstance(first["event_time"], int)
    assert first["event"]["ts"] == root["ts"] and first["event"]["channel"] == general
    assert first["event"]["channel_type"] == "channel" and "thread_ts" not in first["event"]
    assert second["event"]["thread_ts"] == root["ts"] and second["event"]["ts"] == reply["ts"]


def test_edit_delete_and_tombstone_events(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], control: httpx.Client,
    client: WebClient,
) -> None:
    _, slack, receiver = sandbox
    eng = channel_id(slack, "engineering")
    root = control.post("/messages", json={"channel": eng, "text": "Postgres upgrade plan"}).json()
    reply = control.post("/messages", json={"channel": eng, "text": "v16?", "thread_ts": root["ts"]}).json()
    lone = control.post("/messages", json={"channel": eng, "text": "typo"}).json()
    drain(sandbox)
    start = len(receiver.requests)
    assert control.patch("/messages", json={"channel": eng, "ts": reply["ts"], "text": "v17"}).status_code == 200
    assert control.delete("/messages", params={"channel": eng, "ts": lone["ts"]}).status_code == 204
    assert control.delete("/messages", params={"channel": eng, "ts": root["ts"]}).status_code == 204
    drain(sandbox)
    changed, deleted_lone, deleted_root = (e["event"] for e in events_since(receiver, start))
    assert changed["subtype"] == "message_changed" and changed["message"]["ts"] == reply["ts"]
    assert changed["message"]["thread_ts"] == root["ts"] and changed["message"]["edited"]["ts"] == changed["ts"]
    assert changed["previous_message"]["text"] == "v16?"
    assert deleted_lone["subtype"] == "message_deleted" and deleted_lone["deleted_ts"] == lone["ts"]
    # A root with replies becomes a tombstone, announced as message_changed.
    assert deleted_root["subtype"] == "message_changed" and deleted_root["message"]["ts"] == root["ts"]
    assert deleted_root["message"]["subtype"] == "tombstone"
    assert deleted_root["previous_message"]["reply_count"] == 1
    thread = client.conversations_replies(channel=eng, ts=root["ts"])["messages"]
    assert thread[0]["subtype"] == "tombstone" and thread[1]["text"] == "v17"
    # Deleting its last reply removes the thread, tombstone included.
    start = len(receiver.requests)
    assert control.delete("/messages", params={"channel": eng, "ts": reply["ts"]}).status_code == 204
    drain(sandbox)
    gone_reply, gone_tombstone = (e["event"] for e in events_since(receiver, start))
    assert gone_reply["deleted_ts"] == reply["ts"] and gone_reply["previous_message"]["thread_ts"] == root["ts"]
    assert gone_tombstone["deleted_ts"] == root["ts"]
    assert gone_tombstone["previous_message"]["subtype"] == "tombstone"
    with pytest.raises(SlackApiError) as caught:
        client.conversations_replies(channel=eng, ts=root["ts"])
    assert caught.value.response["error"] == "thread_not_found"
    assert root["ts"] not in [m["ts"] for m in client.conversations_history(channel=eng)["messages"]]
    assert control.delete("/messages", params={"channel": eng, "ts": lone["ts"]}).status_code == 404


#: docs.slack.dev/reference/events/message/message_deleted and …/message_changed: the event
#: fields of Slack's documented examples, nothing more.
DOCUMENTED_DELETED = {"type", "subtype", "hidden", "channel", "ts", "deleted_ts"}
DOCUMENTED_CHANGED = {"type", "subtype", "hidden", "channel", "ts", "message"}


def test_documented_event_shapes(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], control: httpx.Client,
    client: WebClient,
) -> None:
    _, slack, receiver = sandbox
    eng = channel_id(slack, "engineering")
    root = control.post("/messages", json={"channel": eng, "text": "Cache warm-up plan"}).json()
    reply = control.post("/messages", json={"channel": eng, "text": "after deploy", "thread_ts": root["ts"]}).json()
    other = control.post("/messages", json={"channel": eng, "text": "one more", "thread_ts": root["ts"]}).json()
    drain(sandbox)
    start = len(receiver.requests)
    # Per call...
    assert control.patch("/messages", json={"channel": eng, "ts": reply["ts"], "text": "before deploy",
                                            "shape": "documented"}).status_code == 200
    assert control.delete("/messages", params={"channel": eng, "ts": reply["ts"],
                                               "shape": "documented"}).status_code == 204
    # ... or for every event, until set back.
    assert control.put("/config", json={"event_shape": "documented"}).json()["event_shape"] == "documented"
    try:
        assert control.delete("/messages", params={"channel": eng, "ts": root["ts"]}).status_code == 204
        assert control.delete("/messages", params={"channel": eng, "ts": other["ts"]}).status_code == 204
    finally:
        control.put("/config", json={"event_shape": "full"})
    drain(sandbox)
    changed, deleted, tombstoned, last, tombstone_gone = (e["event"] for e in events_since(receiver, start))
    assert set(changed) == DOCUMENTED_CHANGED and changed["subtype"] == "message_changed"
    assert set(changed["message"]) == {"type", "user", "text", "ts", "edited"}  # no thread_ts
    assert changed["message"]["ts"] == reply["ts"] and changed["message"]["text"] == "before deploy"
    assert set(deleted) == DOCUMENTED_DELETED and deleted["deleted_ts"] == reply["ts"]
    assert "previous_message" not in deleted  # nothing says which thread the reply was in
    assert set(tombstoned) == DOCUMENTED_CHANGED and tombstoned["message"]["subtype"] == "tombstone"
    assert set(last) == DOCUMENTED_DELETED and last["deleted_ts"] == other["ts"]
    assert set(tombstone_gone) == DOCUMENTED_DELETED and tombstone_gone["deleted_ts"] == root["ts"]
    for headers, body in receiver.requests[start:]:  # still signed as Slack signs
        assert SignatureVerifier(SIGNING_SECRET).is_valid_request(body, headers)
    assert root["ts"] not in [m["ts"] for m in client.conversations_history(channel=eng)["messages"]]
    assert control.put("/config", json={"event_shape": "sparse"}).status_code == 400


def test_channel_lifecycle_events(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], control: httpx.Client,
    client: WebClient,
) -> None:
    _, slack, receiver = sandbox
    public = control.post("/channels", json={"name": f"launch-{time.monotonic_ns()}"}).json()
    private = control.post("/channels", json={"name": f"secret-{time.monotonic_ns()}",
                                               "is_private": True}).json()
    drain(sandbox)
    start = len(receiver.requests)
    assert control.post(f"/channels/{public['id']}/archive").status_code == 200
    assert control.post(f"/channels/{private['id']}/archive").status_code == 200
    assert control.delete(f"/channels/{public['id']}").status_code == 204
    drain(sandbox)
    kinds = [(e["event"]["type"], e["event"]["channel"]) for e in events_since(receiver, start)]
    assert kinds == [("channel_archive", public["id"]), ("group_archive", private["id"]),
                     ("channel_deleted", public["id"])]
    assert client.conversations_info(channel=private["id"])["channel"]["is_archived"] is True
    with pytest.raises(SlackApiError) as caught:
        client.conversations_info(channel=public["id"])
    assert caught.value.response["error"] == "channel_not_found"


def test_no_message_events_from_channels_the_app_is_not_in(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], control: httpx.Client
) -> None:
    _, slack, receiver = sandbox
    hidden = control.post("/channels", json={"name": f"solo-{time.monotonic_ns()}", "bot_member": False,
                                             "is_private": True}).json()
    drain(sandbox)
    start = len(receiver.requests)
    assert control.post("/messages", json={"channel": hidden["id"], "text": "psst"}).status_code == 201
    drain(sandbox)
    assert receiver.requests[start:] == []


def test_failed_delivery_is_retried_with_same_event_id(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], control: httpx.Client
) -> None:
    _, slack, receiver = sandbox
    general = channel_id(slack, "general")
    assert control.put("/config", json={"retry_delays": [0, 0.05, 0.05], "ack_timeout": 0.5}).status_code == 200
    try:
        start = len(receiver.requests)
        receiver.fail_next = 2
        control.post("/messages", json={"channel": general, "text": "retry me"})
        drain(sandbox)
        attempts = receiver.requests[start:]
        assert len(attempts) == 3  # two failures, then a 2xx ends the retries
        assert len({json.loads(b)["event_id"] for _, b in attempts}) == 1
        assert len({b for _, b in attempts}) == 1
        assert [h.get("x-slack-retry-num") for h, _ in attempts] == [None, "1", "2"]
        assert attempts[1][0]["x-slack-retry-reason"] == "http_error"
        verifier = SignatureVerifier(SIGNING_SECRET)
        assert all(verifier.is_valid_request(b, h) for h, b in attempts)
        # A receiver slower than the ack deadline counts as failed: retried as http_timeout.
        start = len(receiver.requests)
        receiver.stall = 0.8
        control.post("/messages", json={"channel": general, "text": "slow"})
        drain(sandbox)
        stalled = receiver.requests[start:]
        assert len(stalled) == 4  # the first try and all three retries time out
        assert {h.get("x-slack-retry-reason") for h, _ in stalled[1:]} == {"http_timeout"}
    finally:
        receiver.stall = 0.0
        receiver.fail_next = 0
        control.put("/config", json={"retry_delays": [0, 60, 300], "ack_timeout": 3})


def test_url_verification_handshake(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], control: httpx.Client
) -> None:
    receiver = sandbox[2]
    start = len(receiver.requests)
    result = control.post("/url_verification").json()
    assert result["verified"] is True and result["status"] == 200
    headers, body = receiver.requests[start]
    assert json.loads(body) == {"token": json.loads(body)["token"], "challenge": result["challenge"],
                                "type": "url_verification"}
    assert SignatureVerifier(SIGNING_SECRET).is_valid_request(body, headers)


def test_control_api_rejects_bad_input(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], control: httpx.Client
) -> None:
    assert control.post("/messages", json={"channel": "CNOPE", "text": "x"}).json() == {"error": "channel_not_found"}
    assert control.post("/messages", json={"text": "x"}).status_code == 400
    assert control.post("/channels", json={}).status_code == 400
    general = channel_id(sandbox[1], "general")
    bad_thread = control.post("/messages", json={"channel": general, "text": "x", "thread_ts": "1.000001"})
    assert bad_thread.status_code == 400 and bad_thread.json()["error"] == "thread_not_found"
    assert control.put("/config", json={"retry_delays": ["soon"]}).status_code == 400


def test_scale_profile_sizes() -> None:
    slack = create_simulators(["slack"], profile="scale")["slack"]
    assert isinstance(slack, SlackSimulator)
    assert len(slack.channels) == 40
    assert sum(len(c.messages) for c in slack.channels.values()) == 20_000
    assert sum(1 for c in slack.channels.values() for t in c.threads.values() if t) > 500
    for channel in slack.channels.values():
        assert len(set(channel.messages)) == len(channel.messages)
        assert all(float(ts) < time.time() for ts in channel.messages)


# --- Slack's 2025 limits for commercially distributed non-Marketplace apps -------------------------
def test_non_marketplace_limits_one_call_a_window_and_15_messages(
    sandbox: tuple[SandboxServer, SlackSimulator, Receiver], env: dict[str, str], client: WebClient,
    control: httpx.Client,
) -> None:
    channel = control.post("/channels", json={"name": "nm-limits"}).json()["id"]
    roots = [control.post("/messages", json={"channel": channel, "text": f"root {n}"}).json()["ts"]
             for n in range(20)]
    replies = [control.post("/messages", json={"channel": channel, "text": f"reply {n}",
                                               "thread_ts": roots[0]}).json()["ts"] for n in range(16)]
    drain(sandbox)
    try:
        config = control.put("/config", json={"app_distribution": "non_marketplace"}).json()
        assert config["app_distribution"] == "non_marketplace" and config["limited_window"] == 60
        first = client.conversations_history(channel=channel, limit=100)
        assert len(first["messages"]) == 15 and first["has_more"] is True  # capped at 15
        with pytest.raises(SlackApiError) as caught:  # the second call within the minute
            client.conversations_history(channel=channel, cursor=first["response_metadata"]["next_cursor"])
        assert caught.value.response.status_code == 429
        assert caught.value.response["error"] == "ratelimited"
        assert int(caught.value.response.headers["Retry-After"]) >= 1
        thread = client.conversations_replies(channel=channel, ts=roots[0])  # its own budget
        assert len(thread["messages"]) == 15
        with pytest.raises(SlackApiError):
            client.conversations_replies(channel=channel, ts=roots[0])
        assert client.conversations_info(channel=channel)["ok"]  # other methods keep their tiers

        # A short window, and slack_sdk's own 429 handler: every message arrives exactly once.
        control.put("/config", json={"limited_window": 0.2})
        patient = WebClient(token=env["SLACK_BOT_TOKEN"], base_url=env["SLACK_API_URL"] + "/",
                            retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=20)])
        seen: list[str] = []
        cursor = None
        while True:
            page = patient.conversations_history(channel=channel, cursor=cursor)
            assert len(page["messages"]) <= 15
            seen += [m["ts"] for m in page["messages"]]
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        assert sorted(seen) == sorted(roots) and len(seen) == len(set(seen))
        got: list[str] = []
        cursor = None
        while True:
            page = patient.conversations_replies(channel=channel, ts=roots[0], cursor=cursor)
            got += [m["ts"] for m in page["messages"]]
            cursor = page["response_metadata"]["next_cursor"]
            if not cursor:
                break
        assert got == [roots[0], *replies]
    finally:
        control.put("/config", json={"app_distribution": "internal", "limited_window": 60})
    assert control.put("/config", json={"app_distribution": "marketplace-ish"}).status_code == 400
    assert control.put("/config", json={"limited_window": 0}).status_code == 400
