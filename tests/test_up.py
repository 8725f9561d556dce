"""``vector-sync up`` as a real subprocess: sandbox mode end to end, and the supervisor's
guarantees (start-up from a fresh home, stop on SIGTERM/SIGINT leaving nothing behind, a dead
child is restarted and one that keeps crashing stops the rest, data survives a restart,
external Postgres/Redis, bad settings).

The first run (a fresh home in sandbox mode) is a module fixture; several tests assert on what
it observed, and the restart test reuses its home. Timings are measured and printed (``-s``);
the only timing asserted is the issue's hard bounds (two minutes to serve, 15 s to stop).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from core.settings import SOURCE_CREDENTIALS, SOURCE_OPTIONS
from tests.conftest import free_port, wait_for

PUSH_SOURCES = ("jira", "slack", "github", "notion")
ALL_SOURCES = ("jira", "slack", "github", "notion", "tempo", "fireflies")

#: Short poll intervals: the reconciler's first pass indexes everything, the next ones show
#: it keeps polling. Raised request budgets: the simulators' own limits still apply.
FAST_ENV = {
    **{f"{s.upper()}_POLL_INTERVAL": "5" for s in ALL_SOURCES},
    "GITHUB_RATE_LIMIT": "20/s",
    "SLACK_RATE_LIMIT": "20/s",
    "EMBEDDING_DIMENSIONS": "256",
    "HEARTBEAT_INTERVAL": "1",
    "RECONCILE_TICK": "0.5",
    "WORKER_THREADS": "4",
    "LOG_LEVEL": "WARNING",
}


def vector_sync_command() -> list[str]:
    script = Path(sys.executable).parent / "vector-sync"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from cli.main import main; main()"]


def clean_environ() -> dict[str, str]:
    """This process's environment without anything that would configure vector-sync."""
    ours = {"DATABASE_URL", "REDIS_URL", "ADMIN_API_KEY", "SANDBOX", "SANDBOX_PORT_BASE", "PORT",
            "VECTOR_SYNC_HOME", "OPENAI_API_KEY", "OPENAI_BASE_URL", "PINECONE_API_KEY", "PINECONE_HOST"}
    for name in SOURCE_CREDENTIALS:
        ours |= set(SOURCE_CREDENTIALS[name]) | set(SOURCE_OPTIONS[name])
    return {k: v for k, v in os.environ.items() if k not in ours}


def free_port_block(count: int) -> int:
    """A base port B such that B+1 .. B+count are free now (the sandbox's layout)."""
    for _ in range(200):
        base = random.randint(20000, 60000 - count)
        socks = []
        try:
            for port in range(base + 1, base + count + 1):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                socks.append(sock)
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free block of ports")


class Up:
    """One ``vector-sync up`` subprocess with its own home, port and log file."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home.parent / f"{home.name}-up-{uuid.uuid4().hex[:6]}.log"
        self.env = {**clean_environ(), "VECTOR_SYNC_HOME": str(home), "PORT": str(self.port),
                    "SANDBOX_PORT_BASE": str(free_port_block(6)), **FAST_ENV, **env}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in finish()
        self.started = time.monotonic()
        self.process = subprocess.Popen(vector_sync_command() + ["up"], env=self.env,
                                        stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        self.seen: dict[int, psutil.Process] = {}

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def wait_serving(self, timeout: float = 120.0) -> float:
        """Seconds until /healthz, /readyz and /api/status all answer 200."""

        def serving() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"vector-sync up exited {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                return all(self.get(p).status_code == 200 for p in ("/healthz", "/readyz", "/api/status"))
            except httpx.HTTPError:
                return False

        wait_for(serving, timeout=timeout, interval=0.2)
        return time.monotonic() - self.started

    def remember_processes(self) -> dict[int, psutil.Process]:
        """Every process of this run: the supervisor's descendants, the embedded postmaster and
        its backends, and anything whose command line names the home."""
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
        except psutil.NoSuchProcess:
            pass
        pid_file = self.home / "pg" / "postmaster.pid"
        if pid_file.exists():
            try:
                postmaster = psutil.Process(int(pid_file.read_text().split("\n", 1)[0]))
                for proc in [postmaster, *postmaster.children(recursive=True)]:
                    found[proc.pid] = proc
            except (psutil.NoSuchProcess, ValueError):
                pass
        found.update({p.pid: p for p in processes_naming(self.home)})
        self.seen.update(found)
        return found

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> tuple[int, float]:
        """Send ``sig``; returns the exit status and the seconds it took to exit."""
        self.remember_processes()
        start = time.monotonic()
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        return code, time.monotonic() - start

    def survivors(self) -> list[str]:
        alive = [p for p in self.seen.values() if running(p)]
        alive += [p for p in processes_naming(self.home) if p.pid not in self.seen]
        return [f"{p.pid} {' '.join(cmdline(p))[:120]}" for p in alive]

    def finish(self) -> None:
        """Never leave a process behind, whatever the test did."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for proc in [*self.seen.values(), *processes_naming(self.home)]:
            if running(proc):
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        self._log.close()


def cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def processes_naming(home: Path) -> list[psutil.Process]:
    """Processes whose command line mentions ``home`` (redis-server, postgres -D, children)."""
    needle = str(home)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid():
            continue
        if any(needle in arg for arg in proc.info["cmdline"] or []) and running(proc):
            found.append(proc)
    return found


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def search(up: Up, key: str, q: str, source: str | None = None, top_k: int = 10) -> list[dict[str, Any]]:
    params = {"q": q, "top_k": str(top_k), **({"source": source} if source else {})}
    response = up.get("/api/search", params=params, headers={"X-Admin-Key": key})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


# --- the first run: a fresh home in sandbox mode --------------------------------------------


@pytest.fixture
def home() -> Iterator[Path]:
    with fresh_home() as path:
        yield path


@contextlib.contextmanager
def fresh_home() -> Iterator[Path]:
    """A new VECTOR_SYNC_HOME. Not under pytest's basetemp: pytest keeps that 0700, and as
    root the embedded Postgres runs as the ``pgserver`` user, which must reach its data folder."""
    parent = Path(tempfile.mkdtemp(prefix="vs-up-", dir="/tmp"))
    parent.chmod(0o755)
    try:
        yield parent / "home"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def first_run() -> Iterator[dict[str, Any]]:
    with fresh_home() as home:
        yield from _first_run(home)


