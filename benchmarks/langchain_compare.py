"""langchain-compare: vector-sync against LangChain's ``index()`` on the same work.

5,000 synthetic documents (the ``search`` benchmark's vocabulary, 80–400 words, so some need
two chunks) loaded three ways into the same Postgres, with the same embedder (the offline one,
1,536 dimensions; for LangChain wrapped as an ``Embeddings``) and the same embedding inputs
(LangChain gets exactly the chunks our pipeline embeds, title included, one LangChain
``Document`` per chunk, ``source`` = our document id):

- **vector-sync**: the refs with their content enqueued (a listing page's shape, 100 per
  message) and indexed by a real worker in this process (pgvector, HNSW). The initial load goes
  as a backfill's does (the bulk queue, the index told of the load, so the HNSW graph is built
  once afterwards: ``ours_as_backfill``), timed until the HNSW index is back; the re-syncs as a
  reconcile pass's pages (the live queue, the index kept up row by row).
- **LangChain + HNSW**: ``langchain_core.indexing.index`` with ``SQLRecordManager``
  (langchain-classic) and ``PGVector`` (langchain-postgres), an HNSW index (cosine) created on
  its embedding column before loading, ``cleanup="incremental"``.
- **LangChain, no index**: the same without the HNSW index (plain table inserts).

Then three re-syncs of all 5,000 (as a reconcile pass re-lists them) on vector-sync and on
LangChain + HNSW: 1 % of the documents' text changed, nothing changed, and 10 % changed only in
metadata (a ``status`` field and ``updated_at``). Wall-time ratios (ours / LangChain) against
the targets of issue 12, and the embedding inputs each made. ``--quick``: 500 documents.

LangChain is a benchmark-only dependency, in a venv of its own (``make bench`` builds
``.venv-bench`` from constraints-bench.txt: langchain-postgres allows only pgvector < 0.4).
"""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg

from benchmarks.harness import Infra, Worker
from benchmarks.search import WORDS
from core import queue
from core.documents import Document, Ref
from core.embeddings.offline import hash_vector

DIM = 1536
TARGETS = {"initial_load": 0.33, "initial_load_vs_no_index": 1.0,
           "resync_1pct_changed": 0.3, "resync_0pct_changed": 0.2, "resync_metadata_10pct": 0.4}


def make_documents(n: int, rng: random.Random) -> list[Document]:
    docs = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 400)))
        docs.append(Document(source="api", id=f"lc-{i:06d}", scope=f"team-{i % 7}", title=f"Document {i}",
                             text=text, updated_at=1_700_000_000.0 + i, url=f"https://example.com/{i}",
                             author="bench", metadata={"status": "open"}))
    return docs


def changed(docs: list[Document], share: float, rng: random.Random, *, text: bool) -> list[Document]:
    out = list(docs)
    for i in rng.sample(range(len(docs)), int(len(docs) * share)):
        d = docs[i]
        if text:
            words = d.text.split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)
            out[i] = Document(**{**d.__dict__, "text": " ".join(words) + " edited",
                                 "updated_at": d.updated_at + 1000})
        else:
            out[i] = Document(**{**d.__dict__, "metadata": {"status": "closed"},
                                 "updated_at": d.updated_at + 1000})
    return out


class CountingEmbeddings:
    """Our offline embedder as a LangChain ``Embeddings`` (the same function the worker calls),
    counting inputs."""

    def __init__(self) -> None:
        from langchain_core.embeddings import Embeddings

        class _Wrapped(Embeddings):
            inputs = 0

            def embed_documents(self, texts: list[str]) -> list[list[float]]:
                _Wrapped.inputs += len(texts)
                return [hash_vector(t, DIM) for t in texts]

            def embed_query(self, text: str) -> list[float]:
                return hash_vector(text, DIM)

        self.embeddings = _Wrapped()

    @property
    def inputs(self) -> int:
        return type(self.embeddings).inputs


def langchain_documents(docs: list[Document], settings: Any) -> list[Any]:
    from langchain_core.documents import Document as LCDocument

    from workers.sync import document_chunks, embedding_input

    out = []
    for d in docs:
        for n, chunk in enumerate(document_chunks(d, settings)):
            out.append(LCDocument(page_content=embedding_input(d, chunk),
                                  metadata={"source": d.document_id, "chunk": n, "title": d.title,
                                            "scope": d.scope, "status": d.metadata.get("status")}))
    return out


class LangChainSide:
    def __init__(self, database_url: str, name: str, hnsw: bool) -> None:
        from langchain_classic.indexes import SQLRecordManager
        from langchain_postgres import PGVector

        url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
        self.counting = CountingEmbeddings()
        self.store = PGVector(embeddings=self.counting.embeddings, collection_name=name, connection=url,
                              embedding_length=DIM, use_jsonb=True, pre_delete_collection=True)
        self.records = SQLRecordManager(f"pgvector/{name}", db_url=url)
        self.records.create_schema()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM upsertion_record WHERE namespace = %s", (f"pgvector/{name}",))
            if hnsw:
                conn.execute("CREATE INDEX IF NOT EXISTS bench_lc_hnsw ON langchain_pg_embedding "
                             "USING hnsw (embedding vector_cosine_ops)")
            else:
                conn.execute("DROP INDEX IF EXISTS bench_lc_hnsw")

    def load(self, lc_docs: list[Any]) -> dict[str, Any]:
        from langchain_core.indexing import index

        inputs0 = self.counting.inputs
        started = time.monotonic()
        result = index(lc_docs, self.records, self.store, cleanup="incremental", source_id_key="source")
        return {"wall_s": round(time.monotonic() - started, 2), "embedding_inputs": self.counting.inputs - inputs0,
                "result": dict(result)}


