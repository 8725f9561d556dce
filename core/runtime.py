"""What a process holds while it runs: the pool, the index, the broker, and the connectors.

``Services`` is built once per process from ``Settings`` (``open_services``) and closed at exit.
``SourceSet`` builds connectors lazily inside the running event loop (an ``httpx.AsyncClient``
and an async Redis client belong to the loop that made them), each with the request budget
shared through Redis and a ``SourceContext`` that reads our own state.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import redis
import redis.asyncio as aioredis
from dramatiq.brokers.redis import RedisBroker
from psycopg_pool import ConnectionPool

from core import facts as facts_store
from core import state
from core.documents import Ref
from core.errors import NotConfigured, SettingsError, VectorSyncError
from core.index import VectorIndex, build_index
from core.queue import enqueue as enqueue_refs
from core.queue import make_broker
from core.ratelimit import RedisRateLimiter
from core.settings import Settings
from core.sources import Scope, Source, build_source


@dataclass
class Services:
    settings: Settings
    pool: ConnectionPool
    index: VectorIndex
    broker: RedisBroker

    def close(self) -> None:
        self.index.close()
        self.pool.close()
        self.broker.close()


def require_urls(settings: Settings) -> None:
    """Processes started on their own need real URLs; ``vector-sync up`` provides embedded ones."""
    for name, value in (("DATABASE_URL", settings.database_url), ("REDIS_URL", settings.redis_url)):
        if not value:
            raise SettingsError(
                f"{name} is not set: run 'vector-sync up' (or 'make run') to use the embedded "
                f"defaults, or set {name}"
            )


class Unreachable(VectorSyncError):
    """Postgres or Redis cannot be reached at start-up. The message is one line naming the
    setting, where it points (never its password) and the cause: ``DATABASE_URL: cannot
    connect to db.example:5432: unknown host``. Raised from the driver's error, so the
    patient start of a long-running process still sees an outage and waits."""


class DatabaseUnreachable(Unreachable, psycopg.OperationalError):
    """Postgres cannot be reached: still a ``psycopg.OperationalError`` to every check that
    classifies errors by type (status's "postgres unreachable", outage detection)."""


class RedisUnreachable(Unreachable, redis.ConnectionError):
    """Redis cannot be reached: still a ``redis.ConnectionError`` to every check."""


#: Seconds a start-up probe of Postgres or Redis may take (the pool itself waits 10 s, with a
#: warning per attempt, and then says only ``PoolTimeout``).
PROBE_TIMEOUT = 5


def probe_database(url: str, timeout: float = PROBE_TIMEOUT) -> None:
    """One direct connection to ``DATABASE_URL``; :class:`Unreachable` naming the cause."""
    try:
        psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=True).close()
    except psycopg.Error as exc:
        raise DatabaseUnreachable(f"DATABASE_URL: cannot connect to {_database_target(url)}: "
                          f"{_cause(str(exc))}") from exc


