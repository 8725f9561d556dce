"""The pipeline end to end on real Postgres, real Redis and a real Dramatiq worker, through the
receiver's push API over loopback HTTP."""

from __future__ import annotations

import asyncio

import httpx

from core import state
from core.documents import vector_id
from tests.conftest import ADMIN_KEY, wait_for

HEADERS = {"X-Admin-Key": ADMIN_KEY}


def push(receiver, doc: dict) -> httpx.Response:
    return httpx.post(f"{receiver.url}/api/documents", json=doc, headers=HEADERS)


def search(receiver, q: str, **params) -> list[dict]:
    response = httpx.get(f"{receiver.url}/api/search", params={"q": q, **params}, headers=HEADERS)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def chunk_ids(services, document_id: str) -> list[str]:
    return services.index.list_ids(document_id + "#")


def long_text(paragraphs: int, topic: str) -> str:
    return "\n\n".join(
        f"Paragraph {n} about {topic}: " + " ".join(f"{topic}{n}word{i}" for i in range(120))
        for n in range(paragraphs)
    )


class TestPushAndSearch:
    def test_pushed_document_becomes_searchable(self, services, receiver, worker):
        """A document pushed through the API is chunked, embedded, stored and found."""
        response = push(receiver, {"id": "billing-decision", "title": "SUBS billing decision",
                                   "text": "We decided SUBS billing moves to monthly invoices in March.",
                                   "url": "https://wiki.example/subs"})
        assert response.status_code == 202
        assert response.json()["document_id"] == "api:billing-decision"
        worker.drain()
        results = search(receiver, "what did we decide about SUBS billing")
        assert results[0]["document_id"] == "api:billing-decision"
        assert results[0]["title"] == "SUBS billing decision"
        assert results[0]["url"] == "https://wiki.example/subs"
        assert results[0]["source"] == "api"
        assert "monthly invoices" in results[0]["text"]

    def test_unchanged_push_makes_no_embedding_call_and_no_upsert(self, services, receiver, worker):
        doc = {"id": "same", "title": "Same", "text": "Nothing changes here.", "updated_at": 1700001000}
        push(receiver, doc)
        worker.drain()
        pipeline = worker.pipeline
        embeds, writes = pipeline.embedder.requests, pipeline.index.writes
        # When the same document is pushed again, unchanged:
        push(receiver, doc)
        worker.drain()
        # Then no embedding request and no index write happened, and it was counted as unchanged.
        assert pipeline.embedder.requests == embeds
        assert pipeline.index.writes == writes
        with services.pool.connection() as conn:
            unchanged = conn.execute("SELECT unchanged FROM source_stats WHERE source = 'api'").fetchone()[0]
        assert unchanged == 1

    def test_edit_reembeds_and_shorter_edit_removes_surplus_chunks(self, services, receiver, worker):
        push(receiver, {"id": "doc", "title": "Long", "text": long_text(7, "alpha"), "updated_at": 1700000001})
        worker.drain()
        first = chunk_ids(services, "api:doc")
        assert len(first) >= 5
        embeds = worker.pipeline.embedder.requests
        # An edit to a shorter text re-embeds and drops the chunks it no longer has.
        push(receiver, {"id": "doc", "title": "Long", "text": long_text(2, "beta"), "updated_at": 1700000002})
        worker.drain()
        assert worker.pipeline.embedder.requests > embeds
        second = chunk_ids(services, "api:doc")
        assert 1 <= len(second) < len(first)
        assert set(second) == {vector_id("api:doc", n) for n in range(len(second))}
        row = state.get_documents(services.pool, ["api:doc"])["api:doc"]
        assert row.chunk_count == len(second)
        assert search(receiver, "beta1word5")[0]["document_id"] == "api:doc"

    def test_metadata_only_change_does_not_reembed(self, services, receiver, worker):
        push(receiver, {"id": "m", "title": "T", "text": "body text", "metadata": {"status": "open"}, "updated_at": 1700000001})
        worker.drain()
        embeds = worker.pipeline.embedder.requests
        push(receiver, {"id": "m", "title": "T", "text": "body text", "metadata": {"status": "done"}, "updated_at": 1700000002})
        worker.drain()
        assert worker.pipeline.embedder.requests == embeds
        assert services.index.fetch(["api:m#0"])["api:m#0"]["status"] == "done"

    def test_older_version_never_overwrites_newer(self, services, receiver, worker):
        push(receiver, {"id": "o", "title": "T", "text": "newest words", "updated_at": 1700000200})
        worker.drain()
        push(receiver, {"id": "o", "title": "T", "text": "ancient words", "updated_at": 1700000100})
        worker.drain()
        assert services.index.fetch(["api:o#0"])["api:o#0"]["text"] == "newest words"

    def test_delete_removes_from_search_and_index(self, services, receiver, worker):
        push(receiver, {"id": "gone", "title": "Ephemeral", "text": long_text(3, "gamma")})
        worker.drain()
        assert chunk_ids(services, "api:gone")
        response = httpx.delete(f"{receiver.url}/api/documents/gone", headers=HEADERS)
        assert response.status_code == 202
        worker.drain()
        assert chunk_ids(services, "api:gone") == []
        assert all(r["document_id"] != "api:gone" for r in search(receiver, "gamma1word3 Ephemeral"))
        assert state.get_documents(services.pool, ["api:gone"])["api:gone"].deleted_at is not None


