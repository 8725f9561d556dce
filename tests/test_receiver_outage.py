"""The receiver during a Postgres or Redis outage: 503 with Retry-After, never 500, and the
sender's retry is accepted once the server is back (issue 10); webhooks need only Redis (issue 12).

Each test runs its own server (an EmbeddedPostgres or EmbeddedRedis in a temporary folder) and
stops it for real; the session's shared servers, which other tests use, are left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from core import queue, state
from core.embedded import EmbeddedPostgres, EmbeddedRedis
from core.runtime import open_services
from tests.conftest import ReceiverHandle, make_settings, wait_for
from tests.door import ADMIN, DOOR_ENV, post_webhook


def slack_event(event_id: str) -> bytes:
    return json.dumps({"type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
                       "event": {"type": "message", "channel": "C1", "ts": "1700000000.000100",
                                 "text": "hello"}}).encode()


def assert_unavailable(response: httpx.Response, what: str) -> None:
    assert response.status_code == 503, f"{response.status_code} {response.text[:300]}"
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"] == f"{what} unavailable; retry later"


def retried_until_accepted(send: Any, timeout: float = 180.0) -> httpx.Response:
    """What a sender does: retry while answered 503 (any other answer ends the retries)."""
    def attempt() -> httpx.Response | None:
        response = send()
        if response.status_code == 503:
            assert "Retry-After" in response.headers
            return None
        return response
    result: httpx.Response = wait_for(attempt, timeout=timeout, interval=1.0)
    return result


@pytest.fixture
def own_postgres() -> Iterator[tuple[EmbeddedPostgres, str]]:
    home = Path(tempfile.mkdtemp(prefix="vs-outage-pg-"))
    home.chmod(0o755)  # pgserver runs postgres as another OS user when we are root
    pg = EmbeddedPostgres(home / "pg")
    url = pg.start()
    pool = state.open_pool(url, max_size=1)
    state.migrate(pool)
    pool.close()
    try:
        yield pg, url
    finally:
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def own_redis() -> Iterator[tuple[EmbeddedRedis, str]]:
    folder = Path(tempfile.mkdtemp(prefix="vsr-", dir="/tmp"))  # a unix socket path must be short
    server = EmbeddedRedis(folder, durable=True)
    url = server.start()
    try:
        yield server, url
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_postgres_down_is_a_503_for_what_needs_it_and_webhooks_still_land_once(infra, own_postgres) -> None:
    pg, url = own_postgres
    settings = make_settings(infra, **{**DOOR_ENV, "DATABASE_URL": url})
    receiver = ReceiverHandle(settings)
    services = open_services(settings)
    try:
        event_id = f"EvPg{os.getpid()}{time.monotonic_ns()}"
        before = post_webhook(receiver.url, "slack", slack_event(event_id + "a"))
        assert before.status_code == 200, before.text
        pg.stop()
        # A webhook needs no Postgres (issue 12): the delivery is claimed and enqueued in Redis
        # and its counter waits in memory. (Was a 500, then a 503 while the claim lived in Postgres.)
        depth = queue.queue_depth(services.broker)
        during = post_webhook(receiver.url, "slack", slack_event(event_id))
        assert during.status_code == 200 and during.json()["enqueued"] == 1, during.text
        assert queue.queue_depth(services.broker) == depth + 1
        assert_unavailable(httpx.get(f"{receiver.url}/api/runs", headers=ADMIN, timeout=60), "database")
        status = httpx.get(f"{receiver.url}/api/status", timeout=60)  # may report the outage instead
        assert status.status_code in (200, 503), status.text[:300]
        assert_unavailable(httpx.delete(f"{receiver.url}/api/documents/x", headers=ADMIN, timeout=60), "database")
        assert pg.start() == url
        # Claimed exactly once: the sender's retry is a duplicate, and nothing more is enqueued.
        again = retried_until_accepted(lambda: post_webhook(receiver.url, "slack", slack_event(event_id)))
        assert again.json()["status"] == "duplicate", again.text
        assert queue.queue_depth(services.broker) == depth + 1

        # The counters kept during the outage reach source_stats once Postgres is back.
        def received() -> int:
            try:
                with psycopg.connect(url, connect_timeout=5) as conn:
                    row = conn.execute("SELECT webhooks_received FROM source_stats WHERE source = 'slack'").fetchone()
            except Exception:
                return 0
            return int(row[0]) if row else 0
        wait_for(lambda: received() == 2, timeout=120, interval=0.5)
    finally:
        receiver.stop()
        services.close()


def test_redis_down_is_a_503_with_retry_after_and_the_retry_is_not_taken_for_a_duplicate(
    infra, services, own_redis
) -> None:
    server, url = own_redis
    settings = make_settings(infra, **{**DOOR_ENV, "REDIS_URL": url})
    receiver = ReceiverHandle(settings)
    try:
        event_id = f"EvRd{os.getpid()}{time.monotonic_ns()}"
        server.stop()
        assert_unavailable(post_webhook(receiver.url, "slack", slack_event(event_id)), "queue")
        pushed = httpx.post(f"{receiver.url}/api/documents", headers=ADMIN, timeout=60,
                            json={"id": "outage", "title": "t", "text": "x"})
        assert_unavailable(pushed, "queue")
        assert_unavailable(httpx.get(f"{receiver.url}/api/dead-letters", headers=ADMIN, timeout=60), "queue")
        assert server.start() == url
        accepted = retried_until_accepted(lambda: post_webhook(receiver.url, "slack", slack_event(event_id)))
        assert accepted.status_code == 200 and accepted.json() == {"status": "accepted", "enqueued": 1, "note": None}
        broker = queue.make_broker(url)
        try:
            assert queue.queue_depth(broker) == 1
        finally:
            broker.client.close()
    finally:
        receiver.stop()
