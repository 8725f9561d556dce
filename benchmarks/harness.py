"""What every benchmark needs: real Postgres/Redis, a worker, a receiver, the sandbox.

Nothing here is imported from ``tests/``; the patterns follow ``tests/conftest.py``.
Every process started here is stopped here (by its own handle), and every load is bounded.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx

from core import state
from core.embedded import EmbeddedPostgres, EmbeddedRedis
from core import queue
from core.runtime import Services, open_services
from core.settings import Settings

ADMIN_KEY = "bench-admin-key"
ROOT = Path(__file__).resolve().parent.parent

#: Product defaults except what a benchmark must set (admin key, quiet logs, no sandbox auto-start).
BASE_ENV = {
    "ADMIN_API_KEY": ADMIN_KEY,
    "SANDBOX": "off",
    "LOG_LEVEL": "WARNING",
}

TABLES = ("scopes", "documents", "runs", "run_items", "deliveries", "heartbeats", "source_stats", "kv",
          "api_keys")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of ``values``; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered) + 0.4999))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else 0.0,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else 0.0,
    }


class Infra:
    """Real Postgres and Redis for the whole run: embedded in a temp dir unless URLs are given."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="vsb-"))
        self.urls = {"DATABASE_URL": os.environ.get("DATABASE_URL", ""),
                     "REDIS_URL": os.environ.get("REDIS_URL", "")}
        self._started: list[Any] = []
        self.embedded: list[str] = []

    def start(self) -> Infra:
        if not self.urls["DATABASE_URL"]:
            pg = EmbeddedPostgres(self.home / "pg")
            self.urls["DATABASE_URL"] = pg.start()
            self._started.append(pg)
            self.embedded.append("postgres")
        if not self.urls["REDIS_URL"]:
            # Not durable (no AOF): as the tests run it; `vector-sync up` runs it durable.
            rd = EmbeddedRedis(self.home / "redis", durable=False)
            self.urls["REDIS_URL"] = rd.start()
            self._started.append(rd)
            self.embedded.append("redis")
        pool = state.open_pool(self.urls["DATABASE_URL"], max_size=1)
        state.migrate(pool)
        pool.close()
        return self

    def stop(self) -> None:
        for server in reversed(self._started):
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"benchmarks: stopping {type(server).__name__} failed: {exc}", file=sys.stderr)
        self._started.clear()
        shutil.rmtree(self.home, ignore_errors=True)

    def env(self, **extra: str) -> dict[str, str]:
        return {**BASE_ENV, "VECTOR_SYNC_HOME": str(self.home / "home"), **self.urls, **extra}

    def settings(self, **extra: str) -> Settings:
        return Settings.from_environ(self.env(**extra))

    def reset(self) -> None:
        """Empty state, index and queue, so each benchmark starts from nothing."""
        settings = self.settings()
        svc = open_services(settings, pool_size=1)
        try:
            with svc.pool.connection() as conn:
                conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
                for (table,) in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'vectors_%%'"
                ).fetchall():
                    conn.execute(f"TRUNCATE {table}")
            svc.broker.client.flushall()
        finally:
            svc.close()


class Worker:
    """A real Dramatiq worker consuming the sync queue in this process (as ``python -m workers``)."""

    def __init__(self, settings: Settings) -> None:
        from workers.runtime import start_worker

        self.services: Services = open_services(settings)
        self.worker, self.runtime, self.heartbeat = start_worker(settings, self.services)

    @property
    def pipeline(self) -> Any:
        return self.runtime.pipeline()

    @property
    def embedding_requests(self) -> int:
        return int(self.pipeline.embedder.requests)

    @property
    def index_writes(self) -> int:
        return int(self.services.index.writes)

    def source_requests(self, name: str) -> int:
        """HTTP requests the worker's connector for ``name`` made (0 if never built)."""
        src = self.pipeline.sources._sources.get(name)
        return int(src.http.requests) if src is not None and hasattr(src, "http") else 0

    def drain(self, timeout: float = 600.0) -> None:
        """Wait until the queues are empty and nothing is in flight."""
        queue.drain(self.services.broker, self.worker, timeout)

    def dead_letters(self) -> int:
        return queue.dead_letter_count(self.services.broker)

    def stop(self) -> None:
        self.worker.stop(timeout=10_000)
        self.heartbeat.stop()
        self.services.close()


class Child:
    """A child process of ours (sandbox, receiver, a Procfile process), stopped by its own
    handle. Its output is read through pipes, or goes to ``output`` (a file) when given."""

    def __init__(self, args: list[str], env: dict[str, str], output: IO[bytes] | None = None) -> None:
        self.output = output
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output or subprocess.PIPE,
            stderr=subprocess.STDOUT if output else subprocess.PIPE, text=output is None,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.output is not None:
            self.output.close()


def procfile_command(kind: str) -> list[str]:
    """The Procfile's command for ``kind`` as a Procfile runner (and the Dockerfile) runs it:
    ``sh -c 'exec <command>'``, so ``${PORT:-8080}`` comes from the environment."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and not name.startswith("#") and name.strip() == kind:
            return ["/bin/sh", "-c", f"exec {command.strip()}"]
    raise KeyError(f"no {kind!r} process in the Procfile")


class ProcfileProcess(Child):
    """One of the Procfile's processes (``web``, ``worker``, ``reconciler``) in its own OS
    process, with this venv's ``python`` and ``uvicorn`` first on PATH, output to ``log``."""

    def __init__(self, kind: str, env: dict[str, str], log: Path) -> None:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        super().__init__(procfile_command(kind), {**os.environ, **env, "PATH": path},
                         open(log, "wb"))  # noqa: SIM115 - closed by stop()


class Sandbox(Child):
    """``python -m sandbox`` in its own process (so the simulators do not share our GIL)."""

    def __init__(self, only: list[str], profile: str = "small", timeout: float = 60.0) -> None:
        super().__init__(
            [sys.executable, "-m", "sandbox", "--only", ",".join(only), "--profile", profile,
             "--port-base", "0", "--print-env"],
            dict(os.environ),
        )
        self.env: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"sandbox exited: {err[-800:]}")
            line = line.strip()
            if line == "# ready":
                return
            if "=" in line and not line.startswith("#"):
                name, _, value = line.partition("=")
                self.env[name] = value
        self.stop()
        raise RuntimeError("sandbox did not become ready in time")


class Receiver(Child):
    """The receiver as the Procfile's ``web`` process runs it: uvicorn with the app factory."""

    def __init__(self, env: dict[str, str], timeout: float = 60.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "uvicorn", "--factory", "receiver.app:main", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
            {**os.environ, **env},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"receiver exited: {err[-800:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("receiver did not become ready in time")