class TestBatching:
    def test_waiting_documents_share_embedding_calls(self, services, receiver, worker_factory):
        """Twenty documents queued before the worker starts are not embedded one call each."""
        for n in range(20):
            assert push(receiver, {"id": f"b{n}", "title": f"Doc {n}", "text": f"text number {n}"}).status_code == 202
        worker = worker_factory()
        worker.drain()
        # How many of the four threads' jobs meet within one batching window depends on timing
        # (the machine may be loaded): the coalescing itself is proven without a clock below.
        assert 1 <= worker.pipeline.embedder.requests <= 20
        assert services.index.count() == 20

    def test_calls_made_together_share_one_request(self):
        """Calls issued in one turn of the event loop always meet in one request, however slow
        the machine: the window's timer cannot fire before every one of them has queued."""
        from core.embeddings.batching import BatchingEmbedder
        from core.embeddings.offline import OfflineEmbedder

        async def ten_jobs():
            batching = BatchingEmbedder(OfflineEmbedder(64), max_inputs=2048)
            try:
                results = await asyncio.gather(*(batching.embed([f"text {n}", f"more {n}"]) for n in range(10)))
                return batching.requests, results
            finally:
                await batching.aclose()

        requests, results = asyncio.run(ten_jobs())
        assert requests == 1
        assert [len(r) for r in results] == [2] * 10
        assert results[0][0] != results[1][0]  # each caller gets its own vectors back


class TestPushValidation:
    def test_requires_admin_key(self, receiver):
        assert httpx.post(f"{receiver.url}/api/documents", json={"id": "x", "title": "", "text": "t"}).status_code == 401
        wrong = httpx.post(f"{receiver.url}/api/documents", json={}, headers={"X-Admin-Key": "nope"})
        assert wrong.status_code == 401
        assert httpx.get(f"{receiver.url}/api/search", params={"q": "x"}).status_code == 401

    def test_malformed_bodies_get_400_with_a_message(self, receiver):
        cases = [b"not json", b"[]", b'{"id": "", "title": "t", "text": "x"}',
                 b'{"id": "a", "title": 3, "text": "x"}', b'{"id": "a", "title": "t"}',
                 b'{"id": "a", "title": "t", "text": "x", "metadata": {"k": {"nested": 1}}}']
        for body in cases:
            response = httpx.post(f"{receiver.url}/api/documents", content=body, headers=HEADERS)
            assert response.status_code == 400, body
            assert response.json()["error"]

    def test_search_validates_parameters(self, receiver):
        assert httpx.get(f"{receiver.url}/api/search", headers=HEADERS).status_code == 400
        bad_k = httpx.get(f"{receiver.url}/api/search", params={"q": "x", "top_k": "0"}, headers=HEADERS)
        assert bad_k.status_code == 400
        bad_source = httpx.get(f"{receiver.url}/api/search", params={"q": "x", "source": "myspace"}, headers=HEADERS)
        assert bad_source.status_code == 400

    def test_without_admin_key_configured_admin_endpoints_refuse(self, infra, services, receiver_factory):
        from tests.conftest import make_settings

        receiver = receiver_factory(make_settings(infra, ADMIN_API_KEY=""))
        response = httpx.post(f"{receiver.url}/api/documents", json={"id": "a", "title": "t", "text": "x"},
                              headers={"X-Admin-Key": ""})
        assert response.status_code == 403
        assert "ADMIN_API_KEY" in response.json()["error"]


