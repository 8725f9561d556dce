"""How a process reports an outage: one line when it starts and one when it ends, and the
heartbeat's info (``{"outage": "redis unreachable since …"}``) while it lasts. Against a real
redis-server of the test's own, killed with SIGKILL and started again."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from core import state
from core.embedded import EmbeddedRedis
from core.heartbeat import Heartbeat, Outages, dependency_of


def test_dependency_of_names_the_server_behind_an_error() -> None:
    assert dependency_of(psycopg.OperationalError("terminating connection due to administrator command")) == "postgres"
    assert dependency_of(redis.ConnectionError("Connection refused")) == "redis"
    try:
        try:
            raise redis.TimeoutError("timed out")
        except redis.TimeoutError as exc:
            raise RuntimeError("enqueue failed") from exc
    except RuntimeError as wrapped:
        assert dependency_of(wrapped) == "redis"
    assert dependency_of(ValueError("a bug, not an outage")) is None
    assert dependency_of(psycopg.errors.UndefinedTable("a bad query, not an outage")) is None


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    outages = Outages("test")
    caplog.set_level(logging.INFO, logger="vector_sync.heartbeat")
    for _ in range(20):  # twenty failed attempts during one outage
        outages.report(redis.ConnectionError("refused"))
    info = outages.info()
    assert info["outage"].startswith("redis unreachable since 20") and info["outage"].endswith("Z")
    assert outages.up("redis") and not outages.up("redis")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["redis unreachable; retrying with backoff", "redis reachable again after 0s"]
    after = outages.info()
    assert "outage" not in after and after["last_outage"].startswith("redis unreachable from ")


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    folder = Path(tempfile.mkdtemp(prefix="vs-outage-redis-"))
    server = EmbeddedRedis(folder, durable=False)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def info_of(services: Any, name: str) -> dict[str, Any]:
    with services.pool.connection() as conn:
        row = conn.execute("SELECT info FROM heartbeats WHERE process = %s", (name,)).fetchone()
    assert row is not None
    return dict(row[0])


def test_the_heartbeat_reports_a_redis_outage_while_it_lasts(services: Any, own_redis: EmbeddedRedis) -> None:
    client = redis.Redis(unix_socket_path=str(own_redis.socket), socket_timeout=2, socket_connect_timeout=2)
    heartbeat = Heartbeat(services.pool, "worker", 3600, info=lambda: {"threads": 4}, redis=client)
    try:
        assert heartbeat.beat()
        assert info_of(services, heartbeat.name) == {"threads": 4}
        assert own_redis.process is not None
        os.kill(own_redis.process.pid, signal.SIGKILL)
        own_redis.process.wait(10)
        assert heartbeat.beat()  # Postgres still takes the row: the beat says Redis is out
        down = info_of(services, heartbeat.name)
        assert down["threads"] == 4 and down["outage"].startswith("redis unreachable since ")
        assert not own_redis.alive()
        own_redis.restart()
        assert heartbeat.beat()
        back = info_of(services, heartbeat.name)
        assert "outage" not in back and back["last_outage"].startswith("redis unreachable from ")
    finally:
        heartbeat.stop()
        client.close()


def test_a_failed_beat_is_an_outage_not_a_crash(services: Any, infra: dict[str, str]) -> None:
    """A pool whose server is gone: the beat fails, reports Postgres unreachable, returns."""
    pool = state.open_pool(infra["DATABASE_URL"], max_size=1)
    pool.close()  # as good as a server that went away, for the code that uses it
    heartbeat = Heartbeat(pool, "web", 3600)
    assert heartbeat.beat() is False
    assert "postgres unreachable since" in heartbeat.outages.info()["outage"]


def test_dramatiqs_reconnect_lines_become_one_outage_report(caplog: pytest.LogCaptureFixture) -> None:
    """Dramatiq's consumers log a line per queue every 3 s while Redis is down; the worker turns
    them into its one outage line (and the heartbeat's outage)."""
    from workers.runtime import ConsumerOutages, consumer_loggers

    outages = Outages()
    consumer_log = logging.getLogger("dramatiq.worker.ConsumerThread(sync)")
    assert consumer_log in consumer_loggers()
    quiet = ConsumerOutages(outages)
    # A worker started earlier in this test process left its own filter (one per process is the
    # rule, start_worker replaces it): set it aside, or it would take these lines first.
    earlier = [f for f in consumer_log.filters if isinstance(f, ConsumerOutages)]
    for old in earlier:
        consumer_log.removeFilter(old)
    consumer_log.addFilter(quiet)
    caplog.set_level(logging.INFO)
    try:
        for _ in range(8):
            consumer_log.critical("Consumer encountered a connection error: %s", redis.ConnectionError("refused"))
            consumer_log.info("Restarting consumer in %0.2f seconds.", 3.0)
            consumer_log.warning("Failed to post_process_message(%s) due to a connection error: %s", "m", "refused")
        consumer_log.warning("something else")
    finally:
        consumer_log.removeFilter(quiet)
        for old in earlier:
            consumer_log.addFilter(old)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["redis unreachable; retrying with backoff", "something else"]
    assert "redis unreachable since" in outages.info()["outage"]


@pytest.mark.parametrize("kind", ["reconciler", "worker"])
def test_a_process_started_during_an_outage_waits_for_the_database(
    kind: str, infra: dict[str, str], procs: Any
) -> None:
    """Started while Postgres cannot be reached, a worker or reconciler waits (one line) instead
    of exiting, and still stops cleanly on SIGTERM."""
    from tests.conftest import free_port
    from tests.faults.conftest import wait_until

    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    proc = procs(kind, {**infra, "DATABASE_URL": nowhere, "LOG_LEVEL": "INFO"})
    wait_until(lambda: "postgres unreachable" in proc.output() or not proc.alive(), 90, "the outage line")
    assert proc.alive(), proc.output()[-2000:]
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.wait(30) == 0, proc.output()[-2000:]
    assert proc.output().count("postgres unreachable") == 1


def test_the_pools_reconnect_warnings_become_one_outage_report(caplog: pytest.LogCaptureFixture) -> None:
    from core.heartbeat import PoolOutages

    outages = Outages()
    pool_log = logging.getLogger("psycopg.pool")
    quiet = PoolOutages(outages)
    pool_log.addFilter(quiet)
    caplog.set_level(logging.INFO)
    try:
        for _ in range(10):
            pool_log.warning("error connecting in %r: %s", "vector-sync", "connection refused")
        pool_log.warning("discarding broken connection: %s", "<conn>")
        pool_log.warning("rolling back returned connection: %s", "<conn>")
    finally:
        pool_log.removeFilter(quiet)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["postgres unreachable; retrying with backoff", "rolling back returned connection: <conn>"]
