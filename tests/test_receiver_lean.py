"""The receiver's lean webhook path (issue 12): a delivery's claim and its job go to Redis in one
atomic script call, and the webhook counters reach ``source_stats`` by a periodic flush and at
shutdown instead of a Postgres write per webhook.

Real parts only: the session's Postgres and Redis, the receiver served by uvicorn (in this
process, or as its own process for the SIGTERM test), dramatiq's own consumer to read the job.
Nothing here measures speed (benchmarks/webhook_ack.py does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core import queue
from core.runtime import Services
from tests.conftest import BASE_ENV, ReceiverHandle, free_port, make_settings, wait_for
from tests.door import DOOR_ENV, post_webhook


def slack_event(event_id: str, channel: str = "C1") -> bytes:
    return json.dumps({"type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
                       "event": {"type": "message", "channel": channel, "ts": "1700000000.000100",
                                 "text": "hello"}}).encode()


def new_event_id() -> str:
    return f"Ev{uuid.uuid4().hex[:16].upper()}"


@pytest.fixture(scope="module")
def receiver(infra: dict[str, str]) -> Iterator[ReceiverHandle]:
    handle = ReceiverHandle(make_settings(infra, **DOOR_ENV))
    yield handle
    handle.stop()


def claims(services: Services) -> list[str]:
    return sorted(k.decode() for k in services.broker.client.scan_iter(match=f"{queue.DELIVERY_PREFIX}*"))


def stats_row(services: Services, source: str) -> dict[str, Any] | None:
    with services.pool.connection() as conn:
        cur = conn.execute(
            """SELECT webhooks_received, webhooks_rejected, last_webhook_at, last_rejection,
                      last_rejection_at FROM source_stats WHERE source = %s""", (source,))
        row = cur.fetchone()
        return dict(zip([c.name for c in cur.description], row, strict=True)) if row else None


def test_a_duplicate_delivery_is_enqueued_once_as_dramatiq_enqueues_it(receiver: ReceiverHandle,
                                                                        services: Services) -> None:
    event_id = new_event_id()
    first = post_webhook(receiver.url, "slack", slack_event(event_id))
    assert first.status_code == 200 and first.json() == {"status": "accepted", "enqueued": 1, "note": None}
    again = post_webhook(receiver.url, "slack", slack_event(event_id))
    assert again.status_code == 200, again.text
    assert again.json() == {"status": "duplicate", "delivery_id": event_id}
    assert claims(services) == [queue.delivery_key("slack", event_id)]
    ttl = services.broker.client.ttl(queue.delivery_key("slack", event_id))
    assert queue.DELIVERY_TTL_S - 3600 < ttl <= queue.DELIVERY_TTL_S
    # GitHub's delivery id travels in a header: the same id again is a duplicate too.
    body = json.dumps({"action": "edited", "issue": {"number": 7, "title": "t", "updated_at": "2026-01-01T00:00:00Z"},
                       "repository": {"full_name": "acme/app", "name": "app", "owner": {"login": "acme"}}}).encode()
    guid = str(uuid.uuid4())
    assert post_webhook(receiver.url, "github", body, **{"X-GitHub-Delivery": guid}).json()["status"] == "accepted"
    assert post_webhook(receiver.url, "github", body, **{"X-GitHub-Delivery": guid}).json()["status"] == "duplicate"
    assert queue.queue_depth(services.broker) == 2

    # Dramatiq's own consumer fetches the jobs: the message is what RedisBroker.enqueue writes.
    consumer = services.broker.consume(queue.QUEUE, prefetch=2, timeout=500)
    try:
        fetched: list[Any] = []
        deadline = time.monotonic() + 30
        while len(fetched) < 2 and time.monotonic() < deadline:
            message = next(consumer)
            if message is not None:
                fetched.append(message)
        assert len(fetched) == 2
        slack_job, github_job = fetched
        assert slack_job.actor_name == queue.ACTOR and slack_job.queue_name == queue.QUEUE
        [ref] = slack_job.args[0]
        assert ref["source"] == "slack" and ref["scope"] == "C1"
        assert slack_job.options["webhook_at"] > 0 and slack_job.options["redis_message_id"]
        assert github_job.args[0][0]["source"] == "github"
        for message in fetched:
            consumer.ack(message)
    finally:
        consumer.close()
    assert queue.queue_depth(services.broker) == 0


@pytest.mark.parametrize("broken", ["list", "hash"])
def test_a_failed_enqueue_leaves_no_claim_and_the_senders_retry_is_accepted(
        receiver: ReceiverHandle, services: Services, broken: str) -> None:
    client = services.broker.client
    earlier = new_event_id()
    assert post_webhook(receiver.url, "slack", slack_event(earlier)).json()["status"] == "accepted"
    # Break the queue for real: a key of the wrong type makes Redis refuse the script's write
    # (RPUSH on the list, or HSET on the message hash after the RPUSH went in).
    key = f"{queue.NAMESPACE}:{queue.QUEUE}" if broken == "list" else f"{queue.NAMESPACE}:{queue.QUEUE}.msgs"
    saved = client.dump(key)
    client.delete(key)
    client.set(key, "not a queue")
    event_id = new_event_id()
    try:
        refused = post_webhook(receiver.url, "slack", slack_event(event_id))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "queue unavailable; retry later" and refused.headers["Retry-After"]
        assert queue.delivery_key("slack", event_id) not in claims(services)
    finally:
        client.delete(key)
        client.restore(key, 0, saved)
    # Nothing half-written: the earlier job is still the only one, in the list and the hash.
    assert client.llen(f"{queue.NAMESPACE}:{queue.QUEUE}") == 1
    assert client.hlen(f"{queue.NAMESPACE}:{queue.QUEUE}.msgs") == 1
    retried = post_webhook(receiver.url, "slack", slack_event(event_id))
    assert retried.json() == {"status": "accepted", "enqueued": 1, "note": None}, retried.text
    assert post_webhook(receiver.url, "slack", slack_event(event_id)).json()["status"] == "duplicate"
    assert queue.queue_depth(services.broker) == 2


def test_counters_reach_source_stats_after_the_flush(receiver: ReceiverHandle, services: Services) -> None:
    receiver.flush_counters()  # what earlier tests left in the module's receiver, then a clean row
    with services.pool.connection() as conn:
        conn.execute("DELETE FROM source_stats")
    sent = [new_event_id() for _ in range(3)]
    for event_id in sent:
        assert post_webhook(receiver.url, "slack", slack_event(event_id)).status_code == 200
    assert post_webhook(receiver.url, "slack", slack_event(sent[0])).json()["status"] == "duplicate"
    for _ in range(2):
        assert post_webhook(receiver.url, "slack", slack_event(new_event_id()), signed=False).status_code == 401

    def flushed() -> dict[str, Any] | None:
        row = stats_row(services, "slack")
        return row if row and row["webhooks_received"] == 3 and row["webhooks_rejected"] == 2 else None

    row = wait_for(flushed, timeout=60, interval=0.2)  # the receiver writes them once a second
    assert row["last_webhook_at"] is not None and row["last_rejection_at"] is not None
    assert "signature" in row["last_rejection"].lower()
    # And nothing more is added later: each webhook was counted once (a duplicate not at all).
    receiver.flush_counters()
    again = stats_row(services, "slack")
    assert again is not None and (again["webhooks_received"], again["webhooks_rejected"]) == (3, 2)


def test_kill_term_flushes_the_counters(infra: dict[str, str], services: Services, tmp_path: Any) -> None:
    port = free_port()
    env = {**os.environ, **BASE_ENV, **infra, **DOOR_ENV, "WEBHOOK_COUNTS_INTERVAL": "1h"}
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "receiver.app:main", "--host", "127.0.0.1",
             "--port", str(port), "--no-access-log"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                assert web.poll() is None, log_path.read_text(errors="replace")
                return False

        wait_for(ready, timeout=90, interval=0.2)
        for _ in range(4):
            assert post_webhook(url, "slack", slack_event(new_event_id())).status_code == 200
        assert post_webhook(url, "slack", slack_event(new_event_id()), signed=False).status_code == 401
        # The flush interval is an hour: nothing is written yet.
        assert stats_row(services, "slack") is None
        web.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal (exit -15) as recent versions do.
        assert web.wait(60) in (0, -signal.SIGTERM), log_path.read_text(errors="replace")
        assert "Application shutdown complete" in log_path.read_text(errors="replace")
    finally:
        if web.poll() is None:
            web.kill()
            web.wait(10)
    row = stats_row(services, "slack")
    assert row is not None, log_path.read_text(errors="replace")
    assert (row["webhooks_received"], row["webhooks_rejected"]) == (4, 1)


def test_a_note_quoting_a_lone_surrogate_is_answered_not_a_500(receiver: ReceiverHandle, services: Services) -> None:
    """Found by tests/test_fuzz_routes.py: a signed Slack event whose type is a lone surrogate
    was answered 500 (the reply's note quotes the type, and a lone surrogate cannot be UTF-8)."""
    body = json.dumps({"type": "event_callback", "event_id": new_event_id(),
                       "event": {"type": "\ud800odd", "channel": "C1"}}).encode()
    response = post_webhook(receiver.url, "slack", body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted" and "odd" in response.json()["note"]