def ours(worker: Worker, docs: list[Document], inputs: list[int]) -> dict[str, Any]:
    refs = [Ref(source=d.source, id=d.id, scope=d.scope, event_at=d.updated_at, document=d) for d in docs]
    inputs0 = inputs[0]
    started = time.monotonic()
    queue.enqueue(worker.services.broker, refs)
    worker.drain(timeout=1800)
    return {"wall_s": round(time.monotonic() - started, 2), "embedding_inputs": inputs[0] - inputs0}


def ours_as_backfill(worker: Worker, docs: list[Document], inputs: list[int]) -> dict[str, Any]:
    """The initial load as the product makes one: a backfill's pages on the bulk queue, with the
    index told of the load (reconciler.backfill does the same), so pgvector defers its HNSW graph
    and builds it once. Timed until every document is indexed *and* the HNSW index is back, so
    the comparison with LangChain's HNSW side ends with the same thing: a searchable index."""
    index = worker.services.index
    owner = "backfill:bench-langchain"
    refs = [Ref(source=d.source, id=d.id, scope=d.scope, event_at=d.updated_at, document=d) for d in docs]
    inputs0 = inputs[0]
    started = time.monotonic()
    for n in range(0, len(refs), 100):  # a listing page at a time, as a backfill enqueues
        queue.enqueue(worker.services.broker, refs[n:n + 100], bulk=True)
        index.bulk_progress(owner, n + len(refs[n:n + 100]))
    index.bulk_finished(owner)
    worker.drain(timeout=1800)
    indexed = time.monotonic() - started
    while not index.settle():  # the watcher builds it once the quiet period is over; or here
        time.sleep(0.05)
    return {"wall_s": round(time.monotonic() - started, 2), "indexed_s": round(indexed, 2),
            "embedding_inputs": inputs[0] - inputs0}


def count_inputs(worker: Worker) -> list[int]:
    """Count the inputs the worker's embedder is asked for (wrapping its innermost embed)."""
    embedder = worker.pipeline.embedder
    inner = getattr(embedder, "inner", embedder)
    counter = [0]
    original = inner.embed

    async def embed(texts: list[str]) -> list[list[float]]:
        counter[0] += len(texts)
        return await original(texts)

    inner.embed = embed
    return counter


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("inf")


def run(infra: Infra, quick: bool) -> dict[str, Any]:
    infra.reset()
    n = 500 if quick else 5000
    rng = random.Random(21)
    docs = make_documents(n, rng)
    settings = infra.settings()
    figures: dict[str, Any] = {}
    url = infra.urls["DATABASE_URL"]

    # LangChain without any vector index first (its own collection; the table is shared).
    plain = LangChainSide(url, "bench_plain", hnsw=False)
    lc_docs = langchain_documents(docs, settings)
    figures["chunks (vectors) per side"] = len(lc_docs)
    figures["langchain_no_index initial_load"] = plain.load(lc_docs)
    plain.store.delete_collection()

    lc = LangChainSide(url, "bench_hnsw", hnsw=True)
    figures["langchain_hnsw initial_load"] = lc.load(lc_docs)

    worker = Worker(settings)
    try:
        inputs = count_inputs(worker)
        figures["vector_sync initial_load"] = ours_as_backfill(worker, docs, inputs)
        ratios = {
            "initial_load": ratio(figures["vector_sync initial_load"]["wall_s"],
                                  figures["langchain_hnsw initial_load"]["wall_s"]),
            # Both sides searchable by an exact scan, neither with an ANN index yet: ours once
            # every document is indexed (the HNSW build still to come), LangChain's plain table.
            "initial_load_vs_no_index": ratio(figures["vector_sync initial_load"]["indexed_s"],
                                              figures["langchain_no_index initial_load"]["wall_s"]),
        }
        # The re-syncs follow one another: each starts from what the previous one left, the
        # same on both sides.
        current = docs
        for name in ("resync_1pct_changed", "resync_0pct_changed", "resync_metadata_10pct"):
            if name == "resync_1pct_changed":
                current = changed(current, 0.01, random.Random(1), text=True)
            elif name == "resync_metadata_10pct":
                current = changed(current, 0.10, random.Random(2), text=False)
            figures[f"langchain_hnsw {name}"] = lc.load(langchain_documents(current, settings))
            figures[f"vector_sync {name}"] = ours(worker, current, inputs)
            ratios[name] = ratio(figures[f"vector_sync {name}"]["wall_s"], figures[f"langchain_hnsw {name}"]["wall_s"])
        figures["vectors_in_our_index"] = worker.services.index.count()
        figures["dead_letters"] = worker.dead_letters()
    finally:
        worker.stop()
    for name, value in ratios.items():
        target = TARGETS[name]
        figures[f"ratio {name} (target <= {target})"] = f"{value} {'met' if value <= target else 'NOT met'}"
    return {"params": {"documents": n, "dimensions": DIM, "embedder": "offline-hashing-v2",
                       "worker_threads": settings.worker_threads}, "figures": figures}