class TestHealth:
    def test_healthz_readyz_status(self, services, receiver, worker):
        assert httpx.get(f"{receiver.url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{receiver.url}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
        status = wait_for(lambda: (s := httpx.get(f"{receiver.url}/api/status").json())["processes_alive"]["worker"] and s)
        assert status["processes_alive"]["web"] is True
        assert status["processes_alive"]["reconciler"] is False  # none running in this test
        assert status["healthy"] is False
        assert set(status["sources"]) == {"jira", "slack", "github", "notion", "tempo", "fireflies"}
        assert all(not s["configured"] for s in status["sources"].values())
        assert "test-admin-key" not in httpx.get(f"{receiver.url}/api/status").text

    def test_readyz_names_redis_when_it_is_down(self, infra, services, receiver_factory):
        from tests.conftest import make_settings

        # A receiver whose Redis does not exist:
        broken = receiver_factory(make_settings(infra, REDIS_URL="redis://127.0.0.1:1/0"))
        response = httpx.get(f"{broken.url}/readyz")
        assert response.status_code == 503
        assert "redis" in response.json()["error"]
        assert response.json()["checks"]["postgres"] == "ok"
        # And a push answers 503 rather than pretending: the sender retries.
        refused = httpx.post(f"{broken.url}/api/documents", json={"id": "a", "title": "t", "text": "x"}, headers=HEADERS)
        assert refused.status_code == 503


class TestFilteredSearch:
    def test_a_selective_filter_still_returns_every_match(self, services, worker):
        """Few documents of one source among many others: the filter must not starve the scan."""
        from core.documents import Document, Ref

        refs = [Ref("api", f"bulk{n}", document=Document("api", f"bulk{n}", "", f"Bulk {n}",
                                                       f"common words shared by all {n}", 1.0))
                for n in range(600)]
        refs += [Ref("api", f"rare{n}", document=Document("api", f"rare{n}", "", f"Rare {n}",
                                                        f"common words shared by all rare {n}", 1.0,
                                                        metadata={"team": "rare"}))
                 for n in range(12)]
        from core import queue

        queue.enqueue(services.broker, refs)
        worker.drain()
        vector = worker.pipeline.embedder.inner  # the offline embedder, same as the index's
        import asyncio

        [query] = asyncio.run(vector.embed(["common words shared by all"]))
        matches = services.index.query(query, 10, {"team": "rare"})
        assert len(matches) == 10
        assert all(m.metadata["team"] == "rare" for m in matches)
        everything = services.index.query(query, 50, {"team": "rare"})
        assert len(everything) == 12


class TestEmbeddingRecipe:
    def test_changing_the_chunking_reembeds_unchanged_documents(self, infra, services, receiver, worker_factory):
        """Vectors made another way are stale too: an unchanged document is re-embedded."""
        from tests.conftest import make_settings

        first = worker_factory()
        push(receiver, {"id": "r", "title": "Recipe", "text": long_text(4, "delta"), "updated_at": 1700000001})
        first.drain()
        before = len(chunk_ids(services, "api:r"))
        first.stop()
        second = worker_factory(make_settings(infra, CHUNK_TOKENS="128"))
        push(receiver, {"id": "r", "title": "Recipe", "text": long_text(4, "delta"), "updated_at": 1700000001})
        second.drain()
        assert second.pipeline.embedder.requests == 1
        assert len(chunk_ids(services, "api:r")) > before

    def test_a_new_chunker_version_reembeds_unchanged_documents(self, receiver, worker_factory, monkeypatch):
        """A chunker that cuts differently is a new recipe: nothing mixes two ways of cutting."""
        doc = {"id": "v", "title": "Version", "text": long_text(4, "kappa"), "updated_at": 1700000002}
        first = worker_factory()
        push(receiver, doc)
        first.drain()
        first.stop()
        same = worker_factory()
        push(receiver, doc)
        same.drain()
        assert same.pipeline.embedder.requests == 0  # the control: unchanged, not re-embedded
        same.stop()
        monkeypatch.setattr("workers.sync.CHUNKER_VERSION", 99)
        bumped = worker_factory()
        push(receiver, doc)
        bumped.drain()
        assert bumped.pipeline.embedder.requests == 1


class TestPriorities:
    def test_live_work_overtakes_a_bulk_backlog(self, services, worker_factory):
        """A backfill's thousands of jobs must not delay a fresh webhook: live work goes first."""
        from core import queue
        from core.documents import Document, Ref

        def ref(name: str) -> Ref:
            return Ref("api", name, document=Document("api", name, "", name, f"text of {name}", 1.0))

        for n in range(60):  # sixty bulk messages already waiting...
            queue.enqueue(services.broker, [ref(f"bulk{n}")], bulk=True)
        queue.enqueue(services.broker, [ref("live")])  # ...then one live one
        assert queue.queue_depths(services.broker) == {"sync": 1, "bulk": 60}
        worker = worker_factory()
        worker.drain()
        with services.pool.connection() as conn:
            ahead = conn.execute(
                """SELECT count(*) FROM documents WHERE document_id LIKE 'api:bulk%%'
                   AND indexed_at < (SELECT indexed_at FROM documents WHERE document_id = 'api:live')"""
            ).fetchone()[0]
            total = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        assert total == 61
        # At most what the worker had prefetched before the live message arrived ran first.
        assert ahead < 20
