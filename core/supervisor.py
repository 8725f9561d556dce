"""``vector-sync up``: the whole system on one machine, supervised.

Starts embedded Postgres and Redis (unless ``DATABASE_URL`` / ``REDIS_URL`` are set), applies
migrations, optionally starts the sandbox (no real source configured), then runs the receiver,
``WORKER_PROCESSES`` workers and the reconciler as child processes. A child that dies is
started again, and so is an embedded Postgres or Redis that died, after a backoff (``RESTART_BACKOFF``
doubling to ``RESTART_BACKOFF_CAP``); the others carry on meanwhile (they wait out the outage).
Only one that keeps crashing (``RESTART_LIMIT`` deaths within ``RESTART_WINDOW`` seconds) stops
everything, and the command exits 1 with one line naming it. SIGINT/SIGTERM stop every child
(SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds) and both embedded servers, within 15 s.

Sandbox mode (``settings.wants_sandbox()``): the six SaaS simulators run as one more child,
seeded with the small profile, webhooks pointed at the receiver, a slow trickle of live edits;
the settings they print become the children's environment and ``$VECTOR_SYNC_HOME/sandbox.env``.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import fcntl
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from core import state
from core.embedded import EmbeddedPostgres, EmbeddedRedis
from core.home import require_home, sandbox_env_header
from core.index import build_index
from core.logs import configure_logging
from core.runtime import Unreachable, probe
from core.settings import Settings

log = logging.getLogger("vector_sync.up")

#: Seconds a child gets between SIGTERM and SIGKILL (the whole stop stays within 15 s).
STOP_GRACE = 8.0
#: The simulators sandbox mode runs: the six SaaS sources. Not openai/pinecone: sandbox mode
#: uses the offline embedder and pgvector, as with no configuration at all.
SANDBOX_SOURCES = ("jira", "slack", "github", "notion", "tempo", "fireflies")
#: Seconds between two live edits in each simulator in sandbox mode.
SANDBOX_TRICKLE = 30.0
#: Poll intervals in sandbox mode unless set: short enough to watch the reconciler work
#: (Tempo has no webhooks, so its trickle only arrives through polling).
SANDBOX_POLL_INTERVAL = "60"
#: Seconds before the first restart of something that died; doubled for each further death
#: within ``RESTART_WINDOW``, up to ``RESTART_BACKOFF_CAP``.
RESTART_BACKOFF = 1.0
RESTART_BACKOFF_CAP = 30.0
#: Something that died this many times within ``RESTART_WINDOW`` seconds keeps crashing:
#: ``up`` stops everything rather than restart it again.
RESTART_LIMIT = 5
RESTART_WINDOW = 300.0


class StartupError(Exception):
    """``up`` could not start; the message is one line."""


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None
    #: Output goes to a pipe that is passed on to stderr (the sandbox prints its settings).
    piped: bool = False

    def start(self, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # Own process group: a terminal's Ctrl-C reaches only the supervisor, which stops the
        # children in order. If the supervisor itself is killed, the kernel sends them SIGTERM.
        self.env = env
        self.process = subprocess.Popen(
            self.args, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent, **kwargs,
        )
        return self.process

    def restart(self) -> None:
        assert self.env is not None
        if self.piped:
            process = self.start(self.env, stdout=subprocess.PIPE)
            threading.Thread(target=_pass_on, args=(process,), name=f"{self.name}-output", daemon=True).start()
        else:
            self.start(self.env)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies (Linux's PR_SET_PDEATHSIG).
    Resolved beforehand: nothing may be imported between fork and exec."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)


def start_embedded(settings: Settings) -> tuple[Settings, list[EmbeddedPostgres | EmbeddedRedis]]:
    """Start what is not configured; returns settings with real URLs and what to stop."""
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    database_url, redis_url = settings.database_url, settings.redis_url
    try:
        if not database_url:
            pg = EmbeddedPostgres(settings.home / "pg")
            started.append(pg)
            database_url = pg.start()
        if not redis_url:
            rd = EmbeddedRedis(settings.home / "redis")
            started.append(rd)
            redis_url = rd.start()
    except BaseException:
        stop_embedded(started)
        raise
    return settings.replace(database_url=database_url, redis_url=redis_url), started


def stop_embedded(started: list[EmbeddedPostgres | EmbeddedRedis]) -> None:
    for server in reversed(started):
        try:
            server.stop()
        except Exception as exc:
            log.warning("could not stop %s: %s", type(server).__name__, exc)


def attached_settings(settings: Settings) -> Settings:
    """For one-shot commands: use the embedded servers of a running ``up`` (or start them on
    its data for the duration of the command). Never a new home: a home without the data
    ``up`` leaves is the wrong one, and the command stops naming it (core/home.py)."""
    if settings.database_url and settings.redis_url:
        return settings
    require_home(settings)
    if not settings.redis_url:
        existing = EmbeddedRedis(settings.home / "redis")
        if existing._ping():
            settings = settings.replace(redis_url=existing.url)
    settings, started = start_embedded(settings)
    atexit.register(stop_embedded, started)
    return settings


def _pass_on(process: subprocess.Popen[bytes]) -> None:
    """A restarted sandbox's output, passed on to stderr."""
    assert process.stdout is not None
    for raw in process.stdout:
        print(raw.decode(errors="replace").rstrip("\n"), file=sys.stderr, flush=True)


