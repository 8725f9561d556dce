"""scale-out: indexing throughput with 1, 2 and 3 worker processes on the same corpus.

The workers are the Procfile's ``worker`` process (``python -m workers``, run as a Procfile
runner runs it), N of them sharing one Postgres and one Redis, with OpenAI embeddings and
Pinecone as the index through their simulators (each in its own process, so neither shares a
GIL with the other or with us). For each N the state, the queue and the Pinecone index are
emptied, the N workers are started and wait on an empty queue (their start-up is not measured),
then the same corpus (documents with their content, 10 per message, as listing pages carry
them) is enqueued at once and timed until every document is indexed. Twice: with the
simulators answering at once (the machine's CPU is the limit), and with a delay on every OpenAI
and Pinecone request like a real one's (waiting is). The figures are documents per second and
each N's ratio to one worker, all from one run, with the load average before each pass: on a
machine with fewer cores than processes, the ratios say how much of the extra work the machine
could actually run in parallel.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import httpx

from benchmarks.harness import Infra, ProcfileProcess, Sandbox
from benchmarks.pipeline_skip import make_refs
from core import queue
from core.runtime import Services, open_services

WORKER_COUNTS = (1, 2, 3)
#: Seconds added to every OpenAI and Pinecone request: none (the simulators answer in
#: milliseconds, so the machine's CPU is the limit), then about what a request to the real
#: services takes over the internet (embedding a batch, upserting one), so waiting is.
CONDITIONS = {"local": {"openai": 0.0, "pinecone": 0.0}, "latency": {"openai": 0.15, "pinecone": 0.05}}
#: Documents per message: a listing page's shape, so N workers have messages to share.
PER_MESSAGE = 10


def _control(base: str, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, f"{base}/_sandbox{path}", timeout=30, **kwargs)
    response.raise_for_status()
    return response.json()


def _indexed(services: Services) -> int:
    with services.pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM documents WHERE indexed_at IS NOT NULL AND chunk_count > 0").fetchone()
    return int(row[0]) if row else 0


def _workers_beating(services: Services, pids: list[int]) -> bool:
    with services.pool.connection() as conn:
        rows = conn.execute("SELECT pid FROM heartbeats WHERE kind = 'worker' AND pid = ANY(%s)", (pids,)).fetchall()
    return len(rows) == len(pids)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(0.1)


def one_pass(infra: Infra, env: dict[str, str], clouds: dict[str, str], refs: list[Any], workers: int,
             latency: dict[str, float], timeout: float) -> dict[str, Any]:
    infra.reset()
    for name, base in clouds.items():
        _control(base, "PUT", "/knobs", json={"latency": latency[name]})
    _control(clouds["pinecone"], "PUT", "/index", json={"dimension": int(env.get("EMBEDDING_DIMENSIONS", "1536"))})
    _control(clouds["openai"], "DELETE", "/stats")
    services = open_services(infra.settings(**env), pool_size=1)
    procs: list[ProcfileProcess] = []
    try:
        procs = [ProcfileProcess("worker", infra.env(**env), infra.home / f"worker-{workers}-{n}.log")
                 for n in range(workers)]
        _wait(lambda: _workers_beating(services, [p.proc.pid for p in procs]), 120, "the workers to start")
        load = [round(x, 2) for x in os.getloadavg()]
        started = time.monotonic()
        messages = sum(queue.enqueue(services.broker, refs[i:i + PER_MESSAGE])
                       for i in range(0, len(refs), PER_MESSAGE))
        _wait(lambda: _indexed(services) >= len(refs), timeout, f"{len(refs)} documents indexed by {workers}")
        elapsed = time.monotonic() - started
        vectors = services.index.count()
        embeddings = _control(clouds["openai"], "GET", "/stats")
        return {"workers": workers, "load_average_1min_before": load[0], "messages": messages,
                "wall_s": round(elapsed, 2), "documents_per_s": round(len(refs) / elapsed, 1),
                "vectors": vectors, "embedding_requests": embeddings.get("requests"),
                "dead_letters": queue.dead_letter_count(services.broker)}
    finally:
        for proc in procs:
            proc.stop()
        services.close()


def run(infra: Infra, quick: bool) -> dict[str, Any]:
    n = 150 if quick else 1200
    refs = make_refs(n, random.Random(14))
    openai = Sandbox(["openai"], profile="empty")
    pinecone = Sandbox(["pinecone"], profile="empty")
    try:
        clouds = {"openai": openai.env["OPENAI_BASE_URL"].removesuffix("/v1"), "pinecone": pinecone.env["PINECONE_HOST"]}
        for base in clouds.values():  # request budgets are not what this measures
            _control(base, "PUT", "/knobs", json={"rate_limit": 0})
        env = {**openai.env, **pinecone.env, "PINECONE_NAMESPACE": "bench-scale-out"}
        figures: dict[str, Any] = {}
        for condition, latency in CONDITIONS.items():
            passes = [one_pass(infra, env, clouds, refs, count, latency, 120.0 if quick else 600.0)
                      for count in WORKER_COUNTS]
            one = passes[0]["documents_per_s"]
            for result in passes:
                label = f"{condition}_workers_{result['workers']}"
                figures |= {f"{label}_{k}": v for k, v in result.items() if k != "workers"}
                figures[f"{label}_ratio_to_1"] = round(result["documents_per_s"] / one, 2) if one else None
        settings = infra.settings(**env)
        return {"params": {"documents": n, "documents_per_message": PER_MESSAGE, "worker_counts": list(WORKER_COUNTS),
                           "worker_threads": settings.worker_threads, "embedder": settings.embedding_model,
                           "embedding_dimensions": settings.embedding_dimensions,
                           "index": "Pinecone (simulator, own process)", "cpus": os.cpu_count(),
                           "added_latency_s": CONDITIONS},
                "figures": figures}
    finally:
        openai.stop()
        pinecone.stop()
