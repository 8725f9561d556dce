"""Validation at the door: every case issue 9 observed, reproduced against a real receiver.

Each test sends what the bounded fuzz sent (deep nesting, wrong types, NUL, bad timestamps,
unstorable numbers) and asserts a 4xx with a message, never a 5xx; the push API refuses what it
could not store; an API delete deletes; Notion's handshake cannot be taken over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core import state
from tests.conftest import BASE_ENV, ReceiverHandle, make_settings
from tests.door import ADMIN, DOOR_ENV, PUSHING, is_clean_4xx, post_webhook
from tests.test_status import cli

DEEP = b"[" * 100_000 + b"]" * 100_000
#: Deep enough for Python's recursive parser to fail, small enough for a 64 KiB admin body.
DEEP_SMALL = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 5_000 + b"1" + b"}" * 5_000


@pytest.fixture(scope="module")
def door(infra: dict[str, str]) -> Iterator[ReceiverHandle]:
    """One receiver for the module (a start costs a second or more on a loaded machine); tests
    that read or write state also take ``services``, which empties the tables first."""
    handle = ReceiverHandle(make_settings(infra, **DOOR_ENV))
    yield handle
    handle.stop()


def assert_refused(response: httpx.Response, status: int = 400, says: str = "") -> None:
    assert is_clean_4xx(response), f"{response.status_code} {response.text[:300]}"
    assert response.status_code == status, f"{response.status_code} {response.text[:300]}"
    if says:
        assert says in response.json()["error"], response.json()["error"]


# --- deep nesting ---------------------------------------------------------------------------


class TestDeepNesting:
    @pytest.mark.parametrize("source", PUSHING)
    @pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["array", "object"])
    def test_signed_deep_body_is_a_400(self, door: Any, source: str, body: bytes) -> None:
        assert_refused(post_webhook(door.url, source, body), 400, "deeper than")

    def test_unsigned_deep_body_to_notion_is_refused_before_the_handshake(self, infra, services, receiver_factory):
        # Without NOTION_WEBHOOK_TOKEN the handshake parser ran first and raised RecursionError.
        env = {k: v for k, v in DOOR_ENV.items() if k != "NOTION_WEBHOOK_TOKEN"}
        receiver = receiver_factory(make_settings(infra, **env))
        assert_refused(post_webhook(receiver.url, "notion", DEEP, signed=False), 400, "deeper than")

    def test_push_and_admin_bodies_too(self, door: Any) -> None:
        assert_refused(httpx.post(f"{door.url}/api/documents", content=DEEP, headers=ADMIN), 400, "deeper than")
        for path in ("/api/scopes/jira/activate", "/api/backfill/jira", "/api/dead-letters/replay",
                     "/api/search", "/api/keys", "/api/scopes/jira/access", "/api/admin/verify"):
            assert_refused(httpx.post(f"{door.url}{path}", content=DEEP_OBJECT, headers=ADMIN), 400, "deeper than")
            assert_refused(httpx.post(f"{door.url}{path}", content=DEEP_SMALL, headers=ADMIN), 400, "deeper than")

    def test_json_bodies_refuse_what_cannot_be_stored_or_compared(self, door: Any) -> None:
        # Every JSON body goes through the one safe loader: NaN and NUL are refused at the door.
        for path in ("/api/search", "/api/keys", "/api/scopes/jira/access"):
            assert_refused(httpx.post(f"{door.url}{path}", content=b'{"q": NaN, "role": NaN}', headers=ADMIN), 400)
            assert_refused(httpx.post(f"{door.url}{path}", content=b'{"q": "a\\u0000b", "name": "a\\u0000b"}',
                                      headers=ADMIN), 400)


# --- wrong types reach each parser ----------------------------------------------------------

WRONG_TYPES: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
    ("jira", {"webhookEvent": "jira:issue_updated", "issue": {"id": "1", "fields": []}}, {}, "issue.fields"),
    ("jira", {"webhookEvent": "jira:issue_updated", "issue": {"id": "1", "fields": {"project": "P"}}}, {},
     "issue.fields.project"),
    ("jira", {"webhookEvent": "project_deleted", "project": ["P"]}, {}, "project"),
    ("jira", {"webhookEvent": ["jira:issue_updated"]}, {}, "webhookEvent"),
    ("github", {"action": "opened", "repository": "o/r"}, {"X-GitHub-Event": "issues"}, "repository"),
    ("github", {"action": "opened", "repository": {"full_name": 7}}, {"X-GitHub-Event": "issues"},
     "repository.full_name"),
    ("github", {"action": "opened", "repository": {"full_name": "o/r"}, "issue": ["x"]},
     {"X-GitHub-Event": "issues"}, "issue"),
    ("github", {"repository": {"full_name": "o/r"}, "ref": "refs/heads/main", "commits": ["abc"]},
     {"X-GitHub-Event": "push"}, "commits[0]"),
    ("notion", {"id": "e1", "type": "page.created", "entity": "page-1"}, {}, "entity"),
    ("notion", {"id": "e1", "type": "page.created", "entity": {"id": "p", "type": "page"}, "timestamp": 5},
     {}, "timestamp"),
    ("slack", {"type": "event_callback", "event_id": "Ev1", "event": {"type": ["message"]}}, {}, "event.type"),
    ("slack", {"type": "event_callback", "event_id": "Ev1",
               "event": {"type": "message", "channel": "C1", "subtype": {"x": 1}}}, {}, "event.subtype"),
    ("slack", {"type": "event_callback", "event_id": "Ev1",
               "event": {"type": "message", "channel": "C1", "subtype": "message_changed", "message": "m"}},
     {}, "event.message"),
    ("slack", {"type": "event_callback", "event_id": "Ev1",
               "event": {"type": "message", "channel": "C1", "ts": ["1.2"]}}, {}, "event.ts"),
    ("fireflies", {"event": ["meeting.transcribed"], "meeting_id": "m1"}, {}, "event"),
    ("fireflies", {"eventType": {"a": 1}, "meetingId": "m1"}, {}, "eventType"),
]


@pytest.mark.parametrize(("source", "payload", "headers", "field"), WRONG_TYPES,
                         ids=[f"{w[0]}-{w[3]}" for w in WRONG_TYPES])
def test_a_field_of_the_wrong_type_is_a_400_naming_it(door: Any, source: str, payload: dict[str, Any],
                                                      headers: dict[str, str], field: str) -> None:
    response = post_webhook(door.url, source, json.dumps(payload).encode(), **headers)
    assert_refused(response, 400, f"'{field}'")


@pytest.mark.parametrize("stamp", ["yesterday", "2025-13-45T99:00:00Z", "", "2025-06-01T12:00:00.000Z\x00"])
def test_an_invalid_notion_timestamp_is_a_400(door: Any, stamp: str) -> None:
    event = {"id": "e-ts", "type": "page.content_updated", "timestamp": stamp,
             "entity": {"id": "page-1", "type": "page"}}
    response = post_webhook(door.url, "notion", json.dumps(event).encode())
    if stamp == "":  # absent in effect: no event time, still a valid event
        assert response.status_code == 200, response.text
    else:
        assert_refused(response, 400, "timestamp")


# --- NUL where it cannot be stored ----------------------------------------------------------


class TestNul:
    def test_nul_in_delivery_ids(self, door: Any, services: Any) -> None:
        slack = {"type": "event_callback", "event_id": "Ev\x001",
                 "event": {"type": "message", "channel": "C1", "ts": "1700000000.000100", "text": "hi"}}
        assert_refused(post_webhook(door.url, "slack", json.dumps(slack).encode()), 400, "NUL")
        notion = {"id": "e\x00", "type": "page.created", "entity": {"id": "p1", "type": "page"}}
        assert_refused(post_webhook(door.url, "notion", json.dumps(notion).encode()), 400, "NUL")

    def test_nul_in_ref_ids_and_scope_keys(self, door: Any, services: Any) -> None:
        jira = {"webhookEvent": "jira:issue_updated", "issue": {"id": "1\x00", "fields": {}}}
        assert_refused(post_webhook(door.url, "jira", json.dumps(jira).encode()), 400, "NUL")
        deleted = {"webhookEvent": "project_deleted", "project": {"key": "P\x00"}}
        assert_refused(post_webhook(door.url, "jira", json.dumps(deleted).encode()), 400, "NUL")
        scopes = httpx.post(f"{door.url}/api/scopes/jira/activate", json={"keys": ["P\x00"]}, headers=ADMIN)
        assert_refused(scopes, 400, "NUL")

    def test_a_nul_in_content_only_does_not_refuse_a_webhook(self, door: Any, services: Any) -> None:
        # Webhooks are notifications: text is not stored from them, so a NUL in it is harmless.
        slack = {"type": "event_callback", "event_id": "EvText",
                 "event": {"type": "message", "channel": "C1", "ts": "1700000000.000100", "text": "a\x00b"}}
        response = post_webhook(door.url, "slack", json.dumps(slack).encode())
        assert response.status_code == 200 and response.json()["enqueued"] == 1, response.text

    @pytest.mark.parametrize("query", ["kind=%00", "source=%00", "kind=reconcile%00x"])
    def test_nul_in_query_parameters(self, door: Any, query: str) -> None:
        assert_refused(httpx.get(f"{door.url}/api/runs?{query}", headers=ADMIN), 400, "NUL")

    def test_nul_in_path_parameters(self, door: Any) -> None:
        assert_refused(httpx.delete(f"{door.url}/api/documents/a%00b", headers=ADMIN), 400, "NUL")
        assert_refused(httpx.get(f"{door.url}/api/runs/1%00", headers=ADMIN), 400, "NUL")


# --- the push API accepts only what it can store --------------------------------------------


def push(door: Any, body: Any, raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body, allow_nan=True).encode()
    return httpx.post(f"{door.url}/api/documents", content=content, headers=ADMIN, timeout=60)


GOOD = {"id": "doc-1", "title": "Title", "text": "Some text", "url": "https://example.com/1"}


class TestPush:
    @pytest.mark.parametrize("field", ["id", "title", "text", "url", "author"])
    def test_nul_in_a_field_is_refused(self, door: Any, field: str) -> None:
        assert_refused(push(door, {**GOOD, field: "a\x00b"}), 400, "NUL")

    def test_nul_in_metadata_is_refused(self, door: Any) -> None:
        assert_refused(push(door, {**GOOD, "metadata": {"team": "a\x00"}}), 400, "NUL")
        assert_refused(push(door, {**GOOD, "metadata": {"te\x00am": "a"}}), 400, "NUL")
        assert_refused(push(door, {**GOOD, "metadata": {"tags": ["ok", "b\x00"]}}), 400, "NUL")

    @pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
    def test_non_finite_updated_at_is_refused(self, door: Any, raw: bytes) -> None:
        body = json.dumps(GOOD)[:-1].encode() + b', "updated_at": ' + raw + b"}"
        assert_refused(push(door, None, body), 400)

    def test_1e300_is_refused_as_out_of_range(self, door: Any) -> None:
        assert_refused(push(door, {**GOOD, "updated_at": 1e300}), 400, "updated_at")

    def test_milliseconds_are_refused_with_a_message_saying_so(self, door: Any) -> None:
        response = push(door, {**GOOD, "updated_at": time.time() * 1000})
        assert_refused(response, 400, "looks like milliseconds; send seconds")

    def test_far_future_and_ancient_times_are_refused(self, door: Any) -> None:
        assert_refused(push(door, {**GOOD, "updated_at": time.time() + 3 * 86400}), 400, "future")
        assert_refused(push(door, {**GOOD, "updated_at": 100.0}), 400, "1990")

    def test_metadata_is_bounded(self, door: Any) -> None:
        many = {f"k{n}": "v" for n in range(1000)}
        assert_refused(push(door, {**GOOD, "metadata": many}), 400, "metadata")
        big = {"blob": "x" * 200_000}
        assert_refused(push(door, {**GOOD, "metadata": big}), 400, "metadata")
        assert_refused(push(door, {**GOOD, "metadata": {"scope": ["a"]}}), 400, "scope")

    def test_a_sane_document_is_still_accepted(self, door: Any) -> None:
        response = push(door, {**GOOD, "updated_at": time.time() - 60, "metadata": {"team": "core", "n": 3}})
        assert response.status_code == 202, response.text


class TestDelete:
    def test_an_api_delete_deletes_a_document_pushed_with_any_accepted_updated_at(
        self, infra: dict[str, str], services: Any, receiver_factory: Any, worker_factory: Any
    ) -> None:
        settings = make_settings(infra, **DOOR_ENV)
        door = receiver_factory(settings)
        worker = worker_factory(settings)
        now = time.time()
        # The latest future time the push accepts: the delete's own clock is behind it.
        stamps = {"past": now - 86400, "now": now, "ahead": now + 20 * 3600}
        for name, stamp in stamps.items():
            response = push(door, {**GOOD, "id": f"del-{name}", "updated_at": stamp})
            assert response.status_code == 202, response.text
        worker.drain()
        rows = state.get_documents(services.pool, [f"api:del-{n}" for n in stamps])
        assert all(row.deleted_at is None and row.chunk_count > 0 for row in rows.values()) and len(rows) == 3
        for name in stamps:
            response = httpx.delete(f"{door.url}/api/documents/del-{name}", headers=ADMIN)
            assert response.status_code == 202, response.text
        worker.drain()
        rows = state.get_documents(services.pool, [f"api:del-{n}" for n in stamps])
        assert {n: rows[f"api:del-{n}"].deleted_at is not None for n in stamps} == {n: True for n in stamps}


# --- Notion's handshake ---------------------------------------------------------------------


NO_TOKEN = {k: v for k, v in DOOR_ENV.items() if k != "NOTION_WEBHOOK_TOKEN"}


class TestNotionHandshake:
    def test_once_the_token_is_configured_unsigned_handshakes_are_refused(self, door: Any, services: Any) -> None:
        response = httpx.post(f"{door.url}/webhooks/notion", json={"verification_token": "secret_evil"})
        assert is_clean_4xx(response) and response.status_code in (401, 403), response.text
        assert state.kv_get(services.pool, "notion.verification_token") is None

    def test_a_recorded_token_is_cleared_by_the_admin_api_and_recorded_again(self, infra, services, receiver_factory):
        receiver = receiver_factory(make_settings(infra, **NO_TOKEN))
        first = httpx.post(f"{receiver.url}/webhooks/notion", json={"verification_token": "secret_squatter"})
        assert first.status_code == 200
        genuine = httpx.post(f"{receiver.url}/webhooks/notion", json={"verification_token": "secret_genuine"})
        assert genuine.status_code == 409  # still refused while one is recorded
        url = f"{receiver.url}/api/admin/verification-token/notion"
        assert httpx.delete(url).status_code in (401, 403)  # admins only
        cleared = httpx.delete(url, headers=ADMIN)
        assert cleared.status_code == 200 and cleared.json()["cleared"] is True, cleared.text
        assert httpx.get(url, headers=ADMIN).status_code == 404
        again = httpx.post(f"{receiver.url}/webhooks/notion", json={"verification_token": "secret_genuine"})
        assert again.status_code == 200
        assert httpx.get(url, headers=ADMIN).json()["verification_token"] == "secret_genuine"
        assert httpx.delete(url, headers=ADMIN).status_code == 200
        assert httpx.delete(url, headers=ADMIN).json()["cleared"] is False  # nothing left: says so

    def test_the_cli_clears_it_too(self, infra, services):
        state.kv_set(services.pool, "notion.verification_token", "secret_squatter")
        env = {**BASE_ENV, **infra}
        done = cli(env, "notion-token", "clear")
        assert done.returncode == 0, done.stderr
        assert "cleared" in done.stdout and "secret_squatter" not in done.stdout
        assert state.kv_get(services.pool, "notion.verification_token") is None
        again = cli(env, "notion-token", "clear")
        assert again.returncode == 0 and "no notion verification token was recorded" in again.stdout
