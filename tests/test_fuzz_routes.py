"""Property-based fuzzing of the door (issue 9): generated bodies never get a 5xx.

Two layers:

- the pure parsers (each source's ``parse`` and Notion's ``handshake``) and the safe JSON
  loader, called directly with thousands of generated inputs: they return a result or raise
  MalformedWebhook / InvalidWebhook / BadJSON, nothing else;
- a real receiver over HTTP: every webhook route (signed with the test secrets, so the
  parsers are reached, and unsigned), every admin route, and the push, delete, search and
  status routes: no 5xx, and a 2xx from the push API only for a body that parses into a
  storable Document, whose id the delete route then accepts.

Bounded for the normal suite (``max_examples`` per test, ``deadline=None``: the machine is
loaded, and no test asserts a duration). ``FUZZ_SCALE=20`` (or any factor) multiplies every
bound for a long run by hand or from ``make chaos``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from core import jsonsafe
from core.errors import MalformedWebhook, NotConfigured
from core.settings import SOURCE_NAMES, Settings
from core.sources import build_source
from core.sources.webhooks import check_result
from receiver.routes import EARLIEST_UPDATED_AT, FUTURE_TOLERANCE_S, parse_document
from tests.conftest import BASE_ENV, ReceiverHandle, make_settings
from tests.door import ADMIN, DOOR_ENV, PUSHING, signed_headers

#: The receiver's threads (pool reconnects, uvicorn) use ``random`` while hypothesis draws; it
#: warns about that, though no strategy here does.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))


def bounded(examples: int) -> Any:
    return settings(max_examples=examples * SCALE, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- strategies -----------------------------------------------------------------------------

HOSTILE_TEXT = st.sampled_from(["", "\x00", "a\x00b", "\ud800", "\udfff x", "💥", "x" * 3000, " ", "null",
                                "2025-13-45T99:00:00Z", "2025-06-01T12:00:00Z\x00", "1e400", "-1",
                                "refs/heads/main", "api:", "..", "a/../b"])
HOSTILE_NUMBERS = st.sampled_from([0, -1, 2**63, -(2**64), 10**30, 1e300, -1e300, 1.5, 1e-300,
                                   1700000000, 1700000000000, 1700000000000000])
SCALARS = (st.none() | st.booleans() | st.integers() | HOSTILE_NUMBERS
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20) | HOSTILE_TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8) | HOSTILE_TEXT, inner, max_size=4), max_leaves=12)
#: Bodies that are not plain JSON: deep nesting, numbers JSON or Postgres cannot hold, bytes.
RAW = st.one_of(
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(60, 200).map(lambda n: b"[" * n),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" * 5000, b'{"a": NaN}',
                     b'{"id": "\\u0000"}', b'["\\ud800"]', b"", b"null", b"\xff\xfe", b"{", b"payload=%7B"]),
    st.binary(max_size=300),
)


def encoded(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode("utf-8", "surrogatepass")


#: One valid payload per source with every field its parser reads; mutations replace fields.
TEMPLATES: dict[str, list[tuple[dict[str, str], dict[str, Any]]]] = {
    "jira": [({"X-Atlassian-Webhook-Identifier": "d-1"},
              {"webhookEvent": "jira:issue_updated", "timestamp": 1700000000000,
               "issue": {"id": "10001", "key": "P-1", "fields": {"project": {"key": "P"}}},
               "project": {"key": "P"}})],
    "github": [({"X-GitHub-Event": event, "X-GitHub-Delivery": "g-1"},
                {"action": "opened", "hook_id": 1, "ref": "refs/heads/main", "deleted": False,
                 "repository": {"full_name": "o/r", "default_branch": "main"},
                 "issue": {"number": 1, "updated_at": "2024-01-01T00:00:00Z", "pull_request": None},
                 "comment": {"updated_at": "2024-01-01T00:00:00Z"},
                 "pull_request": {"number": 2, "updated_at": "2024-01-01T00:00:00Z"},
                 "commits": [{"id": "abc123", "timestamp": "2024-01-01T00:00:00+02:00"}],
                 "changes": {"new_issue": {"number": 3, "updated_at": "2024-01-02T00:00:00Z"},
                             "new_repository": {"full_name": "o/s"}}})
               for event in ("issues", "issue_comment", "pull_request", "push", "repository", "ping")],
    "notion": [({}, {"id": "e-1", "type": "page.content_updated", "timestamp": "2025-06-01T12:00:00.000Z",
                     "entity": {"id": "p-1", "type": "page"}})],
    "slack": [({}, {"type": "event_callback", "event_id": "Ev1", "event_time": 1700000000,
                    "event": {"type": "message", "channel": "C1", "channel_type": "channel", "subtype": None,
                              "ts": "1700000000.000100", "event_ts": "1700000000.000200",
                              "thread_ts": "1700000000.000100", "deleted_ts": "1700000000.000100",
                              "message": {"ts": "1700000000.000100", "thread_ts": "1700000000.000100"},
                              "previous_message": {"thread_ts": "1700000000.000050", "reply_count": 1}}})],
    "fireflies": [({}, {"event": "meeting.transcribed", "meeting_id": "m-1", "timestamp": 1700000000000}),
                  ({}, {"eventType": "Transcription completed", "meetingId": "m-1"})],
}
#: Values the parsers branch on, so mutations reach every branch.
EVENT_VALUES = st.sampled_from([
    "jira:issue_created", "jira:issue_updated", "jira:issue_deleted", "comment_deleted", "project_deleted",
    "project_archived", "opened", "deleted", "transferred", "archived", "event_callback", "url_verification",
    "message", "channel_archive", "channel_deleted", "message_changed", "message_deleted", "thread_broadcast",
    "bot_message", "page.deleted", "page.created", "database.created", "page", "database",
    "meeting.transcribed", "Transcription completed", "im",
])


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, sub in value.items():
            yield (*prefix, key)
            yield from _paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for n, sub in enumerate(value):
            yield (*prefix, n)
            yield from _paths(sub, (*prefix, n))


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value.get(head), rest, new)}
    if isinstance(value, list) and isinstance(head, int) and head < len(value):
        return [*value[:head], _replace(value[head], rest, new), *value[head + 1:]]
    return value


@st.composite
def mutated(draw: Any, source: str) -> tuple[dict[str, str], bytes]:
    """A source's payload with some fields replaced by wrong types, hostile values or the
    values its parser branches on; or now and then a body that is not a payload at all."""
    headers, payload = draw(st.sampled_from(TEMPLATES[source]))
    if draw(st.integers(0, 9)) == 0:
        return headers, draw(RAW)
    paths = list(_paths(payload))
    for path in draw(st.lists(st.sampled_from(paths), max_size=4)):
        payload = _replace(payload, path, draw(JSON | EVENT_VALUES))
    if draw(st.booleans()):
        payload = draw(st.dictionaries(st.text(max_size=8), JSON, max_size=3)).copy() | payload
    return headers, encoded(payload)


# --- layer 1: pure parsers and the loader ---------------------------------------------------

@functools.cache
def _source(name: str, **env: str) -> Any:
    """One connector per source for the whole module (an AsyncClient costs an SSL context)."""
    settings = Settings.from_environ({**BASE_ENV, **DOOR_ENV, **env, "DATABASE_URL": "postgresql://unused",
                                      "REDIS_URL": "redis://unused"})
    return build_source(settings.source(name), httpx.AsyncClient())


@pytest.mark.parametrize("name", PUSHING)
@bounded(400)
@given(data=st.data())
def test_parsers_only_ever_refuse_with_malformed_webhook(name: str, data: Any) -> None:
    source = _source(name)
    headers, body = data.draw(mutated(name))
    try:
        result = check_result(source.parse(headers, body), name)
    except MalformedWebhook as exc:
        assert str(exc)
        return
    for ref in result.refs:
        assert ref.id and jsonsafe.storable(ref.id) is None and jsonsafe.storable(ref.scope) is None
        assert ref.event_at is None or math.isfinite(ref.event_at)


@bounded(400)
@given(body=RAW | JSON.map(encoded) | st.fixed_dictionaries({"verification_token": JSON}).map(encoded))
def test_the_notion_handshake_never_raises_on_an_unsigned_body(body: bytes) -> None:
    unset = _source("notion", NOTION_WEBHOOK_TOKEN="")
    try:
        token = unset.handshake({}, body)  # type: ignore[attr-defined]
    except MalformedWebhook:
        return
    assert token is None or (isinstance(token, str) and jsonsafe.storable(token) is None)
    with pytest.raises(NotConfigured) if token else contextlib.nullcontext():
        _source("notion").handshake({}, body)


@bounded(600)
@given(raw=RAW | JSON.map(encoded))
def test_the_loader_returns_storable_json_or_refuses(raw: bytes) -> None:
    try:
        value = jsonsafe.loads(raw)
    except jsonsafe.BadJSON as exc:
        assert str(exc)
        return
    assert jsonsafe.depth(json.dumps(value).encode()) <= jsonsafe.MAX_DEPTH
    json.dumps(value, allow_nan=False)  # no NaN or infinity survived
    assert "\\u0000" not in json.dumps(value)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogate survived


# --- layer 2: a real receiver over HTTP -----------------------------------------------------


@pytest.fixture(scope="module")
def door(infra: dict[str, str]) -> Iterator[ReceiverHandle]:
    handle = ReceiverHandle(make_settings(infra, **DOOR_ENV))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def open_door(infra: dict[str, str]) -> Iterator[ReceiverHandle]:
    """A receiver whose Notion token is not configured yet: the handshake is live."""
    handle = ReceiverHandle(make_settings(infra, **{**DOOR_ENV, "NOTION_WEBHOOK_TOKEN": ""}))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as c:
        yield c


def no_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, f"{response.request.method} {response.request.url}: " \
                                       f"{response.status_code} {response.text[:300]}"
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        assert response.json()["error"], response.text


@pytest.mark.parametrize("name", PUSHING)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@bounded(100)
@given(data=st.data())
def test_webhook_routes_never_answer_5xx(door: ReceiverHandle, open_door: ReceiverHandle, client: httpx.Client,
                                         name: str, signed: bool, data: Any) -> None:
    headers, body = data.draw(mutated(name))
    target = door if signed or name != "notion" else data.draw(st.sampled_from([door, open_door]))
    if signed:
        headers = signed_headers(name, body, **headers)
    response = client.post(f"{target.url}/webhooks/{name}", content=body, headers=headers)
    event(f"HTTP {response.status_code}")
    no_5xx(response)
    if not signed and name != "notion":
        assert response.status_code in (400, 401, 403), response.text  # nothing unsigned is accepted


SEGMENT = (st.text(max_size=12) | HOSTILE_TEXT | st.sampled_from(list(SOURCE_NAMES))).map(
    lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="") or "x")
QUERY = st.dictionaries(st.sampled_from(["source", "kind", "q", "top_k", "limit"]),
                        st.text(max_size=12) | HOSTILE_TEXT | st.sampled_from(list(SOURCE_NAMES)), max_size=3)


@st.composite
def admin_requests(draw: Any) -> tuple[str, str, bytes | None]:
    source = draw(SEGMENT | st.sampled_from(list(SOURCE_NAMES)))
    body = draw(RAW | JSON.map(encoded) | st.fixed_dictionaries(
        {}, optional={"keys": JSON, "purge": JSON, "scopes": JSON, "days": JSON, "message_ids": JSON}).map(encoded))
    method, path = draw(st.sampled_from([
        ("GET", "/api/scopes"), ("POST", f"/api/scopes/{source}/{draw(SEGMENT)}"),
        ("POST", f"/api/scopes/{source}/deactivate"), ("POST", f"/api/backfill/{source}"),
        ("GET", "/api/runs"), ("GET", f"/api/runs/{draw(SEGMENT | st.integers().map(str))}"),
        ("GET", "/api/dead-letters"), ("POST", "/api/dead-letters/replay"),
        ("GET", f"/api/admin/verification-token/{source}"),
        ("DELETE", f"/api/admin/verification-token/{source}"),
        ("GET", "/api/search"), ("GET", "/api/status"), ("GET", "/metrics"), ("GET", "/healthz"),
        ("GET", "/readyz"), ("DELETE", f"/api/documents/{draw(SEGMENT)}"),
    ]))
    query = draw(QUERY)
    return method, f"{path}?{urlencode(query, errors='surrogatepass')}" if query else path, body if method == "POST" else None


@bounded(300)
@given(request=admin_requests(), with_key=st.booleans())
def test_admin_search_and_status_routes_never_answer_5xx(door: ReceiverHandle, client: httpx.Client,
                                                         request: tuple[str, str, bytes | None],
                                                         with_key: bool) -> None:
    method, path, body = request
    response = client.request(method, f"{door.url}{path}", content=body, headers=ADMIN if with_key else {})
    event(f"HTTP {response.status_code}")
    no_5xx(response)


PUSH_FIELDS = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=20) | HOSTILE_TEXT | JSON, "title": st.text(max_size=20) | HOSTILE_TEXT | JSON,
    "text": st.text(max_size=40) | HOSTILE_TEXT | JSON, "url": st.text(max_size=10) | HOSTILE_TEXT | JSON,
    "author": st.text(max_size=10) | HOSTILE_TEXT | JSON,
    "metadata": st.dictionaries(st.text(max_size=8) | HOSTILE_TEXT, JSON, max_size=4) | JSON,
    "updated_at": HOSTILE_NUMBERS | st.floats() | st.integers() | JSON
    | st.floats(0, 3e9) | st.just(time.time()).map(lambda now: now * 1000),
})


PUSH_TEMPLATE = {"id": "doc/1", "title": "A title", "text": "Some text", "url": "https://example.com/1",
                 "author": "ada@example.com", "updated_at": 1700000000.5,
                 "metadata": {"scope": "team-a", "tags": ["x", "y"], "n": 3, "ok": True, "ratio": 0.5}}
PUSH_VALUES = (JSON | HOSTILE_TEXT | HOSTILE_NUMBERS | st.text(max_size=30) | st.floats(0, 3e9)
               | st.just(time.time()).map(lambda now: now * 1000) | st.sampled_from(["api:x", " x ", "a/./b"]))


@st.composite
def pushed(draw: Any) -> bytes:
    """A good document with a few fields (or metadata entries) replaced, or anything at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(PUSH_FIELDS.map(lambda d: json.dumps(d, allow_nan=True).encode("utf-8", "surrogatepass")) | RAW)
    body: Any = PUSH_TEMPLATE
    for path in draw(st.lists(st.sampled_from(list(_paths(PUSH_TEMPLATE))), max_size=3)):
        body = _replace(body, path, draw(PUSH_VALUES))
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


