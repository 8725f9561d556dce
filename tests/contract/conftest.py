"""The whole system, for real, against the sandbox simulators.

Each test module starts one sandbox (its family of simulators, ``small`` profile) for the
module and declares it through a module-scoped ``sandbox`` fixture; the ``settings`` fixture is
overridden here so that ``services``, ``receiver`` and ``worker`` (tests/conftest.py) all run
with the sandbox's settings. ``System`` bundles what a test drives: the simulators' control
APIs, the receiver (webhook target), the worker, and reconciler passes run with
``Reconciler.tick()`` inside ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from core import queue
from core.documents import vector_id
from core.runtime import Services, SourceSet
from core.settings import SOURCE_NAMES, Settings
from reconciler.reconcile import Reconciler
from sandbox.server import SandboxServer, create_simulators
from tests.conftest import ADMIN_KEY, ReceiverHandle, WorkerHandle, make_settings

HEADERS = {"X-Admin-Key": ADMIN_KEY}

#: Our side's request budgets would space calls 20 ms to 1.2 s apart (strict spacing); the
#: contract is about behaviour, not budgets. Small chunks make "several chunks" cheap. The
#: product's default 1,536 dimensions (the shared test default is 256): the offline embedder
#: hashes words into buckets, and at 256 a test's marker word can share a bucket with another
#: word of opposite sign and cancel out, so a one-word search would miss it. Tests also write
#: each marker word twice, so no single colliding word can cancel it.
FAST_ENV = {
    **{f"{name.upper()}_RATE_LIMIT": "1000/s" for name in SOURCE_NAMES},
    "CHUNK_TOKENS": "64",
    "CHUNK_OVERLAP_TOKENS": "8",
    "EMBEDDING_DIMENSIONS": "1536",
}

_counter = itertools.count(1)


def unique(prefix: str) -> str:
    """A word no simulator seeds, so a search for it finds only what the test made."""
    return f"{prefix}{next(_counter)}zq"


def long_text(topic: str, paragraphs: int = 6) -> str:
    """Text several chunks long (CHUNK_TOKENS=64 ≈ 190 characters a chunk)."""
    return "\n\n".join(
        f"Paragraph {n} on {topic}: " + " ".join(f"{topic}w{n}x{i}" for i in range(30))
        for n in range(paragraphs)
    )


def start_sandbox(names: list[str]) -> SandboxServer:
    sims = create_simulators(names, profile="small", seed=1)
    for sim in sims.values():
        sim.knobs.rate_limit = 0  # unlimited: the simulators' own quotas are tested elsewhere
    return SandboxServer(sims).start()


@pytest.fixture(scope="module")
def module_settings(infra: dict[str, str], sandbox: SandboxServer, request: pytest.FixtureRequest) -> Settings:
    extra = getattr(request.module, "EXTRA_ENV", {})
    return make_settings(infra, **{**sandbox.env(), **FAST_ENV, **extra})


@pytest.fixture
def settings(module_settings: Settings) -> Settings:
    return module_settings


@dataclass
class Stack:
    worker: WorkerHandle
    receiver: ReceiverHandle


@pytest.fixture(scope="module")
def stack(module_settings: Settings) -> Iterator[Stack]:
    """One worker and one receiver for the module (starting and stopping them per test costs
    about a second); ``services`` still truncates the tables and flushes Redis before each test."""
    worker = WorkerHandle(module_settings)
    try:
        receiver = ReceiverHandle(module_settings)
    except BaseException:
        worker.stop()
        raise
    yield Stack(worker, receiver)
    receiver.stop()
    worker.stop()


class System:
    def __init__(self, sandbox: SandboxServer, services: Services, receiver: Any, worker: Any) -> None:
        self.sandbox = sandbox
        self.services = services
        self.settings = services.settings
        self.receiver = receiver
        self.worker = worker
        if receiver is not None:
            sandbox.set_webhook_target(receiver.url)

    # --- simulators -------------------------------------------------------------------------
    def control(self, name: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.sandbox.url(name)}/_sandbox{path}", timeout=30, **kwargs)
        assert response.status_code < 400, f"{method} {path}: {response.status_code} {response.text}"
        return response

    def knobs(self, name: str, **changes: Any) -> None:
        self.control(name, "PUT", "/knobs", json=changes)

    def flush_webhooks(self, name: str) -> None:
        """Wait until every webhook the simulator started sending has been answered."""
        sim = self.sandbox.sims[name]
        drain = getattr(sim, "drain", None)
        self.sandbox.run_coroutine(drain() if drain is not None else sim.webhooks.drain())

    def deliveries(self, name: str) -> list[Any]:
        return list(self.sandbox.sims[name].webhooks.deliveries)

    def settle(self, name: str) -> None:
        """Webhooks delivered, then the queue drained."""
        self.flush_webhooks(name)
        if self.worker is not None:
            self.worker.drain()

    def post_delivery(self, name: str, body: bytes, headers: dict[str, str],
                      receiver: Any = None) -> httpx.Response:
        url = f"{(receiver or self.receiver).url}/webhooks/{name}"
        return httpx.post(url, content=body, headers=headers, timeout=30)

    # --- reconciler -------------------------------------------------------------------------
    def reconcile(self, source: str, key: str, *, prune: bool = False, drain: bool = True) -> None:
        """One reconciler tick in which exactly (source, key) is due (and its prune, if asked);
        then the queue drained, unless ``drain`` is False."""

        async def one_tick() -> int:
            sources = SourceSet(self.settings, self.services.pool)
            try:
                reconciler = Reconciler(self.settings, self.services, sources, "contract-test")
                await reconciler.discover(sources.configured(), force=True)
                await asyncio.to_thread(self._make_due, source, key, prune)
                return await reconciler.tick()
            finally:
                await sources.aclose()

        claimed = asyncio.run(one_tick())
        assert claimed == 1, f"expected the one due scope {source}/{key} to be claimed, got {claimed}"
        if drain and self.worker is not None:
            self.worker.drain()

    def _make_due(self, source: str, key: str, prune: bool) -> None:
        with self.services.pool.connection() as conn:
            row = conn.execute("SELECT active FROM scopes WHERE source = %s AND key = %s",
                               (source, key)).fetchone()
            assert row is not None, f"discovery did not find {source}/{key}"
            assert row[0], f"{source}/{key} is not active"
            conn.execute("UPDATE scopes SET next_due_at = now() + interval '1 day'")
            conn.execute(
                """UPDATE scopes SET next_due_at = now() - interval '1 second',
                       next_prune_at = CASE WHEN %s THEN now() - interval '1 second'
                                            ELSE now() + interval '1 day' END
                   WHERE source = %s AND key = %s""",
                (prune, source, key),
            )

    def last_run(self, kind: str, source: str) -> dict[str, Any]:
        with self.services.pool.connection() as conn:
            row = conn.execute(
                """SELECT status, counters, error FROM runs WHERE kind = %s AND source = %s
                   ORDER BY id DESC LIMIT 1""", (kind, source)).fetchone()
        assert row is not None, f"no {kind} run for {source}"
        return {"status": row[0], "counters": row[1], "error": row[2]}

    def run_count(self) -> int:
        with self.services.pool.connection() as conn:
            return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])

    # --- what got indexed -------------------------------------------------------------------
    def search(self, q: str, source: str | None = None, top_k: int = 10) -> list[dict[str, Any]]:
        # As the operator checking the index: every document, restricted ones included (a
        # Fireflies transcript is restricted to its participants).
        params: dict[str, Any] = {"q": q, "top_k": top_k, "include_restricted": "true"}
        if source:
            params["source"] = source
        response = httpx.get(f"{self.receiver.url}/api/search", params=params, headers=HEADERS, timeout=30)
        assert response.status_code == 200, response.text
        return list(response.json()["results"])

    def found(self, word: str, document_id: str, source: str | None = None) -> bool:
        """A search for ``word`` returns the document with a passage that holds the word (the
        nearest vectors come back whatever their score, so the passage must say it)."""
        return any(r["document_id"] == document_id and word in f"{r['title']} {r['text']}"
                   for r in self.search(word, source))

    def chunk_ids(self, document_id: str) -> list[str]:
        return sorted(self.services.index.list_ids(document_id + "#"))

    def chunk_texts(self, document_id: str) -> str:
        ids = self.chunk_ids(document_id)
        meta = self.services.index.fetch(ids)
        return "\n".join(str(meta[i].get("text", "")) for i in ids)

    def metadata(self, document_id: str) -> dict[str, Any]:
        meta = self.services.index.fetch([vector_id(document_id, 0)])
        return dict(meta.get(vector_id(document_id, 0)) or {})

    def row(self, document_id: str) -> dict[str, Any] | None:
        with self.services.pool.connection() as conn:
            cur = conn.execute(
                """SELECT document_id, source, scope, content_hash, chunk_count, deleted_at,
                          last_error FROM documents WHERE document_id = %s""", (document_id,))
            found = cur.fetchone()
            if found is None:
                return None
            return dict(zip([c.name for c in cur.description], found, strict=True))

    def stats(self, source: str) -> dict[str, int]:
        self.receiver.flush_counters()  # the receiver writes its webhook counters once a second
        with self.services.pool.connection() as conn:
            cur = conn.execute(
                """SELECT synced, unchanged, metadata_only, deleted, stale_ignored, deferred, failed,
                          webhooks_received, webhooks_rejected
                   FROM source_stats WHERE source = %s""", (source,))
            found = cur.fetchone()
            names = [c.name for c in cur.description]
        return dict(zip(names, found or [0] * len(names), strict=True))

    def queue_depth(self) -> int:
        return queue.queue_depth(self.services.broker)

    def delivery_count(self) -> int:
        """Claimed webhook deliveries (Redis keys, core.queue.delivery_key)."""
        client = self.services.broker.client
        return sum(1 for _ in client.scan_iter(match=f"{queue.DELIVERY_PREFIX}*", count=1000))


def reset_sandbox(sandbox: SandboxServer) -> None:
    """Undo what a test changed on the simulators' dials; let stray webhooks finish."""
    for name, sim in sandbox.sims.items():
        sim.knobs.webhook_drop_rate = 0.0
        if name == "jira":
            sim.webhook_mode = "now"  # type: ignore[attr-defined]
            sim.held.clear()  # type: ignore[attr-defined]
        drain = getattr(sim, "drain", None)
        sandbox.run_coroutine(drain() if drain is not None else sim.webhooks.drain(), timeout=30)


@pytest.fixture
def system(sandbox: SandboxServer, services: Services, stack: Stack) -> Iterator[System]:
    yield System(sandbox, services, stack.receiver, stack.worker)
    reset_sandbox(sandbox)
