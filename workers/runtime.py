"""A worker process: the broker with asyncio support, the pipeline, a heartbeat, and the
broker recovery that hands a dead worker's unacknowledged messages to the living."""

from __future__ import annotations

import logging
import threading
from typing import Any

from dramatiq import Middleware, Worker
from dramatiq.middleware.asyncio import AsyncIO

from core import metrics
from core.embeddings import build_embedder
from core.embeddings.batching import BatchingEmbedder
from core.heartbeat import Backoff, Heartbeat, Outages
from core.queue import QUEUES, RECOVERY_INTERVAL, requeue_dead_workers
from core.runtime import Services, SourceSet, open_services, open_services_patiently
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


class Recovery(Middleware):
    """While the worker runs, a thread puts the unacknowledged messages of dead workers back on
    their queues every ``RECOVERY_INTERVAL`` seconds (``core.queue.requeue_dead_workers``), so a
    ``kill -9``'d worker's messages are processed again within about ``WORKER_RECOVERY_AFTER`` +
    ``RECOVERY_INTERVAL`` seconds. A Redis outage is reported to ``outages`` and waited out."""

    def __init__(self, outages: Outages | None = None, interval: float = RECOVERY_INTERVAL) -> None:
        self.outages = outages or Outages()
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sweeps = 0

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(broker,), name="broker-recovery", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self, broker: Any) -> None:
        backoff = Backoff(first=1.0, cap=self.interval)
        wait = 0.0
        while not self._stop.wait(wait):
            try:
                requeue_dead_workers(broker)
                self.sweeps += 1
                self.outages.up("redis")
                backoff.reset()
                wait = self.interval
            except Exception as exc:
                if self.outages.report(exc) is None:
                    log.warning("broker recovery sweep failed: %s", exc)
                wait = backoff.next()


class ConsumerOutages(logging.Filter):
    """Dramatiq's consumers log a line per queue every 3 s while Redis is down (and reconnect by
    themselves). Those lines become one outage report instead: ``outages`` logs when it starts
    and ends, and the heartbeat says so meanwhile."""

    NOISY = ("Consumer encountered a connection error", "Restarting consumer in",
             "Failed to post_process_message")

    def __init__(self, outages: Outages) -> None:
        super().__init__()
        self.outages = outages

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(self.NOISY[0]):
            self.outages.down("redis", record.args[0] if isinstance(record.args, tuple) and record.args
                              and isinstance(record.args[0], BaseException) else None)
            return False
        if message.startswith(self.NOISY[2]):
            # Dramatiq retries the ack every 5 s until Redis is back; the message is safe.
            self.outages.down("redis")
            return False
        return not message.startswith(self.NOISY[1])


def consumer_loggers() -> list[logging.Logger]:
    """Dramatiq's consumer thread loggers: one per queue (``ConsumerThread(sync)``, …)."""
    names = [name for queue in QUEUES for name in (queue, f"{queue}.DQ")]
    return [logging.getLogger(f"dramatiq.worker.ConsumerThread({name})") for name in names]


def start_worker(settings: Settings, services: Services | None = None) -> tuple[Worker, WorkerRuntime, Heartbeat]:
    """Start consuming the sync queue in this process (threads); returns what to stop."""
    services = services or open_services(settings)
    services.broker.add_middleware(AsyncIO())
    outages = Outages()
    services.broker.add_middleware(Recovery(outages))
    quiet = ConsumerOutages(outages)
    for consumer_log in consumer_loggers():
        for old in [f for f in consumer_log.filters if isinstance(f, ConsumerOutages)]:
            consumer_log.removeFilter(old)
        consumer_log.addFilter(quiet)
    runtime = WorkerRuntime(services)
    runtime.actor = register(services.broker, runtime.pipeline, max_retries=settings.max_retries)
    worker = Worker(services.broker, worker_threads=settings.worker_threads, worker_timeout=500)
    worker.start()
    # The broker id names this process's Dramatiq consumer (its ``__acks__`` sets in Redis), so
    # messages held by a worker can be traced to its process.
    broker_id = services.broker.broker_id
    heartbeat = Heartbeat(services.pool, "worker", settings.heartbeat_interval, lambda: {"broker_id": broker_id},
                          redis=services.broker.client, outages=outages).start()
    log.info("worker started", extra={"threads": settings.worker_threads})
    return worker, runtime, heartbeat


def run_worker(settings: Settings, stop: threading.Event) -> None:
    metrics.serve(settings.metrics_port, settings.metrics_host, "worker")  # METRICS_PORT, if set
    services = open_services_patiently(settings, stop)
    if services is None:
        return
    worker, runtime, heartbeat = start_worker(settings, services)
    try:
        stop.wait()
    finally:
        log.info("worker stopping")
        # In-flight jobs get 5 s; one still running (waiting for a budget slot, say) is left
        # unacknowledged and Redis hands it to another worker: jobs are idempotent.
        worker.stop(timeout=5_000)
        heartbeat.stop()
        runtime.services.close()