@bounded(300)
@given(body=pushed())
def test_the_push_api_accepts_only_storable_documents(door: ReceiverHandle, client: httpx.Client,
                                                      body: bytes) -> None:
    response = client.post(f"{door.url}/api/documents", content=body, headers=ADMIN)
    event(f"HTTP {response.status_code}")
    no_5xx(response)
    if response.status_code >= 300:
        return
    now = time.time()
    doc = parse_document(jsonsafe.loads(body), now)  # the same body parses into a Document ...
    assert not isinstance(doc, str), doc
    strings = [doc.id, doc.title, doc.text, doc.url, doc.author, doc.scope, *doc.metadata]
    strings += [v for value in doc.metadata.values() for v in (value if isinstance(value, list) else [value])
                if isinstance(v, str)]
    assert all(jsonsafe.storable(s) is None for s in strings)  # ... whose strings Postgres can hold
    assert math.isfinite(doc.updated_at) and EARLIEST_UPDATED_AT <= doc.updated_at <= now + FUTURE_TOLERANCE_S
    # and whose id the delete route accepts.
    deleted = client.delete(f"{door.url}/api/documents/{quote(doc.id, safe='')}", headers=ADMIN)
    assert deleted.status_code == 202, f"{doc.id!r}: {deleted.status_code} {deleted.text}"
    assert deleted.json()["document_id"] == response.json()["document_id"]