def start_sandbox(settings: Settings, receiver_url: str) -> tuple[Child, dict[str, str]]:
    """Start the six SaaS simulators as a child; returns it and the settings they print."""
    child = Child("sandbox", piped=True, args=[
        sys.executable, "-m", "sandbox", "--port-base", str(settings.sandbox_port_base),
        "--profile", "small", "--only", ",".join(SANDBOX_SOURCES), "--webhook-url", receiver_url,
        "--print-env", "--trickle", f"{SANDBOX_TRICKLE:g}",
    ])
    process = child.start(dict(os.environ), stdout=subprocess.PIPE)
    assert process.stdout is not None
    env: dict[str, str] = {}
    ready = threading.Event()

    def read() -> None:
        """Collect NAME=value lines until ``# ready``, then pass its output on to stderr."""
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if ready.is_set():
                print(line, file=sys.stderr, flush=True)
            elif line == "# ready":
                ready.set()
            elif "=" in line and not line.startswith("#"):
                name, value = line.split("=", 1)
                env[name.strip()] = value.strip()

    threading.Thread(target=read, name="sandbox-output", daemon=True).start()
    deadline = time.monotonic() + 60
    while not ready.wait(0.1):
        if process.poll() is not None:
            raise StartupError(
                f"the sandbox exited during start-up (status {process.returncode}); are ports "
                f"{settings.sandbox_port_base + 1}-{settings.sandbox_port_base + len(SANDBOX_SOURCES)} "
                "free? (set SANDBOX_PORT_BASE)"
            )
        if time.monotonic() > deadline:
            child.process.kill()  # type: ignore[union-attr]
            raise StartupError("the sandbox did not start within 60 s")
    return child, env


def write_sandbox_env(home: Path, env: dict[str, str]) -> Path:
    """``sandbox.env``: the simulators' settings, marked as the sandbox's (``SANDBOX=on``, so a
    shell that sourced it stays in sandbox mode on the next ``up`` instead of taking the
    simulators' credentials for real ones) and naming its home (``VECTOR_SYNC_HOME``)."""
    path = home / "sandbox.env"
    tmp = path.with_suffix(".env.tmp")
    env = {**env, "SANDBOX": "on", "VECTOR_SYNC_HOME": str(home)}
    lines = [f"{line}\n" for line in sandbox_env_header(home)]
    tmp.write_text("".join(lines) + "".join(f"{k}={v}\n" for k, v in sorted(env.items())))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def sandbox_banner(path: Path) -> str:
    return (
        "\n"
        "  ┌─ vector-sync is in SANDBOX MODE ─────────────────────────────────────────────\n"
        "  │ No real source is configured, so Jira, Slack, GitHub, Notion, Tempo and\n"
        "  │ Fireflies are local simulators (seeded 'small' profile, a live edit every\n"
        f"  │ {SANDBOX_TRICKLE:g} s, webhooks sent to this receiver). Embeddings are offline, the index is\n"
        "  │ pgvector. The simulators' settings and the ADMIN_API_KEY are in\n"
        f"  │   {path}\n"
        f"  │ (for one-shot commands: set -a; . {path}; set +a; vector-sync status)\n"
        "  │ To sync your real tools, set their credentials (e.g. JIRA_URL, JIRA_EMAIL,\n"
        "  │ JIRA_API_TOKEN; SLACK_BOT_TOKEN; GITHUB_TOKEN; NOTION_TOKEN; TEMPO_API_TOKEN;\n"
        "  │ FIREFLIES_API_KEY; see docs/configuration.md) and run again: any real source credential\n"
        "  │ turns the sandbox off. SANDBOX=off forces it off (a shell that sourced sandbox.env\n"
        "  │ has SANDBOX=on); docs/sandbox.md explains it.\n"
        "  └──────────────────────────────────────────────────────────────────────────────\n"
    )


