"""memory: peak resident memory (RSS) of the worker and the receiver while N documents go in.

The Procfile's ``web`` (uvicorn with the app factory) and ``worker`` (``python -m workers``)
processes, each in its own OS process as a Procfile runner starts them, on one Postgres and one
Redis, offline embedder, pgvector. N synthetic documents (the ``search`` benchmark's, 80–400
words) are pushed through ``POST /api/documents`` (concurrency 20) and indexed by the worker;
then 200 searches. A sampler reads each process tree's RSS (the process and its children,
psutil) every 0.2 s: peak and final, per process, with the sizes 10,000 and 100,000.

100,000 documents take long on 2 cores (pgvector's HNSW inserts bound the worker: see
docs/benchmarks.md); ``BENCH_MEMORY_SIZES=10000`` runs one size. ``--quick``: 1,000.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from typing import Any

import httpx
import psutil

from benchmarks.harness import ADMIN_KEY, Infra, ProcfileProcess, Receiver
from benchmarks.search import WORDS, make_document, push_all
from core import state


class Sampler:
    """Peak RSS of named process trees, sampled every ``interval`` seconds in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = {name: 0 for name in pids}
        self.last = {name: 0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self, pid: int) -> int:
        try:
            proc = psutil.Process(pid)
            total = proc.memory_info().rss
            for child in proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                rss = self._rss(pid)
                self.last[name] = rss
                self.peak[name] = max(self.peak[name], rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def indexed(url: str) -> int:
    pool = state.open_pool(url, max_size=1)
    try:
        with pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM documents WHERE indexed_at IS NOT NULL").fetchone()
        return int(row[0]) if row else 0
    finally:
        pool.close()


def one_size(infra: Infra, n: int) -> dict[str, Any]:
    infra.reset()
    rng = random.Random(n)
    docs = [make_document(rng, i) for i in range(n)]
    env = infra.env()
    log_dir = infra.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    receiver = Receiver(env)
    worker = ProcfileProcess("worker", env, log_dir / f"worker-{n}.log")
    try:
        with Sampler({"receiver": receiver.proc.pid, "worker": worker.proc.pid}) as sampler:
            started = time.monotonic()
            push = asyncio.run(push_all(receiver.url, docs, 20))
            deadline = time.monotonic() + max(600.0, n * 0.1)
            while indexed(infra.urls["DATABASE_URL"]) < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{indexed(infra.urls['DATABASE_URL'])} of {n} indexed in time")
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"worker exited ({worker.proc.returncode})")
                time.sleep(1.0)
            indexed_s = time.monotonic() - started
            queries = [" ".join(rng.choice(WORDS) for _ in range(3)) for _ in range(200)]
            with httpx.Client(timeout=30, headers={"X-Admin-Key": ADMIN_KEY}) as client:
                statuses: dict[int, int] = {}
                for q in queries:
                    code = client.get(f"{receiver.url}/api/search", params={"q": q}).status_code
                    statuses[code] = statuses.get(code, 0) + 1
            time.sleep(sampler.interval * 2)  # one more sample after the last search
        mib = 1024 * 1024
        return {
            "documents": n,
            "push_statuses": push["statuses"],
            "pushed_to_indexed_s": round(indexed_s, 1),
            "search_statuses": statuses,
            **{f"{name}_peak_rss_mib": round(sampler.peak[name] / mib, 1) for name in sampler.pids},
            **{f"{name}_final_rss_mib": round(sampler.last[name] / mib, 1) for name in sampler.pids},
        }
    finally:
        worker.stop()
        receiver.stop()


def run(infra: Infra, quick: bool) -> dict[str, Any]:
    sizes = [1000] if quick else [int(s) for s in os.environ.get("BENCH_MEMORY_SIZES", "10000,100000").split(",")]
    figures: dict[str, Any] = {}
    for n in sizes:
        figures[f"{n} documents"] = one_size(infra, n)
    return {"params": {"sizes": sizes, "sample_interval_s": 0.2}, "figures": figures}
