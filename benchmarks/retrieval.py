"""retrieval: recall@10 and MRR of search, vector-only against hybrid, on a labelled query set
over the sandbox corpus.

The Jira (``scale`` profile; ``small`` with ``--quick``), GitHub and Slack (``small``) simulators, in this process, are reconciled into
the index through the real path (reconciler listing → Redis → worker → pgvector, offline
embedder). The labels come from the simulators' data, not from any search: each indexed
document's own identifying fields (the document each query names is the relevant one):

- ``jira-key``: an issue key alone (``SUBS-652``) → that issue;
- ``jira-key-in-question``: the key inside a sentence ("what is the status of SUBS-652?");
- ``github-ref``: ``owner/repo#N`` → that issue or pull request;
- ``title``: a document's title words (minus any key) → that document (known-item search);
- ``person``: a person's full name → every document they reported, are assigned, or wrote in.

Each query runs through ``core.search.search`` (what the API, CLI and MCP call) three ways:
``vector`` (embedding similarity only), ``rrf`` (vector + Postgres full-text fused by
reciprocal rank, no identifier lane) and ``hybrid`` (the default: identifiers looked up exactly
and ranked first, then the fused list). Figures only; nothing asserts.
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

from benchmarks.harness import Infra, Worker
from core import access, search as core_search
from core.embeddings import build_embedder
from core.runtime import SourceSet
from reconciler.reconcile import Reconciler
from sandbox.server import SandboxServer, create_simulators

SOURCES = ["jira", "github", "slack"]
FAST = {f"{name.upper()}_RATE_LIMIT": "1000/s" for name in SOURCES}
TOP_K = 10
QUESTIONS = ["what is the status of {}?", "who is working on {}", "any update on {} this week",
             "{} blocked?", "summary of {} please"]


def labelled_queries(services: Any, rng: random.Random, quick: bool) -> list[dict[str, Any]]:
    """(kind, query, relevant document ids) from what was indexed."""
    with services.pool.connection() as conn:
        ids = [r[0] for r in conn.execute(
            "SELECT document_id FROM documents WHERE deleted_at IS NULL AND chunk_count > 0 ORDER BY document_id"
        ).fetchall()]
    metas = services.index.fetch([f"{d}#0" for d in ids])
    docs = {vid.rsplit("#", 1)[0]: meta for vid, meta in metas.items()}
    per = 4 if quick else 14
    queries: list[dict[str, Any]] = []
    jira = [d for d, m in docs.items() if m.get("source") == "jira" and m.get("key")]
    for d in rng.sample(jira, min(per, len(jira))):
        queries.append({"kind": "jira-key", "q": docs[d]["key"], "relevant": {d}})
    for d in rng.sample(jira, min(per // 2, len(jira))):
        queries.append({"kind": "jira-key-in-question", "q": rng.choice(QUESTIONS).format(docs[d]["key"]),
                        "relevant": {d}})
    gh = [d for d, m in docs.items() if m.get("source") == "github" and m.get("kind") in ("issue", "pull")]
    for d in rng.sample(gh, min(per, len(gh))):
        queries.append({"kind": "github-ref", "q": f"{docs[d]['repo']}#{docs[d]['number']}", "relevant": {d}})
    titled = [d for d, m in docs.items() if len(re.sub(r"^[A-Z][A-Z0-9]+-\d+: ", "", str(m.get("title", ""))).split()) >= 3]
    titles: dict[str, set[str]] = {}
    for d in titled:
        words = re.sub(r"^[A-Z][A-Z0-9]+-\d+: ", "", str(docs[d]["title"])).lstrip("#")
        titles.setdefault(words, set()).add(d)
    unique = [t for t, ds in titles.items() if len(ds) == 1]
    for t in rng.sample(unique, min(per, len(unique))):
        queries.append({"kind": "title", "q": t, "relevant": titles[t]})
    people: dict[str, set[str]] = {}
    for d, m in docs.items():
        names = {str(m.get(k) or "") for k in ("reporter", "assignee", "author")} | set(m.get("participants") or [])
        for name in names:
            if len(name.split()) >= 2:  # full names: "Alice Okafor"
                people.setdefault(name, set()).add(d)
    for name in sorted(people)[: per]:
        queries.append({"kind": "person", "q": name, "relevant": people[name]})
    return queries


async def evaluate(services: Any, settings: Any, queries: list[dict[str, Any]]) -> dict[str, Any]:
    embedder = build_embedder(settings)
    view = access.AccessView(see_all=True)
    modes = {"vector": "vector", "rrf": "hybrid", "hybrid": "hybrid"}
    out: dict[str, Any] = {}
    try:
        for name, mode in modes.items():
            per_kind: dict[str, list[tuple[float, float]]] = {}
            first_hits = 0
            for item in queries:
                query = core_search.parse({"q": item["q"], "top_k": TOP_K, "mode": mode})
                # "rrf": the fused list alone, without the exact-identifier lane.
                body = await core_search.search(services, embedder, settings, query, view,
                                                identifiers=name != "rrf")
                ranked = [r["document_id"] for r in body["results"]]
                relevant = item["relevant"]
                found = len(relevant & set(ranked[:TOP_K]))
                recall = found / min(len(relevant), TOP_K)
                rank = next((i for i, d in enumerate(ranked, start=1) if d in relevant), None)
                per_kind.setdefault(item["kind"], []).append((recall, 1.0 / rank if rank else 0.0))
                first_hits += bool(ranked and ranked[0] in relevant)
            all_scores = [s for scores in per_kind.values() for s in scores]
            out[name] = {
                "recall_at_10": round(sum(r for r, _ in all_scores) / len(all_scores), 3),
                "mrr": round(sum(m for _, m in all_scores) / len(all_scores), 3),
                "right_document_first": f"{first_hits}/{len(all_scores)}",
                "by_kind": {k: {"n": len(v), "recall_at_10": round(sum(r for r, _ in v) / len(v), 3),
                                "mrr": round(sum(m for _, m in v) / len(v), 3)} for k, v in sorted(per_kind.items())},
            }
    finally:
        await embedder.aclose()
    return out


def run(infra: Infra, quick: bool) -> dict[str, Any]:
    infra.reset()
    # Full run: Jira's seed-scale profile (72 projects, 7,556 issues) beside GitHub's and Slack's
    # small ones, so identifiers and names must be found among thousands of similar documents.
    sims = create_simulators(["jira"], profile="small" if quick else "scale", seed=3)
    sims |= create_simulators(["github", "slack"], profile="small", seed=3)
    for sim in sims.values():
        sim.knobs.rate_limit = 0
    sandbox = SandboxServer(sims).start()
    worker: Worker | None = None
    try:
        settings = infra.settings(**sandbox.env(), **FAST)
        worker = Worker(settings)
        services = worker.services

        async def reconcile() -> None:
            sources = SourceSet(settings, services.pool)
            try:
                reconciler = Reconciler(settings, services, sources, "bench")
                await reconciler.discover(SOURCES, force=True)
                for _ in range(100):  # each tick claims a bounded batch of due scopes
                    if not await reconciler.tick():
                        break
            finally:
                await sources.aclose()

        asyncio.run(reconcile())
        worker.drain(timeout=600)
        queries = labelled_queries(services, random.Random(5), quick)
        results = asyncio.run(evaluate(services, settings, queries))
        with services.pool.connection() as conn:
            documents = conn.execute("SELECT count(*) FROM documents WHERE deleted_at IS NULL").fetchone()[0]
        figures: dict[str, Any] = {"documents": documents, "vectors": services.index.count(),
                                   "queries": len(queries)}
        for name, r in results.items():
            figures[f"{name}_recall_at_10"] = r["recall_at_10"]
            figures[f"{name}_mrr"] = r["mrr"]
            figures[f"{name}_right_document_first"] = r["right_document_first"]
        for kind in results["vector"]["by_kind"]:
            figures[f"by_kind {kind} (n={results['vector']['by_kind'][kind]['n']}) recall@10 v/rrf/h"] = " / ".join(
                str(results[m]["by_kind"][kind]["recall_at_10"]) for m in results)
            figures[f"by_kind {kind} MRR v/rrf/h"] = " / ".join(
                str(results[m]["by_kind"][kind]["mrr"]) for m in results)
        return {"params": {"sources": SOURCES, "profile": "jira small" if quick else "jira scale, others small",
                           "top_k": TOP_K,
                           "embedder": worker.pipeline.embedder.model,
                           "embedding_dimensions": settings.embedding_dimensions,
                           "index": type(services.index).__name__},
                "figures": figures, "results": results,
                "queries": [{"kind": q["kind"], "q": q["q"], "relevant": sorted(q["relevant"])} for q in queries]}
    finally:
        if worker is not None:
            worker.stop()
        sandbox.stop()