def lock_home(home: Path) -> IO[str]:
    """One ``up`` per home: a second one would take over (and stop) the first one's servers.
    The lock lives as long as the returned file stays open, and dies with the process."""
    handle = open(home / "up.lock", "a+")  # noqa: SIM115 - held for the process's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StartupError(f"vector-sync up is already running on {home} (pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def check_port(host: str, port: int) -> None:
    """The receiver's address can be bound: a port in use fails start-up naming ``PORT``,
    before anything starts (uvicorn would exit later with status 3 and no port in the line)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise StartupError(f"HOST {host!r} does not resolve: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"PORT {port} is already in use on {host} (another program or "
                                   "another vector-sync up); set PORT to a free port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise StartupError(f"HOST {host} is not an address of this machine") from None
            if exc.errno == errno.EACCES:
                raise StartupError(f"PORT {port} on {host}: permission denied (ports below 1024 "
                                   "need privileges); set PORT to 1024 or above") from None
            raise StartupError(f"PORT {port} on {host} cannot be used: {exc.strerror or exc}") from None


def up(settings: Settings) -> int:
    configure_logging(settings.log_level)
    settings.home.mkdir(parents=True, exist_ok=True)
    try:
        home_lock = lock_home(settings.home)
    except StartupError as exc:
        print(f"vector-sync: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        check_port(settings.host, settings.port)
    except StartupError as exc:
        home_lock.close()
        print(f"vector-sync: {exc}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("starting", extra={"home": str(settings.home)})
    children: list[Child] = []
    embedded: list[EmbeddedPostgres | EmbeddedRedis] = []
    reason: str | None = None
    try:
        settings, embedded = start_embedded(settings)
        # One direct connection each, a few seconds at most: a wrong URL ends here in one line
        # naming it and the cause, not after the pool's retries in a PoolTimeout.
        probe(settings)
        pool = state.open_pool(settings.database_url, max_size=1)
        try:
            applied = state.migrate(pool)
            # Create the vector table (and the pgvector extension) here, once, before the
            # receiver, workers and reconciler all try at the same moment on a fresh database.
            build_index(settings, pool)
        finally:
            pool.close()
        if applied:
            log.info("migrations applied: %s", ", ".join(applied))
        env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
               "VECTOR_SYNC_HOME": str(settings.home)}
        receiver_url = f"http://{settings.host}:{settings.port}"
        if settings.wants_sandbox() and not stop.is_set():
            sandbox, sandbox_env = start_sandbox(settings, receiver_url)
            children.append(sandbox)
            for name in SANDBOX_SOURCES:
                var = f"{name.upper()}_POLL_INTERVAL"
                sandbox_env[var] = os.environ.get(var) or SANDBOX_POLL_INTERVAL
            sandbox_env["ADMIN_API_KEY"] = str(settings.admin_api_key) or _sandbox_admin_key(settings.home)
            path = write_sandbox_env(settings.home, sandbox_env)
            env.update(sandbox_env)
            print(sandbox_banner(path), file=sys.stderr, flush=True)
        children += [
            Child("web", [sys.executable, "-m", "uvicorn", "--factory", "receiver.app:main",
                          "--host", settings.host, "--port", str(settings.port),
                          "--timeout-graceful-shutdown", "5", "--no-access-log"]),
            *[Child(f"worker-{i + 1}", [sys.executable, "-m", "workers"])
              for i in range(settings.worker_processes)],
            Child("reconciler", [sys.executable, "-m", "reconciler"]),
        ]
        # The children get the resolved values, not also the NAME_FILE they came from (both
        # set is a start-up error; a conflict in our own environment was reported above).
        env = {k: v for k, v in env.items() if not (k.endswith("_FILE") and k.removesuffix("_FILE") in env)}
        for child in children:
            if child.process is None and not stop.is_set():
                child.start(env)
        if not stop.is_set():
            print(f"  receiver on {receiver_url}  (status: {receiver_url}/api/status)\n",
                  file=sys.stderr, flush=True)
        reason = supervise(children, stop, embedded)
    except (StartupError, Unreachable) as exc:
        reason = str(exc)
    except Exception as exc:
        log.exception("start-up failed")
        reason = f"start-up failed: {type(exc).__name__}: {' '.join(str(exc).split())}"  # one line
    finally:
        stop_children(children)
        stop_embedded(embedded)
    home_lock.close()
    if reason:
        print(f"vector-sync: {reason}; stopped everything", file=sys.stderr, flush=True)
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


@dataclass
class Restarts:
    """The deaths of one supervised thing (a child, or an embedded server) and when to restart it."""

    name: str
    deaths: list[float] = field(default_factory=list)
    due: float | None = None

    def died(self, now: float) -> float | None:
        """Record a death; the backoff before the restart, or None when it keeps crashing."""
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW] + [now]
        if len(self.deaths) >= RESTART_LIMIT:
            return None
        wait = min(RESTART_BACKOFF_CAP, RESTART_BACKOFF * 2 ** (len(self.deaths) - 1))
        self.due = now + wait
        return wait


def _keeps_crashing(name: str, last: str) -> str:
    return (f"{name} keeps crashing ({RESTART_LIMIT} times within {RESTART_WINDOW:g}s, "
            f"last {last})")


def supervise(children: list[Child], stop: threading.Event,
              embedded: list[EmbeddedPostgres | EmbeddedRedis] | None = None) -> str | None:
    """Restart what dies, until a stop signal (None) or something that keeps crashing (the
    reason, one line). Embedded servers first: a child restarted against a dead server would
    only die again."""
    restarts: dict[str, Restarts] = {}
    servers = {_server_name(server): server for server in embedded or []}
    while not stop.wait(0.2):
        now = time.monotonic()
        for name, server in servers.items():
            track = restarts.setdefault(name, Restarts(name))
            if track.due is None:
                if server.alive():
                    continue
                wait = track.died(now)
                if wait is None:
                    return _keeps_crashing(name, "it died")
                _say(f"{name} died; restarting it in {wait:.0f}s")
            elif now >= track.due:
                try:
                    server.restart()
                    track.due = None
                    _say(f"{name} is back")
                except Exception as exc:  # counts as one more death
                    wait = track.died(time.monotonic())
                    if wait is None:
                        return _keeps_crashing(name, f"restart failed: {' '.join(str(exc).split())[:200]}")
                    _say(f"{name} did not restart ({' '.join(str(exc).split())[:200]}); trying again in {wait:.0f}s")
        for child in children:
            if child.process is None:
                continue
            track = restarts.setdefault(child.name, Restarts(child.name))
            if track.due is None:
                code = child.process.poll()
                if code is None:
                    continue
                if stop.is_set():
                    return None
                wait = track.died(now)
                if wait is None:
                    return _keeps_crashing(child.name, f"exited with {_describe(code)}")
                _say(f"{child.name} exited with {_describe(code)}; restarting it in {wait:.0f}s")
            elif now >= track.due and not stop.is_set():
                track.due = None
                child.restart()
    return None


def _say(line: str) -> None:
    print(f"vector-sync: {line}", file=sys.stderr, flush=True)


def _server_name(server: EmbeddedPostgres | EmbeddedRedis) -> str:
    return "embedded postgres" if isinstance(server, EmbeddedPostgres) else "embedded redis"


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def stop_children(children: list[Child]) -> None:
    """SIGTERM to all at once (the receiver, workers and reconciler drain in parallel),
    SIGKILL to whatever still runs after ``STOP_GRACE`` seconds."""
    for child in children:
        if child.alive():
            try:
                child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass
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
