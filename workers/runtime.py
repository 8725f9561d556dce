"""A worker process: the broker with asyncio support, the pipeline, and a heartbeat."""

from __future__ import annotations

import logging
import threading

from dramatiq import Worker
from dramatiq.middleware.asyncio import AsyncIO

from core.embeddings import build_embedder
from core.embeddings.batching import BatchingEmbedder
from core.heartbeat import Heartbeat
from core.runtime import Services, SourceSet, open_services
from core.settings import Settings
from workers.actors import register
from workers.sync import Pipeline

log = logging.getLogger("vector_sync.worker")


class WorkerRuntime:
    """Owns what a worker process needs; the pipeline is built inside the event loop."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._pipeline: Pipeline | None = None
        self.actor = None

    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            settings = self.services.settings
            self._pipeline = Pipeline(
                settings,
                self.services.pool,
                self.services.index,
                BatchingEmbedder(build_embedder(settings), max_inputs=settings.embedding_batch_size),
                SourceSet(settings, self.services.pool),
            )
        return self._pipeline


def start_worker(settings: Settings, services: Services | None = None) -> tuple[Worker, WorkerRuntime, Heartbeat]:
    """Start consuming the sync queue in this process (threads); returns what to stop."""
    services = services or open_services(settings)
    services.broker.add_middleware(AsyncIO())
    runtime = WorkerRuntime(services)
    runtime.actor = register(services.broker, runtime.pipeline, max_retries=settings.max_retries)
    worker = Worker(services.broker, worker_threads=settings.worker_threads, worker_timeout=500)
    worker.start()
    heartbeat = Heartbeat(services.pool, "worker", settings.heartbeat_interval).start()
    log.info("worker started", extra={"threads": settings.worker_threads})
    return worker, runtime, heartbeat


def run_worker(settings: Settings, stop: threading.Event) -> None:
    worker, runtime, heartbeat = start_worker(settings)
    try:
        stop.wait()
    finally:
        log.info("worker stopping")
        # In-flight jobs get 5 s; one still running (waiting for a budget slot, say) is left
        # unacknowledged and Redis hands it to another worker: jobs are idempotent.
        worker.stop(timeout=5_000)
        heartbeat.stop()
        runtime.services.close()