def _first_run(home: Path) -> Iterator[dict[str, Any]]:
    up = Up(home)
    facts: dict[str, Any] = {"home": home}
    try:
        facts["serving_s"] = up.wait_serving()
        facts["health"] = {p: up.get(p).status_code for p in ("/healthz", "/readyz", "/api/status")}
        facts["sandbox_env"] = env = read_env_file(home / "sandbox.env")
        facts["sandbox_env_mode"] = (home / "sandbox.env").stat().st_mode & 0o777
        key = facts["key"] = env["ADMIN_API_KEY"]

        # Pushed through the admin API: must survive the restart.
        marker = f"persistence{uuid.uuid4().hex[:8]}"
        pushed = httpx.post(f"{up.url}/api/documents", headers={"X-Admin-Key": key}, timeout=10, json={
            "id": f"note-{marker}", "title": f"Restart note {marker}", "text": f"The {marker} survives restarts."})
        assert pushed.status_code == 202, pushed.text
        facts["marker"] = marker

        # A Slack message through the simulator's control API: arrives by webhook.
        def slack_channels() -> list[str]:
            body = up.get("/api/scopes", params={"source": "slack"}, headers={"X-Admin-Key": key}).json()
            return [s["key"] for s in body["scopes"]]

        channel = wait_for(slack_channels, timeout=60)[0]
        slack_base = env["SLACK_API_URL"].rsplit("/api", 1)[0]
        slack_marker = f"webhookcheck{uuid.uuid4().hex[:8]}"
        posted = httpx.post(f"{slack_base}/_sandbox/messages", timeout=10,
                            json={"channel": channel, "text": f"Decision: the {slack_marker} ships Friday"})
        assert posted.status_code == 201, posted.text
        facts["slack_marker"] = slack_marker

        def found_by_source() -> dict[str, list[dict[str, Any]]] | None:
            hits = {s: search(up, key, "billing search login onboarding", s, top_k=3) for s in PUSH_SOURCES}
            return hits if all(hits.values()) else None

        facts["search_hits"] = wait_for(found_by_source, timeout=180, interval=0.5)
        facts["four_sources_s"] = time.monotonic() - up.started
        facts["slack_hit"] = wait_for(lambda: search(up, key, slack_marker, "slack", top_k=1), timeout=60)
        facts["pushed_hit"] = wait_for(lambda: search(up, key, marker, "api", top_k=1), timeout=60)

        def every_scope_polled() -> list[dict[str, Any]] | None:
            body = up.get("/api/scopes", headers={"X-Admin-Key": key}).json()
            rows = body["scopes"]
            done = {r["source"] for r in rows if r["last_success_at"]}
            pending = [r for r in rows if r["active"] and not r["last_success_at"]]
            return rows if done >= set(ALL_SOURCES) and not pending else None

        facts["scopes"] = wait_for(every_scope_polled, timeout=120, interval=0.5)

        def counted() -> dict[str, Any] | None:
            report = up.get("/api/status").json()
            ok = all(report["sources"][s]["documents"] > 0 for s in PUSH_SOURCES)
            return report if ok else None

        facts["status"] = wait_for(counted, timeout=60, interval=0.5)
        facts["processes"] = [" ".join(cmdline(p)) for p in up.remember_processes().values()]
        facts["exit_code"], facts["stop_s"] = up.stop(signal.SIGTERM)
        facts["survivors"] = up.survivors()
        facts["output"] = up.output()
        facts["log_path"] = str(up.log_path)
        print(f"\n[test_up] fresh home: serving /healthz,/readyz,/api/status after {facts['serving_s']:.1f}s; "
              f"all four push sources searchable after {facts['four_sources_s']:.1f}s; "
              f"SIGTERM stop took {facts['stop_s']:.1f}s")
        yield facts
    finally:
        up.finish()


def test_fresh_home_serves_health_and_status_within_two_minutes(first_run: dict[str, Any]) -> None:
    assert first_run["health"] == {"/healthz": 200, "/readyz": 200, "/api/status": 200}
    assert first_run["serving_s"] < 120
    home: Path = first_run["home"]
    assert (home / "pg" / "PG_VERSION").exists() and (home / "redis").is_dir()


def test_sandbox_mode_announces_itself_and_writes_sandbox_env(first_run: dict[str, Any]) -> None:
    out = first_run["output"]
    assert "SANDBOX MODE" in out
    assert "any real source credential" in out and "turns the sandbox off" in out
    env = first_run["sandbox_env"]
    for source in ALL_SOURCES:
        for var in SOURCE_CREDENTIALS[source]:
            assert env.get(var), f"{var} missing from sandbox.env"
    assert env["ADMIN_API_KEY"] == first_run["key"] and len(env["ADMIN_API_KEY"]) >= 16
    # The offline embedder and pgvector: no OpenAI or Pinecone simulator is pointed at.
    assert not any(k.startswith(("OPENAI_", "PINECONE_")) for k in env)
    assert first_run["sandbox_env_mode"] == 0o600
    assert first_run["status"]["sources"]["jira"]["configured"]


def test_sandbox_env_keeps_sandbox_mode_and_names_its_home(first_run: dict[str, Any]) -> None:
    """Issue 13: sourcing sandbox.env as the README says made the next `make run` take the
    simulators' credentials for real ones, leave sandbox mode, and fail every source."""
    from core.settings import Settings

    env, home = first_run["sandbox_env"], first_run["home"]
    assert env["SANDBOX"] == "on" and env["VECTOR_SYNC_HOME"] == str(home)
    assert (home / "sandbox.env").read_text().startswith("# The sandbox's settings")
    # What the next `up` in a shell that sourced it reads: sandbox mode, this home.
    sourced = Settings.from_environ({**clean_environ(), **env})
    assert sourced.wants_sandbox() and sourced.home == home