def probe_redis(url: str, timeout: float = PROBE_TIMEOUT) -> None:
    """One PING to ``REDIS_URL``; :class:`Unreachable` naming the cause."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise RedisUnreachable(f"REDIS_URL: cannot connect to {_redis_target(url)}: "
                          f"{_cause(str(exc))}") from exc


def probe(settings: Settings) -> None:
    """Both servers answer (the URLs must be set)."""
    probe_database(settings.database_url)
    probe_redis(settings.redis_url)


#: What a driver's message means, in the words an operator needs (first match wins).
_CAUSES = (
    (re.compile(r"resolve host|could not translate host name|Name or service not known|"
                r"nodename nor servname|Temporary failure in name resolution|getaddrinfo", re.I),
     "unknown host (the name does not resolve)"),
    (re.compile(r"Connection refused|Error 111\b", re.I), "connection refused (nothing listens there)"),
    (re.compile(r"password authentication failed|invalid username-password|WRONGPASS|"
                r"invalid password|NOAUTH|Authentication required|client already authenticated|"
                r"AUTH <password> called without", re.I),
     "authentication failed (wrong user or password)"),
    (re.compile(r'role "[^"]*" does not exist', re.I), "authentication failed (no such user)"),
    (re.compile(r'database "[^"]*" does not exist', re.I), "no such database"),
    (re.compile(r"timeout|timed out", re.I), "timed out"),
    (re.compile(r"No such file or directory|Error 2 connecting", re.I), "no server on that socket"),
)


def _cause(message: str) -> str:
    """The cause, one line, with the driver's own words after it (never a password: drivers
    do not echo them)."""
    detail = " ".join(message.split())
    detail = re.sub(r"\s*Is the server running.*$", "", detail)
    for pattern, cause in _CAUSES:
        if pattern.search(detail):
            return f"{cause} [{detail[:200]}]"
    return detail[:200] or "unknown error"


def _database_target(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:  # a malformed URL: say so without echoing it
        return "the server it names"
    host = str(info.get("host") or "localhost")
    if host.startswith("/"):
        return f"the socket in {host}"
    return f"{host}:{info.get('port') or 5432}"


def _redis_target(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"the socket {parts.path}"
    try:
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "the server it names"


def open_services(
    settings: Settings, *, migrate: bool = True, broker_middleware: list[Any] | None = None,
    pool_size: int = 8,
) -> Services:
    require_urls(settings)
    # Redis is not probed here: the receiver starts without it (and says so in /readyz).
    probe_database(settings.database_url)
    pool = state.open_pool(settings.database_url, max_size=pool_size)
    try:
        if migrate:
            state.migrate(pool)
        index = build_index(settings, pool)
        broker = make_broker(settings.redis_url, middleware=broker_middleware,
                             recovery_after=settings.worker_recovery_after)
    except BaseException:
        pool.close()
        raise
    return Services(settings, pool, index, broker)


def open_services_patiently(
    settings: Settings, stop: threading.Event, *, pool_size: int = 8, cap: float = 15.0,
) -> Services | None:
    """``open_services`` for a long-running process: while Postgres or Redis cannot be reached
    (a process started during an outage), wait with a capped backoff and try again, one log
    line per outage; None when ``stop`` is set first. Bad settings still raise at once."""
    from core.heartbeat import Backoff, Outages, dependency_of

    outages = Outages()
    backoff = Backoff(first=1.0, cap=cap)
    while not stop.is_set():
        try:
            services = open_services(settings, pool_size=pool_size)
        except Exception as exc:
            dependency = dependency_of(exc)
            if dependency is None:
                raise
            outages.down(dependency, exc)
            stop.wait(backoff.next())
            continue
        for dependency in list(outages.current()):
            outages.up(dependency)
        return services
    return None


class DatabaseContext:
    """SourceContext over our state: the ``scopes`` table (which Jira projects are active, …),
    and a ``core.facts.FactStore`` (source facts, follow-up syncs on the live queue)."""

    def __init__(self, pool: ConnectionPool, redis_url: str = "") -> None:
        self.pool = pool
        self.redis_url = redis_url
        self._broker: RedisBroker | None = None

    async def remember(self, document_id: str, source: str, scope: str,
                       facts: Mapping[str, Any], parts: Iterable[str] = (),
                       version: float = 0.0) -> None:
        await asyncio.to_thread(facts_store.remember, self.pool, document_id, source, scope,
                                facts, list(parts), version)

    async def forget(self, document_id: str) -> None:
        await asyncio.to_thread(facts_store.forget, self.pool, document_id)

    async def recall(self, source: str, scope: str) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(facts_store.recall, self.pool, source, scope)

    async def owner(self, source: str, scope: str, part: str) -> str | None:
        return await asyncio.to_thread(facts_store.owner, self.pool, source, scope, part)

    async def enqueue(self, refs: list[Ref]) -> None:
        if not refs:
            return
        if self._broker is None:
            if not self.redis_url:
                raise NotConfigured("no REDIS_URL: a connector cannot ask for a follow-up sync")
            self._broker = make_broker(self.redis_url)
        await asyncio.to_thread(enqueue_refs, self._broker, refs)

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    async def active_scopes(self, source: str) -> list[Scope]:
        def query() -> list[Scope]:
            with self.pool.connection() as conn:
                rows = conn.execute(
                    "SELECT key, name FROM scopes WHERE source = %s AND active ORDER BY key",
                    (source,),
                ).fetchall()
            return [Scope(source, key, name) for key, name in rows]

        return await asyncio.to_thread(query)


@dataclass
class SourceSet:
    """Connectors for the configured sources, built on first use in the current event loop."""

    settings: Settings
    pool: ConnectionPool
    max_wait: float = 30.0
    _client: httpx.AsyncClient | None = None
    _redis: aioredis.Redis | None = None
    _sources: dict[str, Source] = field(default_factory=dict)
    _context: DatabaseContext | None = None

    def get(self, name: str) -> Source:
        if name in self._sources:
            return self._sources[name]
        if name not in self.settings.sources:
            raise NotConfigured(f"unknown source {name!r}")
        source_settings = self.settings.source(name)
        if not source_settings.configured:
            raise NotConfigured(f"{name} is not configured (set its credentials)")
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.http_timeout, connect=5.0),
                transport=httpx.AsyncHTTPTransport(retries=1),
                limits=httpx.Limits(max_connections=50),
            )
            self._redis = aioredis.from_url(self.settings.redis_url)
        limiter = RedisRateLimiter(self._redis, name, source_settings.rate, max_wait=self.max_wait)
        if self._context is None:
            self._context = DatabaseContext(self.pool, self.settings.redis_url or "")
        source = build_source(source_settings, self._client, limiter, self._context)
        self._sources[name] = source
        return source

    def configured(self) -> list[str]:
        return self.settings.configured_sources()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._redis is not None:
            await self._redis.aclose()
        if self._context is not None:
            self._context.close()
        self._client = None
        self._redis = None
        self._context = None
        self._sources.clear()
