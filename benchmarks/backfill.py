"""backfill: the seed-scale Jira profile through the real backfill path, twice.

Jira simulator (``--profile scale``: 72 projects, 7,556 issues with comments, own process) →
``Backfill`` listing (search/jql + bulkfetch under the product's Jira budget) → Redis queue →
a real worker (offline embedder, pgvector) → ``verification``. Then the same backfill again:
everything is unchanged, so the second pass should make no embedding request and no index write.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from benchmarks.harness import Infra, Sandbox, Worker
from core.runtime import SourceSet, open_services
from reconciler.backfill import (
    Backfill,
    create_run,
    finish_run,
    owner_name,
    read_back,
    totals,
    verification,
)

#: --quick: this many projects (of 72) instead of all.
QUICK_PROJECTS = 4


def _project_keys(env: dict[str, str], count: int) -> list[str]:
    """The first ``count`` project keys (one request outside the measured path)."""
    response = httpx.get(f"{env['JIRA_URL']}/rest/api/3/project/search",
                         params={"maxResults": count},
                         auth=(env["JIRA_EMAIL"], env["JIRA_API_TOKEN"]), timeout=10)
    response.raise_for_status()
    return [p["key"] for p in response.json()["values"]][:count]


def _one_pass(services: Any, settings: Any, worker: Worker, keys: list[str], timeout: float) -> dict[str, Any]:
    owner = owner_name()
    run_id = create_run(services.pool, "jira", keys, None, owner=owner)
    emb0, writes0, wjira0 = worker.embedding_requests, worker.index_writes, worker.source_requests("jira")

    async def listing() -> tuple[dict[str, Any], int]:
        sources = SourceSet(settings, services.pool)
        try:
            counters = await Backfill(services, sources, run_id, owner).run()
            return counters, int(sources.get("jira").http.requests)
        finally:
            await sources.aclose()

    started = time.monotonic()
    counters, list_requests = asyncio.run(listing())
    listed_at = time.monotonic()
    deadline = started + timeout
    while True:
        summary = totals(verification(services.pool, run_id))
        if summary.get("pending", 0) == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    indexed_at = time.monotonic()
    worker.drain(timeout=max(5.0, deadline - time.monotonic()))
    checked, missing = read_back(services, run_id, 200)
    finish_run(services.pool, run_id, counters)
    listed = int(counters.get("listed", 0))
    index_s = indexed_at - started
    return {
        "scopes": int(counters.get("scopes_total", 0)),
        "pages": int(counters.get("pages", 0)),
        "documents_listed": listed,
        "listing_wall_s": round(listed_at - started, 2),
        "indexing_wall_s": round(index_s, 2),
        "tail_after_listing_s": round(indexed_at - listed_at, 2),
        "documents_per_s": round(listed / index_s, 1) if index_s else 0.0,
        "indexed": summary.get("indexed", 0),
        "unchanged": summary.get("unchanged", 0),
        "failed": summary.get("failed", 0),
        "pending": summary.get("pending", 0),
        "embedding_requests": worker.embedding_requests - emb0,
        "index_writes": worker.index_writes - writes0,
        "jira_requests_listing": list_requests,
        "jira_requests_worker": worker.source_requests("jira") - wjira0,
        "read_back_sampled": checked,
        "read_back_missing": len(missing),
    }


def run(infra: Infra, quick: bool) -> dict[str, Any]:
    infra.reset()
    sandbox = Sandbox(["jira"], profile="scale")
    worker: Worker | None = None
    services = None
    try:
        settings = infra.settings(**sandbox.env)
        keys = _project_keys(sandbox.env, QUICK_PROJECTS) if quick else []
        worker = Worker(settings)
        services = open_services(settings)
        timeout = 120.0 if quick else 900.0
        first = _one_pass(services, settings, worker, keys, timeout)
        vectors = services.index.count()
        second = _one_pass(services, settings, worker, keys, timeout)
        figures = {f"run1_{k}": v for k, v in first.items()}
        figures["run1_vectors_in_index"] = vectors
        figures["run1_chunks_per_embedding_request"] = (
            round(vectors / first["embedding_requests"], 1) if first["embedding_requests"] else None)
        figures |= {f"run2_{k}": v for k, v in second.items()}
        figures["dead_letters"] = worker.dead_letters()
        return {
            "params": {
                "profile": "scale", "projects": keys or "all (72)",
                "jira_rate_limit": str(settings.source("jira").rate),
                "worker_threads": settings.worker_threads,
                "embedder": worker.pipeline.embedder.model,
                "embedding_dimensions": settings.embedding_dimensions,
                "index": type(services.index).__name__,
            },
            "figures": figures,
        }
    finally:
        if services is not None:
            services.close()
        if worker is not None:
            worker.stop()
        sandbox.stop()