def test_no_secret_in_the_logs_or_the_status_of_a_run(first_run: dict[str, Any]) -> None:
    """The simulators' tokens and webhook secrets and the admin key appear in no line `up`
    and its children wrote, nor in /api/status."""
    secrets = [v for k, v in first_run["sandbox_env"].items()
               if k.endswith(("_TOKEN", "_KEY", "_SECRET")) and len(v) >= 8]
    assert len(secrets) >= 8
    shown = first_run["output"] + json.dumps(first_run["status"])
    assert [s for s in secrets if s in shown] == []


def test_sandbox_documents_of_all_push_sources_are_searchable(first_run: dict[str, Any]) -> None:
    hits = first_run["search_hits"]
    for source in PUSH_SOURCES:
        assert hits[source] and all(h["source"] == source for h in hits[source])
        assert all(h["document_id"].startswith(f"{source}:") for h in hits[source])
    report = first_run["status"]
    for source in PUSH_SOURCES:
        assert report["sources"][source]["documents"] > 0
        assert report["sources"][source]["vectors"] >= report["sources"][source]["documents"]
    # A change made in the simulator reached the receiver as a signed webhook and got indexed.
    [slack_hit] = first_run["slack_hit"]
    assert first_run["slack_marker"] in slack_hit["text"]
    assert report["sources"]["slack"]["webhooks"]["received"] >= 1
    assert report["sources"]["slack"]["webhooks"]["rejected"] == 0


def test_reconciler_discovers_and_polls_every_sandbox_scope(first_run: dict[str, Any]) -> None:
    scopes: dict[str, set[str]] = {}
    for row in first_run["scopes"]:
        assert row["last_success_at"], row
        assert not row["last_error"], row
        scopes.setdefault(row["source"], set()).add(row["key"])
    assert {"SUBS", "OPS", "WEB"} <= scopes["jira"]
    assert len(scopes["slack"]) >= 3  # the channels the app is in
    assert scopes["github"] == set(first_run["sandbox_env"]["GITHUB_REPOS"].split(","))
    for source in ("notion", "tempo", "fireflies"):
        assert len(scopes[source]) == 1  # the whole account
    report = first_run["status"]
    for source in ALL_SOURCES:
        assert report["sources"][source]["scopes"]["never_synced"] == 0
        assert report["sources"][source]["last_success_at"]
    assert report["sources"]["tempo"]["documents"] > 0  # Tempo only arrives by polling


def test_sigterm_stops_every_child_and_both_embedded_servers(first_run: dict[str, Any]) -> None:
    names = " ".join(first_run["processes"])
    for part in ("-m sandbox", "uvicorn", "-m workers", "-m reconciler", "redis-server", "postgres"):
        assert part in names, f"{part} was not running"
    assert first_run["exit_code"] == 0
    assert first_run["stop_s"] < 15
    assert first_run["survivors"] == []


# --- the next run on the same home ----------------------------------------------------------


