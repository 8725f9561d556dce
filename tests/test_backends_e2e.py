"""The pipeline with OpenAI embeddings and Pinecone as its backends, through their simulators:
setting OPENAI_API_KEY and PINECONE_* switches each part, and every rule still holds."""

from __future__ import annotations

import httpx
import pytest

from core.index.pinecone import PineconeIndex
from sandbox.server import SandboxServer, create_simulators
from tests.conftest import ADMIN_KEY, make_settings

HEADERS = {"X-Admin-Key": ADMIN_KEY}


@pytest.fixture(scope="module")
def cloud():
    server = SandboxServer(create_simulators(["openai", "pinecone"], profile="empty")).start()
    yield server
    server.stop()


@pytest.fixture
def cloud_settings(infra, cloud):
    return make_settings(infra, **cloud.env(), EMBEDDING_DIMENSIONS="1536", PINECONE_NAMESPACE="e2e")


def paragraphs(n: int, topic: str) -> str:
    return "\n\n".join(f"{topic} part {i}: " + " ".join(f"{topic}{i}w{j}" for j in range(150)) for i in range(n))


def test_push_search_shrink_and_delete_on_openai_and_pinecone(services, cloud, cloud_settings,
                                                              receiver_factory, worker_factory):
    receiver = receiver_factory(cloud_settings)
    worker = worker_factory(cloud_settings)
    index = worker.pipeline.index
    assert isinstance(index, PineconeIndex)
    assert worker.pipeline.embedder.model == "text-embedding-3-small"
    for n in range(3):
        doc = {"id": f"e2e-{n}", "title": f"Release notes {n}", "text": paragraphs(4, f"topic{n}"), "updated_at": 1700000001}
        assert httpx.post(f"{receiver.url}/api/documents", json=doc, headers=HEADERS).status_code == 202
    worker.drain()
    ids = index.list_ids("api:e2e-0#")
    assert len(ids) >= 3
    results = httpx.get(f"{receiver.url}/api/search", params={"q": "topic1 part 2 topic12w7"}, headers=HEADERS).json()
    assert results["results"][0]["document_id"] == "api:e2e-1"
    # Unchanged: no embedding request, no write.
    embeds, writes = worker.pipeline.embedder.requests, index.writes
    httpx.post(f"{receiver.url}/api/documents", headers=HEADERS,
               json={"id": "e2e-0", "title": "Release notes 0", "text": paragraphs(4, "topic0"), "updated_at": 1700000001})
    worker.drain()
    assert (worker.pipeline.embedder.requests, index.writes) == (embeds, writes)
    # Shorter: the surplus chunks leave Pinecone.
    httpx.post(f"{receiver.url}/api/documents", headers=HEADERS,
               json={"id": "e2e-0", "title": "Release notes 0", "text": "just one line now", "updated_at": 1700000002})
    worker.drain()
    assert index.list_ids("api:e2e-0#") == ["api:e2e-0#0"]
    # Deleted: every chunk leaves Pinecone.
    assert httpx.delete(f"{receiver.url}/api/documents/e2e-2", headers=HEADERS).status_code == 202
    worker.drain()
    assert index.list_ids("api:e2e-2#") == []
    assert httpx.get(f"{receiver.url}/api/status").json()["index"]["backend"] == "pinecone"
