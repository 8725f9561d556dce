"""How failed refs go round again (workers/actors.py RetryPolicy) and how HTTP failures are
named (core/http.py), on real Redis and a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from core import queue
from core.documents import Ref
from core.errors import (
    DocumentInvalid,
    RateLimited,
    SourceUnavailable,
    TransientSourceError,
    wait_of,
)
from core.http import SourceHTTP
from workers.actors import RetryPolicy
from workers.sync import Failure, Outcome


def outcome(*failures: tuple[Ref, Exception]) -> Outcome:
    out = Outcome()
    for ref, error in failures:
        out.failures[ref.document_id] = Failure(error, ref, "fetch")
    return out


def delayed(broker: Any) -> list[dict[str, Any]]:
    """Messages waiting in the delay queues: (refs, options)."""
    import json

    found = []
    for name in queue.QUEUES:
        for raw in broker.client.hvals(f"{queue.NAMESPACE}:{name}.DQ.msgs"):
            message = json.loads(raw)
            found.append({"refs": message["args"][0], "options": message["options"]})
    return found


@pytest.fixture
def policy(services: Any) -> RetryPolicy:
    return RetryPolicy(services.broker, max_retries=2, max_wait=3600)


def test_each_failed_ref_goes_its_own_way(services, policy) -> None:
    gone_for_good = Ref("jira", "1", op="sync")
    failing = Ref("jira", "2")
    waiting = Ref("jira", "3")
    fates = policy.handle(outcome(
        (gone_for_good, DocumentInvalid("id has NUL")),
        (failing, TransientSourceError("jira", "500 Internal Server Error", 500)),
        (waiting, SourceUnavailable("jira", "503 (outage)", 503, retry_after=30)),
    ), None)
    assert fates == {"buried": 1, "retried": 1, "waiting": 1}
    [letter] = queue.dead_letters(services.broker)
    assert [r["id"] for r in letter["refs"]] == ["1"] and "permanent" in letter["error"][0]
    again = {m["refs"][0]["id"]: m["options"] for m in delayed(services.broker)}
    assert again["2"]["retries"] == 1 and "500" in again["2"]["last_error"]
    assert again["3"].get("retries", 0) == 0 and again["3"]["waits"] == 1  # a wait is not a retry


def test_waits_keep_the_real_last_error_and_end_after_max_wait(services) -> None:
    policy = RetryPolicy(services.broker, max_retries=8, max_wait=60)
    ref = Ref("jira", "9")
    from dramatiq import Message

    started = time.time() - 120  # waiting for two minutes already
    message = Message(queue_name="sync", actor_name="sync_refs", args=([ref.to_dict()],), kwargs={},
                      options={"retries": 3, "waiting_since": started, "last_error": "jira: GET /x failed: 500"})
    fates = policy.handle(outcome((ref, RateLimited("jira", "GET /x rate limited (429)", 5.0))), message)
    assert fates["buried"] == 1
    [letter] = queue.dead_letters(services.broker)
    assert letter["retries"] == 3  # the waits did not add to it
    assert "gave up waiting" in letter["error"][0] and "failed: 500" in letter["error"][0]


def test_a_delete_waits_for_an_outage_of_any_length(services) -> None:
    policy = RetryPolicy(services.broker, max_retries=8, max_wait=60)
    from dramatiq import Message

    delete = Ref("notion", "page", op="delete")
    message = Message(queue_name="sync", actor_name="sync_refs", args=([delete.to_dict()],), kwargs={},
                      options={"waiting_since": time.time() - 90 * 86400})  # three months
    fates = policy.handle(outcome((delete, SourceUnavailable("notion", "503 (outage)", 503))), message)
    assert fates == {"buried": 0, "retried": 0, "waiting": 1}
    assert queue.dead_letters(services.broker) == []
    [again] = delayed(services.broker)
    assert again["refs"][0]["op"] == "delete"


class _Answers(BaseHTTPRequestHandler):
    status = 503
    headers_out: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.status)
        for key, value in self.headers_out.items():
            self.send_header(key, value)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def answering() -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def get(server: Any, status: int, headers: dict[str, str]) -> Exception:
    _Answers.status, _Answers.headers_out = status, headers

    async def run() -> Exception:
        async with httpx.AsyncClient(timeout=5) as client:
            http = SourceHTTP("jira", client, base_url=f"http://127.0.0.1:{server.server_port}",
                              attempts=2, max_wait=0.5)
            try:
                await http.get("/rest/api/3/issue/1")
            except Exception as exc:  # noqa: BLE001
                return exc
        raise AssertionError("no error")

    return asyncio.run(run())


def test_503_with_retry_after_is_an_outage_not_a_rate_limit(answering) -> None:
    error = get(answering, 503, {"Retry-After": "120"})
    assert isinstance(error, SourceUnavailable) and not isinstance(error, RateLimited)
    assert "outage" in str(error) and "rate limited" not in str(error)
    assert error.retry_after == 120 and wait_of(error) is error


def test_429_is_a_rate_limit(answering) -> None:
    error = get(answering, 429, {"Retry-After": "90"})
    assert isinstance(error, RateLimited) and error.retry_after == 90


def test_500_is_a_real_failure(answering) -> None:
    error = get(answering, 500, {})
    assert isinstance(error, TransientSourceError) and wait_of(error) is None


def test_nobody_answering_is_an_outage() -> None:
    async def run() -> Exception:
        async with httpx.AsyncClient(timeout=2) as client:
            http = SourceHTTP("jira", client, base_url="http://127.0.0.1:9", attempts=1)
            try:
                await http.get("/x")
            except Exception as exc:  # noqa: BLE001
                return exc
        raise AssertionError("no error")

    assert isinstance(asyncio.run(run()), SourceUnavailable)