def test_restart_reuses_data_and_a_dead_child_is_restarted(first_run: dict[str, Any]) -> None:
    home: Path = first_run["home"]
    up = Up(home)
    try:
        serving = up.wait_serving()
        key = read_env_file(home / "sandbox.env")["ADMIN_API_KEY"]
        assert key == first_run["key"]  # the sandbox admin key is kept with the data
        hits = search(up, key, first_run["marker"], "api", top_k=1)
        assert hits and first_run["marker"] in hits[0]["text"]
        hits = search(up, key, first_run["slack_marker"], "slack", top_k=1)
        assert hits and first_run["slack_marker"] in hits[0]["text"]
        print(f"\n[test_up] second run on the same home: serving after {serving:.1f}s")

        # A one-shot command attaches to the running servers and leaves them running.
        status = subprocess.run(vector_sync_command() + ["status", "--json"], capture_output=True, text=True,
                                env={**up.env, **read_env_file(home / "sandbox.env")}, timeout=60, check=False)
        assert status.returncode in (0, 1), status.stderr
        assert json.loads(status.stdout)["sources"]["slack"]["documents"] > 0
        # A second `up` on the same home refuses to start instead of taking the servers over.
        again = subprocess.run(vector_sync_command() + ["up"], env={**up.env, "PORT": str(free_port())},
                               capture_output=True, text=True, timeout=60, check=False)
        assert again.returncode == 1 and "already running" in again.stderr, again.stderr
        assert up.get("/readyz").json()["checks"] == {"postgres": "ok", "redis": "ok"}

        # A dead child is started again (the others carry on); the supervisor says so.
        [worker] = [p for p in up.remember_processes().values() if cmdline(p)[-2:] == ["-m", "workers"]]
        worker.send_signal(signal.SIGKILL)
        replacement = wait_for(lambda: [p for p in child_processes(up, "workers") if p.pid != worker.pid],
                               timeout=60, interval=0.2)
        assert up.process.poll() is None
        lines = [line for line in up.output().splitlines() if line.startswith("vector-sync:")]
        assert any("worker-1 exited with signal SIGKILL; restarting it" in line for line in lines), lines
        wait_for(lambda: up.get("/readyz").status_code == 200, timeout=30)
        assert len(replacement) == 1
        code, took = up.stop(signal.SIGTERM)
        assert code == 0 and took < 15
        assert up.survivors() == []
    finally:
        up.finish()


def child_processes(up: Up, module: str) -> list[psutil.Process]:
    """up's live children running ``python -m <module>``."""
    try:
        kids = psutil.Process(up.process.pid).children()
    except psutil.NoSuchProcess:
        return []
    return [p for p in kids if cmdline(p)[-2:] == ["-m", module] and running(p)]


def test_a_child_that_keeps_crashing_stops_everything(home: Path) -> None:
    """Killed again each time it is restarted, the reconciler "keeps crashing": after
    RESTART_LIMIT deaths ``up`` stops everything, exits 1, and one line names it."""
    from core.supervisor import RESTART_LIMIT

    up = Up(home, SANDBOX="off")
    try:
        up.wait_serving()
        killed: set[int] = set()
        for _ in range(RESTART_LIMIT):
            [reconciler] = wait_for(lambda: [p for p in child_processes(up, "reconciler") if p.pid not in killed],
                                    timeout=90, interval=0.2)
            up.remember_processes()
            killed.add(reconciler.pid)
            reconciler.send_signal(signal.SIGKILL)
        assert up.process.wait(60) == 1
        lines = [line for line in up.output().splitlines() if line.startswith("vector-sync:")]
        assert lines[-1].startswith(f"vector-sync: reconciler keeps crashing ({RESTART_LIMIT} times"), lines
        assert "exited with signal SIGKILL" in lines[-1] and lines[-1].endswith("stopped everything")
        assert up.survivors() == []
    finally:
        up.finish()


def test_next_up_after_a_killed_supervisor_recovers_and_stops_cleanly(home: Path) -> None:
    """``kill -9`` of ``up`` itself: its children follow (parent-death signal); the embedded
    servers are left running, and the next ``up`` adopts them and really stops them, although
    pgserver still lists the dead supervisor as a holder of the data folder."""
    first = Up(home, SANDBOX="off")
    second: Up | None = None
    try:
        first.wait_serving()
        procs = first.remember_processes()
        children = [p for p in procs.values() if any(a in cmdline(p) for a in ("workers", "reconciler", "uvicorn"))]
        assert len(children) == 3
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        wait_for(lambda: not any(running(p) for p in children), timeout=15)
        handles = json.loads((home / "pg" / ".handle_pids.json").read_text())
        assert first.process.pid in handles  # the stale entry that used to keep postgres alive

        second = Up(home, SANDBOX="off")
        second.wait_serving()
        second.remember_processes()
        code, took = second.stop(signal.SIGTERM)
        assert code == 0 and took < 15
        assert second.survivors() == [] and first.survivors() == []
    finally:
        first.finish()
        if second is not None:
            second.finish()


