"""One writer per document (issue 10): concurrent work on one document ends in the newest truth,
with exactly its chunks in the index; a delete racing an upsert leaves no ghost; an API delete
always deletes.

Two real Dramatiq workers, four threads each: one in this process and one ``python -m workers``
process (Dramatiq keeps one event loop per process, so two in-process workers would share it), on
real Postgres and Redis, the Jira simulator over loopback HTTP. Webhook-style refs carry only an id (the worker fetches the truth);
reconcile-style refs carry the document as a listing read it, possibly long before it runs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core import queue, state
from core.documents import Document, Ref, chunk_text
from core.embeddings.openai import OpenAIEmbedder
from core.sources.jira import build
from sandbox.server import SandboxServer, create_simulators
from tests.conftest import BASE_ENV, FAST_BUDGETS, make_settings

_keys = (f"C{n}" for n in itertools.count(10))
CHUNK_TOKENS = 64  # ~190 characters: one paragraph of the texts below is one chunk


@pytest.fixture(scope="module")
def jira() -> Iterator[SandboxServer]:
    # OpenAI's simulator embeds, 0.3 s per request: every job's read and write are far apart, so
    # jobs on the same document overlap (the race the locks are there for).
    server = SandboxServer(create_simulators(["jira", "openai"], profile="empty")).start()
    httpx.put(f"{server.url('openai')}/_sandbox/knobs", json={"latency": 0.3}).raise_for_status()
    yield server
    server.stop()


@pytest.fixture
def env(infra: dict[str, str], jira: SandboxServer) -> dict[str, str]:
    return {**BASE_ENV, **infra, **jira.env(), **FAST_BUDGETS, "WORKER_THREADS": "4",
            "CHUNK_TOKENS": str(CHUNK_TOKENS), "CHUNK_OVERLAP_TOKENS": "0"}


@pytest.fixture
def settings(infra: dict[str, str], env: dict[str, str]) -> Any:
    return make_settings(infra, **env)


class TwoWorkers:
    """An in-process worker and a ``python -m workers`` process, started on demand."""

    def __init__(self, services: Any, settings: Any, env: dict[str, str], factory: Any, log: Any) -> None:
        self.services, self.settings, self.env, self.factory, self.log = services, settings, env, factory, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.local: Any = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "workers"], env={**os.environ, **self.env},
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.local = self.factory(self.settings)

    def settle(self) -> None:
        """Wait until both have finished everything."""
        quiet = 0
        while quiet < 3:  # in-flight messages stay counted until acknowledged
            self.local.drain(timeout=120)
            quiet = quiet + 1 if queue.queue_depth(self.services.broker) == 0 else 0
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def two_workers(services: Any, settings: Any, env: dict[str, str], worker_factory: Any,
                tmp_path: Any) -> Iterator[TwoWorkers]:
    with open(tmp_path / "worker.log", "w") as log:
        workers = TwoWorkers(services, settings, env, worker_factory, log)
        yield workers
        workers.stop()


def ctl(jira: SandboxServer) -> httpx.Client:
    return httpx.Client(base_url=jira.url("jira") + "/_sandbox/jira", timeout=30)


def text_of(version: int, paragraphs: int) -> str:
    return "\n\n".join(f"Version {version} paragraph {p}: " + " ".join(f"v{version}w{p}x{i}" for i in range(14))
                       for p in range(paragraphs))


def fetch_now(settings: Any, issue_id: str) -> Ref:
    """A reconcile-style ref: the document as read right now, carried in the ref."""

    async def run() -> Document:
        async with httpx.AsyncClient(timeout=30) as client:
            doc = await build(settings.source("jira"), client).fetch(Ref("jira", issue_id))
            assert isinstance(doc, Document)
            return doc

    doc = asyncio.run(run())
    return Ref("jira", doc.id, doc.scope, "sync", doc.updated_at, doc)


def index_ids(services: Any, document_id: str) -> set[str]:
    return set(services.index.list_ids(document_id + "#"))


def test_twenty_concurrent_edits_end_with_the_newest_version_and_no_orphan_chunk(
        services, settings, jira, two_workers):
    key = next(_keys)
    rng = random.Random(7)
    base_ms = int(time.time() * 1000) - 3_600_000
    with ctl(jira) as c:
        c.post("/projects", json={"key": key, "name": key}).raise_for_status()
        issue = c.post("/issues", json={"project": key, "summary": "Racing issue",
                                        "description": text_of(0, 3), "updated": base_ms}).json()
        issue_id = str(issue["id"])
        late: list[Ref] = []
        refs: list[Ref] = []
        for version in range(1, 21):
            paragraphs = rng.choice([1, 7, 2, 6, 3])
            c.put(f"/issues/{issue_id}", json={"description": text_of(version, paragraphs),
                                               "updated": base_ms + version * 1000}).raise_for_status()
            snapshot = fetch_now(settings, issue_id)
            refs += [Ref("jira", issue_id, key), snapshot]  # a webhook and a reconcile pass
            late.append(snapshot)
    # ...and listing pages read long ago that arrive late. All of it queued, then shuffled, so
    # eight jobs at a time work on the same document with versions old and new.
    refs += late[:-1]
    rng.shuffle(refs)
    for ref in refs:
        queue.enqueue(services.broker, [ref])
    two_workers.start()
    two_workers.settle()
    document_id = f"jira:{issue_id}"
    row = state.get_documents(services.pool, [document_id])[document_id]
    assert row.source_updated_at == pytest.approx((base_ms + 20_000) / 1000)
    final = late[-1].document
    assert final is not None
    # Cut as the worker cuts: OpenAI (the simulator) is on, so tokens are counted exactly.
    chunks = chunk_text(final.text, CHUNK_TOKENS, 0, OpenAIEmbedder(api_key="k").count_tokens)
    # The stored chunk count is what the index holds, id for id: no orphan chunk.
    assert index_ids(services, document_id) == {f"{document_id}#{n}" for n in range(row.chunk_count)}
    assert row.chunk_count == len(chunks)
    texts = [m["text"] for m in services.index.fetch(sorted(index_ids(services, document_id))).values()]
    assert sorted(texts) == sorted(chunks)  # the newest version, every chunk of it, nothing else
    assert state.failed_documents(services.pool) == []
    assert queue.dead_letters(services.broker) == []


def test_a_delete_racing_upserts_leaves_no_ghost(services, settings, jira, two_workers):
    key = next(_keys)
    refs: list[Ref] = []
    document_ids = []
    with ctl(jira) as c:
        c.post("/projects", json={"key": key, "name": key}).raise_for_status()
        for n in range(6):
            issue = c.post("/issues", json={"project": key, "summary": f"Doomed {n}",
                                            "description": text_of(n, 1 + n % 3)}).json()
            issue_id = str(issue["id"])
            document_ids.append(f"jira:{issue_id}")
            snapshot = fetch_now(settings, issue_id)  # a listing read it while it existed...
            c.delete(f"/issues/{issue_id}").raise_for_status()  # ...then it was deleted
            # The delete webhook, a webhook sync (its fetch says Gone) and the old listing page
            # race each other, the listing's page last in the queue.
            refs += [Ref("jira", issue_id, key, "delete"), Ref("jira", issue_id, key), snapshot]
    for ref in refs:
        queue.enqueue(services.broker, [ref])
    two_workers.start()
    two_workers.settle()
    rows = state.get_documents(services.pool, document_ids)
    for document_id in document_ids:
        assert index_ids(services, document_id) == set(), f"{document_id} is a ghost"
        assert rows[document_id].deleted_at is not None and rows[document_id].chunk_count == 0


def api_doc(doc_id: str, text: str, updated_at: float) -> Document:
    return Document("api", doc_id, "", f"Title {doc_id}", text, updated_at)


class TestApiDeletes:
    def test_an_api_delete_deletes_a_document_pushed_with_a_millisecond_timestamp(self, services, worker):
        """updated_at in milliseconds lands in the year 58,000: the delete used to be taken for
        an event older than the stored version and did nothing, for ever."""
        queue.enqueue(services.broker, [Ref("api", "ms", document=api_doc("ms", "pushed in ms", 1.7e12))])
        worker.drain()
        assert index_ids(services, "api:ms")
        queue.enqueue(services.broker, [Ref("api", "ms", op="delete", event_at=time.time())])
        worker.drain()
        assert index_ids(services, "api:ms") == set()
        assert state.get_documents(services.pool, ["api:ms"])["api:ms"].deleted_at is not None

    def test_a_repush_with_a_right_timestamp_after_the_delete_is_kept(self, services, worker):
        now = time.time()
        for ref in (Ref("api", "fix", document=api_doc("fix", "pushed in ms", 1.7e12), seen_at=now),
                    Ref("api", "fix", op="delete", event_at=now + 1, seen_at=now + 1),
                    Ref("api", "fix", document=api_doc("fix", "pushed in seconds", 1.7e9), seen_at=now + 2)):
            queue.enqueue(services.broker, [ref])
            worker.drain()
        hits = services.index.fetch(sorted(index_ids(services, "api:fix")))
        assert [m["text"] for m in hits.values()] == ["pushed in seconds"]

    @pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
    def test_push_delete_repush_ends_with_the_repush_in_any_order(self, services, worker, order):
        """A push, a delete, a re-push, in that order of arrival; the jobs run in every order and
        the re-push, the last word, is what stays: the delete removes what arrived before it,
        never what arrived after it."""
        now = time.time()
        name = "p" + "".join(map(str, order))
        arrivals = [
            Ref("api", name, document=api_doc(name, "first push", 1_700_000_100.0), seen_at=now),
            Ref("api", name, op="delete", event_at=now + 1, seen_at=now + 1),
            Ref("api", name, document=api_doc(name, "second push", 1_700_000_200.0), seen_at=now + 2),
        ]
        for position in order:
            queue.enqueue(services.broker, [arrivals[position]])
            worker.drain()
        hits = services.index.fetch(sorted(index_ids(services, f"api:{name}")))
        assert [m["text"] for m in hits.values()] == ["second push"]

    @pytest.mark.parametrize("order", list(itertools.permutations(range(2))))
    def test_push_then_delete_in_any_order_ends_deleted(self, services, worker, order):
        now = time.time()
        name = "d" + "".join(map(str, order))
        arrivals = [Ref("api", name, document=api_doc(name, "pushed", 1.7e12), seen_at=now),
                    Ref("api", name, op="delete", event_at=now + 1, seen_at=now + 1)]
        for position in order:
            queue.enqueue(services.broker, [arrivals[position]])
            worker.drain()
        assert index_ids(services, f"api:{name}") == set()
