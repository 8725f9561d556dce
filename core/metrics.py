"""Process-local metrics (prometheus-client): what only the process doing the work can measure.

Two kinds of metrics leave vector-sync:

- **Database-derived gauges** (source state and freshness, documents, queue depth and the age of
  the oldest waiting message, dead letters, drift, heartbeats) describe the whole deployment.
  The receiver renders them on ``/metrics`` from the cached status report
  (``core.status.StatusCache``): one set of status queries per ``STATUS_CACHE_TTL`` however
  many dashboards and scrapers poll. Any receiver answers for all.
- **Process-local histograms and counters** (this module) describe one process: the latency
  from a webhook's arrival to its document in the index, job durations, embedding and index
  call latency, upstream HTTP answers by source and status class, retries, dead letters. A
  worker or reconciler serves them itself on ``METRICS_PORT`` (:func:`serve`); the receiver
  appends its own to ``/metrics``. Prometheus scrapes every process and sums across them
  (docs/operations.md, "Metrics").

Every metric lives in :data:`REGISTRY` (not prometheus-client's global one, so the receiver's
``/metrics`` carries only ``vector_sync_*`` names). Recording never raises into the caller.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import disable_created_metrics, start_http_server

from core.errors import SettingsError

log = logging.getLogger("vector_sync.metrics")

# ``*_created`` samples double every counter's series for no use on a dashboard.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

#: Seconds, from a fraction of a second (a warm worker) to an hour (a backlog or an outage).
_LATENCY = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
_CALL = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

WEBHOOK_TO_INDEXED = Histogram(
    "vector_sync_webhook_to_indexed_seconds",
    "From a webhook's arrival at the receiver to its document written to (or deleted from) the "
    "index, retries included; per document",
    ["source"], buckets=_LATENCY, registry=REGISTRY)
JOB_DURATION = Histogram(
    "vector_sync_job_duration_seconds",
    "One sync job (a message of up to 100 refs), by queue and outcome (ok, partial, error)",
    ["queue", "outcome"], buckets=_CALL + (120, 300, 900), registry=REGISTRY)
EMBEDDING = Histogram(
    "vector_sync_embedding_seconds",
    "One embedding request, by backend and outcome",
    ["backend", "outcome"], buckets=_CALL, registry=REGISTRY)
INDEX = Histogram(
    "vector_sync_index_seconds",
    "One vector index call, by backend, operation and outcome",
    ["backend", "operation", "outcome"], buckets=_CALL, registry=REGISTRY)
UPSTREAM = Counter(
    "vector_sync_upstream_responses",
    "HTTP answers from the SaaS sources, by source and status class (2xx, 3xx, 4xx, 5xx, or "
    "error when no answer came)",
    ["source", "status_class"], registry=REGISTRY)
RETRIES = Counter(
    "vector_sync_retries",
    "Refs sent round again by the sync job: kind retry (a failure, counted against MAX_RETRIES) "
    "or wait (a rate limit or an outage)",
    ["source", "kind"], registry=REGISTRY)
DEAD_LETTERED = Counter(
    "vector_sync_dead_lettered",
    "Refs this process put in the dead letters",
    ["source"], registry=REGISTRY)
STATUS_BUILDS = Counter(
    "vector_sync_status_builds",
    "Status reports built by this process (each is one set of status queries to Postgres)",
    registry=REGISTRY)

#: Ports tried from ``METRICS_PORT`` up, so several processes on one host can share settings.
PORT_RANGE = 32


def render() -> str:
    """This process's metrics in the Prometheus text format."""
    return generate_latest(REGISTRY).decode("utf-8")


def status_class(status: int | None) -> str:
    return "error" if status is None else f"{status // 100}xx"


def upstream(source: str, status: int | None) -> None:
    """One answer from a source (``status`` None: no answer, a timeout or a refused connection)."""
    with _quiet():
        UPSTREAM.labels(source, status_class(status)).inc()


@contextlib.contextmanager
def timed(histogram: Histogram, **labels: str) -> Iterator[None]:
    """Observe the block's duration with ``labels`` and ``outcome`` (ok or error)."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    finally:
        with _quiet():
            histogram.labels(**labels, outcome=outcome).observe(time.perf_counter() - started)


def index_call(backend: str, operation: str) -> Any:
    """A decorator for a vector index method: its latency in ``vector_sync_index_seconds``."""
    def wrap(method: Any) -> Any:
        def timed_method(*args: Any, **kwargs: Any) -> Any:
            with timed(INDEX, backend=backend, operation=operation):
                return method(*args, **kwargs)
        timed_method.__name__ = method.__name__
        timed_method.__doc__ = method.__doc__
        return timed_method
    return wrap


def job_done(queue_name: str, seconds: float, outcome: str, webhook_at: float | None = None,
             written: Mapping[str, int] | None = None) -> None:
    """A sync job finished: its duration, and, when its message came from a webhook
    (``webhook_at``), the webhook-to-indexed latency of each document it wrote, per source."""
    with _quiet():
        JOB_DURATION.labels(queue_name.removesuffix(".DQ"), outcome).observe(seconds)
        if webhook_at is not None and written:
            latency = max(0.0, time.time() - float(webhook_at))
            for source, count in written.items():
                for _ in range(count):
                    WEBHOOK_TO_INDEXED.labels(source).observe(latency)


def sent_round(source: str, kind: str, refs: int = 1) -> None:
    with _quiet():
        RETRIES.labels(source, kind).inc(refs)


def dead_lettered(source: str, refs: int = 1) -> None:
    with _quiet():
        DEAD_LETTERED.labels(source).inc(refs)


def serve(port: int, host: str, kind: str) -> Any:
    """Serve :data:`REGISTRY` on ``host``:``port`` (the first free port of
    ``port``..``port + PORT_RANGE - 1``) from a daemon thread; returns the server (its
    ``server_port`` says which). ``port`` 0: nothing (METRICS_PORT unset). SettingsError when
    no port of the range can be bound."""
    if not port:
        return None
    last: OSError | None = None
    for candidate in range(port, min(port + PORT_RANGE, 65536)):
        try:
            server, _thread = start_http_server(candidate, addr=host, registry=REGISTRY)
        except OSError as exc:
            last = exc
            continue
        log.info("metrics endpoint listening", extra={"kind": kind, "address": f"{host}:{candidate}"})
        return server
    raise SettingsError(f"METRICS_PORT: no free port in {port}-{port + PORT_RANGE - 1} on {host} "
                        f"({last.strerror if last else 'out of range'})")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    try:
        yield
    except Exception:  # noqa: BLE001 - a metric must never fail the work it measures
        log.debug("could not record a metric", exc_info=True)
