"""``vector-sync up``: the whole system on one machine, supervised.

Starts embedded Postgres and Redis (unless ``DATABASE_URL`` / ``REDIS_URL`` are set), applies
migrations, optionally starts the sandbox (no real source configured), then runs the receiver,
``WORKER_PROCESSES`` workers and the reconciler as child processes. If any child dies, the
others are stopped and the command exits 1 naming it. SIGINT/SIGTERM stop every child (SIGTERM,
then SIGKILL after 10 s) and both embedded servers.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from core import state
from core.embedded import EmbeddedPostgres, EmbeddedRedis
from core.logs import configure_logging
from core.settings import Settings

log = logging.getLogger("vector_sync.up")

#: Seconds a child gets between SIGTERM and SIGKILL.
STOP_GRACE = 10.0
#: First port of the sandbox simulators in sandbox mode.
SANDBOX_PORT_BASE = int(os.environ.get("SANDBOX_PORT_BASE", "8200"))


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(self.args, env=env, stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def start_embedded(settings: Settings) -> tuple[Settings, list[EmbeddedPostgres | EmbeddedRedis]]:
    """Start what is not configured; returns settings with real URLs and what to stop."""
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    database_url, redis_url = settings.database_url, settings.redis_url
    try:
        if not database_url:
            pg = EmbeddedPostgres(settings.home / "pg")
            database_url = pg.start()
            started.append(pg)
        if not redis_url:
            rd = EmbeddedRedis(settings.home / "redis")
            redis_url = rd.start()
            started.append(rd)
    except BaseException:
        stop_embedded(started)
        raise
    return replace(settings, database_url=database_url, redis_url=redis_url), started


def stop_embedded(started: list[EmbeddedPostgres | EmbeddedRedis]) -> None:
    for server in reversed(started):
        try:
            server.stop()
        except Exception as exc:
            log.warning("could not stop %s: %s", type(server).__name__, exc)


def attached_settings(settings: Settings) -> Settings:
    """For one-shot commands: use the embedded servers of a running ``up`` (or start them for
    the duration of the command)."""
    if settings.database_url and settings.redis_url:
        return settings
    if not settings.redis_url:
        existing = EmbeddedRedis(settings.home / "redis")
        if existing._ping():
            settings = replace(settings, redis_url=existing.url)
    settings, started = start_embedded(settings)
    atexit.register(stop_embedded, started)
    return settings


def start_sandbox(settings: Settings, receiver_url: str) -> tuple[Child, dict[str, str]]:
    """Start the simulators as a child; returns it and the settings they print."""
    child = Child("sandbox", [
        sys.executable, "-m", "sandbox", "--port-base", str(SANDBOX_PORT_BASE), "--profile", "small",
        "--webhook-url", receiver_url, "--print-env", "--trickle", "20",
    ])
    child.process = subprocess.Popen(child.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    env: dict[str, str] = {}
    assert child.process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = child.process.stdout.readline().decode().strip()
        if not line:
            if child.process.poll() is not None:
                raise RuntimeError("the sandbox exited during start-up")
            continue
        if line == "# ready":
            break
        if "=" in line and not line.startswith("#"):
            name, value = line.split("=", 1)
            env[name] = value
    else:
        raise RuntimeError("the sandbox did not start within 60 s")
    # Keep draining its stdout so it never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in child.process.stdout], daemon=True).start()  # type: ignore[union-attr]
    return child, env


def write_sandbox_env(home: Path, env: dict[str, str]) -> Path:
    path = home / "sandbox.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))
    path.chmod(0o600)
    return path


def up(settings: Settings) -> int:
    configure_logging(settings.log_level)
    settings.home.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("starting", extra={"home": str(settings.home)})
    settings, embedded = start_embedded(settings)
    children: list[Child] = []
    try:
        pool = state.open_pool(settings.database_url, max_size=1)
        applied = state.migrate(pool)
        pool.close()
        if applied:
            log.info("migrations applied: %s", ", ".join(applied))
        env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
               "VECTOR_SYNC_HOME": str(settings.home)}
        receiver_url = f"http://{settings.host}:{settings.port}"
        if settings.wants_sandbox():
            sandbox, sandbox_env = start_sandbox(settings, receiver_url)
            children.append(sandbox)
            sandbox_env["ADMIN_API_KEY"] = str(settings.admin_api_key) or _sandbox_admin_key(settings.home)
            path = write_sandbox_env(settings.home, sandbox_env)
            env.update(sandbox_env)
            print(
                "\n  vector-sync is in SANDBOX MODE: no real source is configured, so the six SaaS\n"
                "  sources are local simulators with seeded data and a trickle of live edits.\n"
                f"  Their settings (and the ADMIN_API_KEY) are in {path}.\n"
                "  To sync real tools, set their credentials (see docs/configuration.md);\n"
                "  any real source credential turns the sandbox off.\n",
                file=sys.stderr, flush=True,
            )
        children += [
            Child("web", [sys.executable, "-m", "uvicorn", "--factory", "receiver.app:main",
                          "--host", settings.host, "--port", str(settings.port),
                          "--timeout-graceful-shutdown", "5", "--no-access-log"]),
            *[Child(f"worker-{i + 1}", [sys.executable, "-m", "workers"])
              for i in range(settings.worker_processes)],
            Child("reconciler", [sys.executable, "-m", "reconciler"]),
        ]
        for child in children:
            if child.process is None:
                child.start(env)
        print(f"  receiver on {receiver_url}  (status: {receiver_url}/api/status)\n", file=sys.stderr, flush=True)
        reason = supervise(children, stop)
    finally:
        stop_children(children)
        stop_embedded(embedded)
    if reason:
        print(f"vector-sync: {reason}; stopped everything", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


def _sandbox_admin_key(home: Path) -> str:
    """A stable admin key for sandbox mode, kept with the data."""
    path = home / "admin-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def supervise(children: list[Child], stop: threading.Event) -> str | None:
    """Wait until a stop signal (None) or a child's death (the reason)."""
    while not stop.wait(0.5):
        for child in children:
            if child.process is not None and child.process.poll() is not None:
                return f"{child.name} exited with status {child.process.returncode}"
    return None


def stop_children(children: list[Child]) -> None:
    for child in children:
        if child.alive():
            child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    deadline = time.monotonic() + STOP_GRACE
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", child.name, STOP_GRACE)
            child.process.kill()
            child.process.wait(5)