# --- configuration --------------------------------------------------------------------------


def test_external_database_and_redis_start_no_embedded_server(infra: dict[str, str], home: Path) -> None:
    up = Up(home, SANDBOX="off", **infra)
    try:
        up.wait_serving()
        assert up.get("/readyz").json()["checks"] == {"postgres": "ok", "redis": "ok"}
        assert not (home / "pg").exists() and not (home / "redis").exists()
        assert not (home / "sandbox.env").exists()
        names = " ".join(" ".join(cmdline(p)) for p in up.remember_processes().values())
        assert "redis-server" not in names and "-m sandbox" not in names
        code, took = up.stop(signal.SIGINT)
        assert code == 0 and took < 15
        assert up.survivors() == []
    finally:
        up.finish()


def test_sandbox_ports_taken_fails_fast_naming_the_setting_and_cleans_up(home: Path) -> None:
    base = free_port_block(6)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 3))
        taken.listen()
        up = Up(home, SANDBOX_PORT_BASE=str(base))
        try:
            code = up.process.wait(60)
            up.remember_processes()
            assert code == 1
            lines = [line for line in up.output().splitlines() if line.startswith("vector-sync:")]
            assert len(lines) == 1 and "SANDBOX_PORT_BASE" in lines[0], up.output()[-2000:]
            assert f"({base + 3})" in up.output()  # the sandbox names the busy port
            assert up.survivors() == []  # the embedded servers it had started are stopped
        finally:
            up.finish()


