"""Each process writes a heartbeat row every few seconds; status reports a silent one as dead.

The heartbeat also says when a dependency the process needs is unreachable: while Postgres or
Redis is down, its info carries ``{"outage": "redis unreachable since 2026-…Z"}`` (written as
soon as Postgres takes the row again, for a Postgres outage), and the key is gone once the
dependency answers. ``Outages`` is what loops report to: one warning line when an outage
starts, one info line when it ends, never a traceback per attempt.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import psycopg
import redis
from psycopg_pool import ConnectionPool, PoolTimeout

from core import state

log = logging.getLogger("vector_sync.heartbeat")

#: The dependencies a process reports outages of, by the name status shows.
POSTGRES = "postgres"
REDIS = "redis"


def dependency_of(exc: BaseException | None) -> str | None:
    """``"postgres"`` or ``"redis"`` when ``exc`` (or what caused it) says that server cannot be
    reached or went away; None for any other error (a bug, a bad query, a source's failure)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)):
            return POSTGRES
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return REDIS
        if type(exc).__name__ == "ConnectionError" and type(exc).__module__.startswith("dramatiq"):
            return REDIS  # dramatiq.errors.ConnectionClosed and friends wrap redis errors
        exc = exc.__cause__ or exc.__context__
    return None


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Outages:
    """Which dependencies this process currently cannot reach, since when. Thread-safe."""

    def __init__(self, process: str = "") -> None:
        self.process = process
        self._since: dict[str, float] = {}
        self._last: str | None = None
        self._lock = threading.Lock()

    def down(self, dependency: str, exc: BaseException | None = None) -> bool:
        """Record a failed attempt; True (and one warning line) when this starts an outage."""
        with self._lock:
            if dependency in self._since:
                return False
            self._since[dependency] = time.time()
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300] if exc else ""
        log.warning("%s unreachable; retrying with backoff", dependency,
                    extra={"dependency": dependency, "error": detail})
        return True

    def up(self, dependency: str) -> bool:
        """Record a success; True (and one info line) when this ends an outage."""
        with self._lock:
            since = self._since.pop(dependency, None)
            if since is None:
                return False
            took = time.time() - since
            self._last = f"{dependency} unreachable from {_iso(since)} for {took:.0f}s"
        log.warning("%s reachable again after %.0fs", dependency, took,
                    extra={"dependency": dependency, "outage_s": round(took, 1)})
        return True

    def report(self, exc: BaseException) -> str | None:
        """``down()`` for the dependency ``exc`` names; returns it (None: not an outage)."""
        dependency = dependency_of(exc)
        if dependency is not None:
            self.down(dependency, exc)
        return dependency

    def current(self) -> dict[str, float]:
        with self._lock:
            return dict(self._since)

    def info(self, *, reachable: str | None = None) -> dict[str, str]:
        """What the heartbeat's info says: ``outage`` while any, ``last_outage`` after one
        (``reachable``: a dependency known to answer right now, left out)."""
        with self._lock:
            since = sorted(((d, at) for d, at in self._since.items() if d != reachable),
                           key=lambda item: item[1])
            last = self._last
        out: dict[str, str] = {}
        if since:
            out["outage"] = "; ".join(f"{dep} unreachable since {_iso(at)}" for dep, at in since)
        if last:
            out["last_outage"] = last
        return out


class PoolOutages(logging.Filter):
    """psycopg_pool logs a warning for every failed reconnection attempt of every pool while
    Postgres is down (and a "discarding broken connection" per dead connection after it comes
    back); those lines become the process's one outage report instead."""

    QUIET = ("error connecting in", "discarding broken connection", "discarding closed connection")

    def __init__(self, outages: Outages) -> None:
        super().__init__()
        self.outages = outages

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(self.QUIET[0]):
            self.outages.down(POSTGRES)
            return False
        return not message.startswith(self.QUIET[1:])


def quiet_reconnect_logs(outages: Outages) -> None:
    """Route psycopg_pool's reconnect warnings to ``outages`` (one filter per process)."""
    pool_log = logging.getLogger("psycopg.pool")
    for old in [f for f in pool_log.filters if isinstance(f, PoolOutages)]:
        pool_log.removeFilter(old)
    pool_log.addFilter(PoolOutages(outages))


class Backoff:
    """Exponential backoff with jitter and a cap, for loops waiting out an outage."""

    def __init__(self, first: float = 0.5, cap: float = 15.0) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        wait = min(self.cap, self.first * 2 ** self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return wait * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self.attempt = 0


class Heartbeat:
    """A daemon thread that beats every ``interval`` seconds until stopped.

    Each beat pings Redis (when given a client) and writes the row; a failure of either is an
    outage (``outages``), reported in the info of the next beat that reaches Postgres. The
    thread never dies of an error."""

    def __init__(
        self, pool: ConnectionPool, kind: str, interval: float,
        info: Callable[[], dict[str, Any]] | None = None,
        *, redis: Any = None, outages: Outages | None = None,
    ) -> None:
        self.pool = pool
        self.kind = kind
        self.name = state.process_name(kind)
        self.interval = interval
        self.info = info or dict
        self.redis = redis
        self.outages = outages or Outages(self.name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{kind}", daemon=True)

    def start(self) -> Heartbeat:
        quiet_reconnect_logs(self.outages)
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> bool:
        """One beat; True when the row was written."""
        if self.redis is not None:
            try:
                self.redis.ping()
                self.outages.up(REDIS)
            except Exception as exc:
                if not self.outages.report(exc):
                    log.warning("redis check failed: %s", exc)
        try:
            info = dict(self.info())
        except Exception as exc:  # the info callable must not stop the beat
            info = {"info_error": f"{type(exc).__name__}: {exc}"[:200]}
        try:
            # A row that gets written proves Postgres answers: it never claims otherwise.
            state.beat(self.pool, self.kind, self.name, {**info, **self.outages.info(reachable=POSTGRES)})
        except Exception as exc:  # a missed beat must not kill the process; status shows it
            if not self.outages.report(exc):
                log.warning("heartbeat failed: %s", exc)
            return False
        if self.outages.up(POSTGRES):
            try:  # record at once how long it lasted (last_outage)
                state.beat(self.pool, self.kind, self.name, {**info, **self.outages.info()})
            except Exception:
                return False
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except BaseException as exc:  # pragma: no cover - beat() catches everything
                log.warning("heartbeat thread error: %s", exc)

    def stop(self, *, forget: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval + 5)
        if forget:
            try:
                state.forget_process(self.pool, self.name)
            except Exception as exc:
                log.warning("could not remove heartbeat: %s", exc)
