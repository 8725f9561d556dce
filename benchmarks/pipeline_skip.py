"""pipeline-skip: re-syncing N unchanged documents through the real worker.

N documents are enqueued with their content (as listing pages and the push API do) and indexed
once; then the very same refs are enqueued again and the worker must find every one unchanged:
no embedding request, no index write. Measured twice: refs packed 100 per message (a listing
page, the reconciler/backfill shape) and one ref per message (the webhook / push API shape).
"""

from __future__ import annotations

import random
import time
from typing import Any

from benchmarks.harness import Infra, Worker
from benchmarks.search import WORDS
from core import queue
from core.documents import Document, Ref


def make_refs(n: int, rng: random.Random) -> list[Ref]:
    refs = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 400)))
        doc = Document(source="api", id=f"skip-{i:06d}", scope=f"team-{i % 7}", title=f"Document {i}",
                       text=text, updated_at=1_700_000_000.0 + i, url=f"https://example.com/{i}",
                       author="bench", metadata={"scope": f"team-{i % 7}"})
        refs.append(Ref(source="api", id=doc.id, scope=doc.scope, event_at=doc.updated_at, document=doc))
    return refs


def timed_pass(worker: Worker, refs: list[Ref], per_message: int) -> dict[str, Any]:
    emb0, writes0 = worker.embedding_requests, worker.index_writes
    started = time.monotonic()
    if per_message == 1:
        messages = sum(queue.enqueue(worker.services.broker, [ref]) for ref in refs)
    else:
        messages = queue.enqueue(worker.services.broker, refs)
    enqueued_at = time.monotonic()
    worker.drain(timeout=900)
    elapsed = time.monotonic() - started
    return {
        "messages": messages,
        "enqueue_s": round(enqueued_at - started, 2),
        "wall_s": round(elapsed, 2),
        "documents_per_s": round(len(refs) / elapsed, 1),
        "embedding_requests": worker.embedding_requests - emb0,
        "index_writes": worker.index_writes - writes0,
    }


def unchanged_count(worker: Worker, since: float) -> int:
    with worker.services.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM documents WHERE checked_at >= to_timestamp(%s) "
            "AND (indexed_at IS NULL OR indexed_at < to_timestamp(%s))", (since, since)).fetchone()
    return int(row[0]) if row else 0


def run(infra: Infra, quick: bool) -> dict[str, Any]:
    infra.reset()
    n = 300 if quick else 2000
    refs = make_refs(n, random.Random(11))
    settings = infra.settings()
    worker = Worker(settings)
    try:
        first = timed_pass(worker, refs, 100)
        figures: dict[str, Any] = {f"initial_index_{k}": v for k, v in first.items()}
        figures["vectors_in_index"] = worker.services.index.count()
        for label, per_message in (("batched100", 100), ("single", 1)):
            since = time.time()
            result = timed_pass(worker, refs, per_message)
            figures |= {f"resync_{label}_{k}": v for k, v in result.items()}
            figures[f"resync_{label}_recorded_unchanged"] = unchanged_count(worker, since)
        figures["dead_letters"] = worker.dead_letters()
        return {"params": {"documents": n, "worker_threads": settings.worker_threads,
                           "embedder": worker.pipeline.embedder.model, "index": type(worker.services.index).__name__},
                "figures": figures}
    finally:
        worker.stop()
