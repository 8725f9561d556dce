"""search: ``GET /api/search`` latency over an index of N documents pushed through the push API.

N synthetic documents (a fixed vocabulary of delivery-team words, 80–400 words each, so some
need more than one chunk) are pushed with ``POST /api/documents`` (concurrency 20) to the
receiver (uvicorn, own process); a real worker in this process indexes them (offline embedder,
pgvector HNSW). Then queries of 2–4 words are sent one at a time (latency) and 4 at a time
(throughput), without and with a ``source`` filter.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

from benchmarks.harness import ADMIN_KEY, Infra, Receiver, Worker, latency_summary
from core import queue
from core.documents import Document, Ref

#: Documents of a second source (1% of the index) to see what a selective filter returns.
RARE_SHARE = 0.01

WORDS = ["billing", "subscription", "invoice", "refund", "customer", "renewal", "pricing", "plan", "discount", "tax", "vat", "currency", "deploy", "release", "rollback", "pipeline", "staging", "production", "incident", "outage", "postmortem", "alert", "pager", "database", "migration", "index", "query", "latency", "cache", "redis", "postgres", "queue", "worker", "retry", "timeout", "design", "review", "decision", "meeting", "roadmap", "milestone", "sprint", "backlog", "estimate", "scope", "deadline", "onboarding", "account", "login", "password", "sso", "permission", "role", "admin", "audit", "compliance", "gdpr", "export", "mobile", "android", "ios", "web", "frontend", "backend", "api", "endpoint", "webhook", "payload", "schema", "version", "search", "relevance", "ranking", "embedding", "vector", "chunk", "sync", "backfill", "reconcile", "cursor", "checkpoint", "jira", "slack", "github", "notion", "tempo", "fireflies", "worklog", "transcript", "thread", "channel", "repository", "customer", "churn", "revenue", "forecast", "quarter", "budget", "hiring", "contract", "vendor", "security", "patch"]


def make_document(rng: random.Random, n: int) -> dict[str, Any]:
    words = rng.randint(80, 400)
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))).capitalize()
    return {"id": f"bench-{n:06d}", "title": title, "text": text,
            "url": f"https://example.com/docs/{n}", "author": rng.choice(["ana", "bo", "cy", "di"]),
            "metadata": {"scope": f"team-{n % 7}"}, "updated_at": 1_700_000_000 + n}


async def push_all(url: str, docs: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    statuses: dict[int, int] = {}
    ms: list[float] = []
    queue = iter(docs)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30.0, limits=limits, headers={"X-Admin-Key": ADMIN_KEY}) as client:
        async def lane() -> None:
            for doc in queue:
                t0 = time.perf_counter()
                response = await client.post(f"{url}/api/documents", json=doc)
                ms.append((time.perf_counter() - t0) * 1000)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"statuses": statuses, "ms": ms, "elapsed": elapsed}


async def query_all(url: str, queries: list[str], concurrency: int, source: str | None) -> dict[str, Any]:
    ms: list[float] = []
    hits: list[int] = []
    statuses: dict[int, int] = {}
    pending = iter(queries)
    async with httpx.AsyncClient(timeout=30.0, headers={"X-Admin-Key": ADMIN_KEY}) as client:
        async def lane() -> None:
            for q in pending:
                params = {"q": q, "top_k": "10"} | ({"source": source} if source else {})
                t0 = time.perf_counter()
                response = await client.get(f"{url}/api/search", params=params)
                ms.append((time.perf_counter() - t0) * 1000)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    hits.append(len(response.json()["results"]))

        for q in queries[:10]:  # warm-up, not counted
            await client.get(f"{url}/api/search", params={"q": q})
        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"ms": ms, "elapsed": elapsed, "statuses": statuses,
            "mean_hits": round(sum(hits) / len(hits), 2) if hits else 0.0}


def run(infra: Infra, quick: bool) -> dict[str, Any]:
    infra.reset()
    n_docs, n_queries = (500, 60) if quick else (5000, 400)
    rng = random.Random(7)
    docs = [make_document(rng, n) for n in range(n_docs)]
    queries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))) for _ in range(n_queries)]
    settings = infra.settings()
    receiver = Receiver(infra.env())
    worker: Worker | None = None
    try:
        worker = Worker(settings)
        emb0 = worker.embedding_requests
        started = time.monotonic()
        push = asyncio.run(push_all(receiver.url, docs, 20))
        pushed_at = time.monotonic()
        worker.drain(timeout=900)
        indexed_s = time.monotonic() - started
        embedding_requests = worker.embedding_requests - emb0
        # A rare second source, through the same queue and worker as a listing page would go.
        n_rare = max(10, int(n_docs * RARE_SHARE))
        rare = [Document(source="jira", id=f"9{n:05d}", scope="RARE", title=d["title"], text=d["text"],
                         updated_at=float(d["updated_at"]))
                for n, d in enumerate(make_document(rng, n_docs + i) for i in range(n_rare))]
        queue.enqueue(worker.services.broker,
                      [Ref(d.source, d.id, d.scope, "sync", d.updated_at, d) for d in rare])
        worker.drain(timeout=300)
        vectors = worker.services.index.count()
        sequential = asyncio.run(query_all(receiver.url, queries, 1, None))
        concurrent = asyncio.run(query_all(receiver.url, queries, 4, None))
        filtered = asyncio.run(query_all(receiver.url, queries[: max(20, n_queries // 4)], 1, "api"))
        filtered_rare = asyncio.run(query_all(receiver.url, queries[: max(20, n_queries // 4)], 1, "jira"))
        filtered_miss = asyncio.run(query_all(receiver.url, queries[: max(20, n_queries // 4)], 1, "notion"))
        seq = latency_summary(sequential["ms"])
        figures: dict[str, Any] = {
            "documents": n_docs,
            "vectors_in_index": vectors,
            "push_requests_per_s": round(n_docs / push["elapsed"], 1),
            "push_ack_p50_ms": latency_summary(push["ms"])["p50_ms"],
            "push_ack_p95_ms": latency_summary(push["ms"])["p95_ms"],
            "push_statuses": push["statuses"],
            "push_wall_s": round(pushed_at - started, 2),
            "pushed_to_indexed_wall_s": round(indexed_s, 2),
            "indexing_documents_per_s": round(n_docs / indexed_s, 1),
            "embedding_requests_while_indexing": embedding_requests,
            "search_sequential_p50_ms": seq["p50_ms"],
            "search_sequential_p95_ms": seq["p95_ms"],
            "search_sequential_p99_ms": seq["p99_ms"],
            "search_sequential_max_ms": seq["max_ms"],
            "search_sequential_qps": round(len(sequential["ms"]) / sequential["elapsed"], 1),
            "search_conc4_p50_ms": latency_summary(concurrent["ms"])["p50_ms"],
            "search_conc4_p95_ms": latency_summary(concurrent["ms"])["p95_ms"],
            "search_conc4_qps": round(len(concurrent["ms"]) / concurrent["elapsed"], 1),
            "search_mean_results": sequential["mean_hits"],
            "search_statuses": sequential["statuses"],
            "search_filter_source_api_p50_ms": latency_summary(filtered["ms"])["p50_ms"],
            "search_filter_source_api_p95_ms": latency_summary(filtered["ms"])["p95_ms"],
            "rare_source_documents": n_rare,
            "search_filter_rare_source_p50_ms": latency_summary(filtered_rare["ms"])["p50_ms"],
            "search_filter_rare_source_mean_results": filtered_rare["mean_hits"],
            "search_filter_rare_source_expected_results": min(10, n_rare),
            "search_filter_no_match_p50_ms": latency_summary(filtered_miss["ms"])["p50_ms"],
            "search_filter_no_match_mean_results": filtered_miss["mean_hits"],
        }
        return {"params": {"documents": n_docs, "queries": n_queries, "top_k": 10,
                           "embedder": worker.pipeline.embedder.model,
                           "embedding_dimensions": settings.embedding_dimensions,
                           "index": type(worker.services.index).__name__},
                "figures": figures}
    finally:
        if worker is not None:
            worker.stop()
        receiver.stop()
