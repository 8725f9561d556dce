"""Fixtures: real Postgres and Redis (embedded unless DATABASE_URL / REDIS_URL name others),
a real Dramatiq worker, a real receiver on loopback, and the sandbox simulators.

Postgres is migrated once per session and truncated per test; Redis is flushed per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn

from core import state
from core.embedded import EmbeddedPostgres, EmbeddedRedis
from core import queue
from core.runtime import Services, open_services
from core.settings import Settings
from sandbox.server import SandboxServer, bound_socket, create_simulators

ADMIN_KEY = "test-admin-key"

#: Test processes shorten the real defaults so status and retries can be watched in seconds.
BASE_ENV = {
    "ADMIN_API_KEY": ADMIN_KEY,
    "EMBEDDING_DIMENSIONS": "256",
    "HEARTBEAT_INTERVAL": "1",
    "HEARTBEAT_TIMEOUT": "5",
    "RECONCILE_TICK": "0.5",
    "WORKER_THREADS": "4",
    "SANDBOX": "off",
    # Tests read the status right after changing state; tests/test_metrics.py covers the cache.
    "STATUS_CACHE_TTL": "0",
    "LOG_LEVEL": "WARNING",
}

#: Request budgets far above what tests send, for tests that are not about budgets (the
#: production defaults space Slack at 50/min and Fireflies at 60/min).
FAST_BUDGETS = {f"{name.upper()}_RATE_LIMIT": "1000/s"
                for name in ("jira", "slack", "github", "notion", "tempo", "fireflies")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_sandbox(name: str, *, seed: int, profile: str = "small") -> Iterator[SandboxServer]:
    """One simulator on loopback with its own rate limit off (for tests not about budgets)."""
    sims = create_simulators([name], profile=profile, seed=seed)
    sims[name].knobs.rate_limit = 0
    server = SandboxServer(sims).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def infra() -> Iterator[dict[str, str]]:
    """DATABASE_URL and REDIS_URL of real servers for the whole session."""
    # Our own folder, not pytest's: pytest prunes old basetemps (which a concurrent session may
    # still use) and makes them 0700, while pgserver runs postgres as another OS user when root.
    home = Path(tempfile.mkdtemp(prefix="vector-sync-test-"))
    home.chmod(0o755)
    started: list[Any] = []
    urls = {"DATABASE_URL": os.environ.get("DATABASE_URL", ""), "REDIS_URL": os.environ.get("REDIS_URL", "")}
    if not urls["DATABASE_URL"]:
        pg = EmbeddedPostgres(home / "pg")
        urls["DATABASE_URL"] = pg.start()
        started.append(pg)
    if not urls["REDIS_URL"]:
        rd = EmbeddedRedis(Path(f"/tmp/vs-redis-{os.getpid()}"), durable=False)
        urls["REDIS_URL"] = rd.start()
        started.append(rd)
    pool = state.open_pool(urls["DATABASE_URL"], max_size=1)
    state.migrate(pool)
    pool.close()
    yield urls
    for server in reversed(started):
        server.stop()
    shutil.rmtree(home, ignore_errors=True)


def make_settings(infra: dict[str, str], **env: str) -> Settings:
    return Settings.from_environ({**BASE_ENV, **infra, **env})


@pytest.fixture
def settings(infra: dict[str, str]) -> Settings:
    return make_settings(infra)


TABLES = ("scopes", "documents", "runs", "run_items", "deliveries", "heartbeats", "source_stats", "kv",
          "source_facts", "api_keys")


def reset_state(svc: Services) -> None:
    """Empty every table and the index, and flush Redis.

    A previous test's deferred HNSW index may be rebuilding (``CREATE INDEX CONCURRENTLY`` from
    an index's watcher thread, core/index/pgvector.py) while this truncates: the build waits for
    this transaction, this waits for the build's table lock, and Postgres ends the deadlock by
    failing one of the two. Either way, truncating again gets through (a failed build leaves an
    INVALID index, which the next watcher rebuilds)."""
    for attempt in range(5):
        try:
            with svc.pool.connection() as conn:
                conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
                for (table,) in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'vectors_%%'"
                ).fetchall():
                    conn.execute(f"TRUNCATE {table}")
            break
        except psycopg.errors.DeadlockDetected:
            if attempt == 4:
                raise
    svc.broker.client.flushall()


def reconcile_tick(settings: Settings, services: Services, name: str = "test-reconciler",
                   **source_options: Any) -> int:
    """One reconciler tick with its own sources (``source_options``: SourceSet's, e.g. max_wait)."""
    from core.runtime import SourceSet
    from reconciler.reconcile import Reconciler

    async def go() -> int:
        sources = SourceSet(settings, services.pool, **source_options)
        try:
            return await Reconciler(settings, services, sources, name).tick()
        finally:
            await sources.aclose()

    return asyncio.run(go())


def run_backfill(settings: Settings, services: Services, run_id: int, progress: Any = None) -> dict[str, Any]:
    """Run backfill ``run_id`` to its end with its own sources; its counters."""
    from core.runtime import SourceSet
    from reconciler.backfill import Backfill, owner_name

    async def go() -> dict[str, Any]:
        sources = SourceSet(settings, services.pool)
        try:
            return await Backfill(services, sources, run_id, owner_name(), progress).run()
        finally:
            await sources.aclose()

    return asyncio.run(go())


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    svc = open_services(settings)
    reset_state(svc)
    yield svc
    svc.close()


class WorkerHandle:
    """A real Dramatiq worker consuming the sync queue in this process."""

    def __init__(self, settings: Settings) -> None:
        from workers.runtime import start_worker

        self.services = open_services(settings)
        self.worker, self.runtime, self.heartbeat = start_worker(settings, self.services)
        self.stopped = False

    @property
    def pipeline(self) -> Any:
        return self.runtime.pipeline()

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until the queues are empty and nothing is in flight."""
        queue.drain(self.services.broker, self.worker, timeout)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.worker.stop(timeout=10_000)
        self.heartbeat.stop()
        self.services.close()


def handle_factory(build: Callable[[Settings], Any], default: Settings) -> Iterator[Callable[..., Any]]:
    """A fixture body: ``make(settings=None)`` builds handles, all stopped at teardown."""
    handles: list[Any] = []

    def make(settings: Settings | None = None) -> Any:
        handle = build(settings or default)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture
def worker_factory(services: Services) -> Iterator[Callable[..., WorkerHandle]]:
    yield from handle_factory(WorkerHandle, services.settings)


@pytest.fixture
def worker(worker_factory: Callable[..., WorkerHandle]) -> WorkerHandle:
    return worker_factory()


class ReceiverHandle:
    """The receiver app served by uvicorn on a loopback port, from a thread."""

    def __init__(self, settings: Settings) -> None:
        from receiver.app import create_app

        # Bound here and handed to uvicorn, so no other process can take the port in between.
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("receiver did not start")
            time.sleep(0.02)

    def flush_counters(self) -> None:
        """Write the webhook counters the receiver holds (receiver.counters) to source_stats
        now, rather than at its next once-a-second flush."""
        self.app.state.webhook_counters.flush(self.app.state.services.pool)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def receiver_factory(services: Services) -> Iterator[Callable[..., ReceiverHandle]]:
    yield from handle_factory(ReceiverHandle, services.settings)


@pytest.fixture
def receiver(receiver_factory: Callable[..., ReceiverHandle]) -> ReceiverHandle:
    return receiver_factory()


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


__all__ = ["ADMIN_KEY", "BASE_ENV", "FAST_BUDGETS", "make_settings", "reset_state", "wait_for", "run", "replace", "free_port"]