@pytest.mark.parametrize("name,value", [("PORT", "abc"), ("SANDBOX_PORT_BASE", "eighty")])
def test_bad_setting_exits_2_with_one_line_naming_it(tmp_path: Path, name: str, value: str) -> None:
    env = {**clean_environ(), "VECTOR_SYNC_HOME": str(tmp_path / "home"), name: value}
    result = subprocess.run(vector_sync_command() + ["up"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "home" / "pg").exists()


def test_half_a_source_stops_up_instead_of_running_the_sandbox(tmp_path: Path) -> None:
    """Issue 13: JIRA_URL and JIRA_EMAIL without JIRA_API_TOKEN ran the sandbox and showed
    simulated data to someone who believed they had configured Jira."""
    env = {**clean_environ(), "VECTOR_SYNC_HOME": str(tmp_path / "home"),
           "JIRA_URL": "https://acme.atlassian.net", "JIRA_EMAIL": "ops@acme.example"}
    result = subprocess.run(vector_sync_command() + ["up"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "JIRA_API_TOKEN is not set" in lines[0], result.stderr
    assert "SANDBOX MODE" not in result.stderr and not (tmp_path / "home").exists()


def test_port_in_use_fails_before_announcing_the_receiver(tmp_path: Path) -> None:
    """Issue 13: the banner announced the receiver before binding, and the last line said
    `web exited with status 3` without naming the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**clean_environ(), "VECTOR_SYNC_HOME": str(tmp_path / "home"), "PORT": str(port), "SANDBOX": "off"}
        result = subprocess.run(vector_sync_command() + ["up"], env=env, capture_output=True, text=True,
                                timeout=120, check=False)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"PORT {port} is already in use" in lines[0], result.stderr
    assert "receiver on" not in result.stderr
    assert not (tmp_path / "home" / "pg").exists()  # nothing was started


def test_unreachable_database_fails_fast_in_one_line_naming_it(tmp_path: Path) -> None:
    """Issue 13: DATABASE_URL at an unknown host ended, after 10 s of JSON warnings and a
    traceback, in PoolTimeout without naming the setting."""
    env = {**clean_environ(), "VECTOR_SYNC_HOME": str(tmp_path / "home"), "SANDBOX": "off",
           "DATABASE_URL": "postgresql://vsync:Pg-9f3Kq2LmX7vB@no-such-host.invalid:5432/vs",
           "PORT": str(free_port()), "LOG_LEVEL": "WARNING"}  # any warning would be a line more
    result = subprocess.run(vector_sync_command() + ["up"], env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vector-sync: DATABASE_URL: cannot connect to no-such-host.invalid:5432: unknown host")
    assert "PoolTimeout" not in result.stderr and "Traceback" not in result.stderr
    assert "Pg-9f3Kq2LmX7vB" not in result.stderr
    assert processes_naming(tmp_path / "home") == []  # the embedded Redis it started is stopped


# --- the trickle ----------------------------------------------------------------------------


class Capture(http.server.ThreadingHTTPServer):
    """A loopback HTTP server recording every POST (a stand-in receiver for the trickle)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:  # the sender gave up mid-request (the sandbox stopping)
                    return
                with lock:
                    outer.posts.append((self.path, dict(self.headers), body))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def paths(self) -> set[str]:
        return {path for path, _, _ in self.posts}


def test_trickle_makes_live_edits_that_fire_signed_webhooks() -> None:
    from sandbox.server import SandboxServer, create_simulators

    capture = Capture()
    sims = create_simulators(list(ALL_SOURCES), profile="small")
    sims["notion"].aggregation_window = 0.2  # type: ignore[attr-defined]
    before = {
        "jira": (len(sims["jira"].issues), sum(len(i.comments) for i in sims["jira"].issues.values())),  # type: ignore[attr-defined]
        "tempo": json.dumps(sims["tempo"].worklogs, sort_keys=True),  # type: ignore[attr-defined]
        "fireflies": [t.id for t in sims["fireflies"].transcripts.values() if t.sentences is None],  # type: ignore[attr-defined]
    }
    server = SandboxServer(sims, webhook_url=f"http://127.0.0.1:{capture.server_address[1]}").start()
    try:
        server.start_trickle(0.05)
        wanted = {f"/webhooks/{s}" for s in (*PUSH_SOURCES, "fireflies")}
        wait_for(lambda: wanted <= capture.paths(), timeout=30)
    finally:
        server.stop()
        capture.shutdown()
    signatures = {"jira": "x-hub-signature", "slack": "x-slack-signature", "github": "x-hub-signature-256",
                  "notion": "x-notion-signature", "fireflies": "x-hub-signature"}
    for path, headers, body in capture.posts:
        source = path.rsplit("/", 1)[1]
        lower = {k.lower(): v for k, v in headers.items()}
        assert lower.get(signatures[source]), f"{source} webhook without its signature header"
        assert json.loads(body)
    after_jira = (len(sims["jira"].issues), sum(len(i.comments) for i in sims["jira"].issues.values()))  # type: ignore[attr-defined]
    assert after_jira != before["jira"]
    assert json.dumps(sims["tempo"].worklogs, sort_keys=True) != before["tempo"]  # type: ignore[attr-defined]
    # The small profile's meeting still being processed was finished by the trickle.
    [pending] = before["fireflies"]
    assert sims["fireflies"].transcripts[pending].sentences  # type: ignore[attr-defined]



def test_restarts_back_off_and_a_crash_loop_gives_up() -> None:
    """The supervisor's restart policy: 1 s doubling to the cap; RESTART_LIMIT deaths within
    RESTART_WINDOW seconds give up; deaths older than the window are forgotten."""
    from core.supervisor import RESTART_BACKOFF, RESTART_BACKOFF_CAP, RESTART_LIMIT, RESTART_WINDOW, Restarts

    track = Restarts("worker-1")
    waits = [track.died(float(t)) for t in range(RESTART_LIMIT - 1)]
    assert waits == [min(RESTART_BACKOFF_CAP, RESTART_BACKOFF * 2 ** n) for n in range(RESTART_LIMIT - 1)]
    assert track.died(float(RESTART_LIMIT)) is None  # the fifth death in a few seconds: give up
    steady = Restarts("reconciler")
    assert all(steady.died(n * (RESTART_WINDOW + 1)) == RESTART_BACKOFF for n in range(10))  # one in a while
