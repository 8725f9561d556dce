"""Scale-out on one machine (issue 14): the Procfile's processes started separately, several of
each kind, sharing one Postgres and one Redis, with Pinecone as the index and OpenAI as the
embedder (their simulators) and the six SaaS simulators as sources.

Layout: Postgres and Redis are the session's standalone servers (``core.embedded``, or those
``DATABASE_URL`` / ``REDIS_URL`` name), never ``vector-sync up``; two ``web`` processes behind a
TCP load balancer that the simulators send their webhooks to; three ``worker`` processes; two
``reconciler`` processes. Each command line is the Procfile's own, run as a Procfile runner (and
the Dockerfile) runs it: ``sh -c 'exec <command>'`` with ``PORT`` in the environment.

While the simulators make live edits (each one a signed webhook, except Tempo's), one process of
each kind is killed with SIGKILL mid-way: a receiver while webhooks arrive, a worker holding
messages, a reconciler in the middle of a pass. The end state must not care:

- the drift audit (``vector-sync verify``: every scope of all six sources, plus the whole-index
  orphan check against Pinecone) reports 0 missing, 0 stale, 0 ghost, 0 orphan vectors;
- no scope was polled by two reconcilers at once: per scope, the ``runs`` of kind ``reconcile``
  (owner, started, finished) of different owners never overlap, the killed reconciler's runs
  ending at the kill (it did nothing after it, whatever its rows say until they are abandoned);
- the killed worker's messages were processed by the others, the killed reconciler's scopes
  polled by the other, and webhooks kept arriving through the surviving receiver.

Short intervals through settings (polls every 3 s, ``HEARTBEAT_TIMEOUT=10``,
``WORKER_RECOVERY_AFTER=5``), the small seeded profile, budgets far above what is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import queue
from core.runtime import Services, open_services
from sandbox.server import SandboxServer, create_simulators
from tests.conftest import BASE_ENV, FAST_BUDGETS, free_port, make_settings
from tests.faults.conftest import Proc, wait_until, wait_verified

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("jira", "slack", "github", "notion", "tempo", "fireflies")
DIMENSIONS = int(BASE_ENV["EMBEDDING_DIMENSIONS"])
#: How many of each Procfile process kind run.
LAYOUT = {"web": 2, "worker": 3, "reconciler": 2}
#: Far in the future: the end of a run that has not finished.
NOT_YET = datetime.max.replace(tzinfo=timezone.utc)

SCALE_ENV = {
    **FAST_BUDGETS,
    **{f"{s.upper()}_POLL_INTERVAL": "3" for s in SOURCES},
    "HEARTBEAT_TIMEOUT": "10",
    "WORKER_RECOVERY_AFTER": "5",
    "WORKER_THREADS": "3",
    "HTTP_TIMEOUT": "30",
    "PINECONE_NAMESPACE": "scale-out",
}


def procfile_command(kind: str) -> list[str]:
    """The Procfile's command for ``kind`` as a Procfile runner executes it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and not name.startswith("#") and name.strip() == kind:
            return ["/bin/sh", "-c", f"exec {command.strip()}"]
    raise KeyError(f"no {kind!r} process in the Procfile")


def test_procfile_commands_are_the_three_processes() -> None:
    """What the scale-out test runs is what the Procfile says (else it would prove nothing)."""
    for kind, runs in (("web", "receiver.app:main"), ("worker", "-m workers"), ("reconciler", "-m reconciler")):
        shell, flag, command = procfile_command(kind)
        assert (shell, flag) == ("/bin/sh", "-c") and command.startswith("exec ") and runs in command
    assert "$" in procfile_command("web")[2]  # the port comes from PORT
    with pytest.raises(KeyError):
        procfile_command("scheduler")


# --- the load balancer ------------------------------------------------------------------------


class Balancer:
    """A TCP load balancer on loopback in front of the receivers, as an L4 balancer with passive
    health checks behaves: each connection goes to the next receiver in turn, or on to the one
    after when that one refuses it (a dead receiver). ``taken`` counts connections per port."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.taken: Counter[int] = Counter()
        self._turn = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="balancer", daemon=True)

    def start(self) -> Balancer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", self.port),
                                         self._loop).result(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        for _ in self.ports:
            port = self.ports[self._turn % len(self.ports)]
            self._turn += 1
            try:
                upstream_in, upstream_out = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.taken[port] += 1
            await asyncio.gather(_pipe(client_in, upstream_out), _pipe(upstream_in, client_out))
            return
        client_out.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    sink.close()


# --- no scope polled by two reconcilers at once ---------------------------------------------

Run = tuple[str, str, str, datetime, datetime]  # source, scope, owner, started, ended


def overlapping_runs(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of the same scope by different owners whose intervals intersect."""
    found = []
    by_scope: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_scope.setdefault((run[0], run[1]), []).append(run)
    for spans in by_scope.values():
        spans.sort(key=lambda r: r[3])
        for i, first in enumerate(spans):
            for later in spans[i + 1:]:
                if later[3] >= first[4]:
                    break  # sorted by start: none after this one starts before `first` ends
                if later[2] != first[2]:
                    found.append((first, later))
    return found


def test_overlapping_runs_finds_two_owners_on_one_scope_at_once() -> None:
    """The check below can fail: it finds an overlap, and only between different owners."""
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    s = timedelta(seconds=1)
    a = ("jira", "OPS", "reconciler@h:1", t, t + 5 * s)
    b = ("jira", "OPS", "reconciler@h:2", t + 4 * s, t + 9 * s)
    c = ("jira", "OPS", "reconciler@h:2", t + 10 * s, NOT_YET)
    d = ("jira", "WEB", "reconciler@h:1", t + 4 * s, t + 6 * s)
    assert overlapping_runs([c, b, a, d]) == [(a, b)]
    assert overlapping_runs([a, c, d]) == []
    assert overlapping_runs([a, ("jira", "OPS", "reconciler@h:1", t + 1 * s, t + 2 * s)]) == []


def reconcile_runs(services: Services, killed: dict[str, datetime]) -> list[Run]:
    """Every reconcile run; one of a killed owner ends at its kill at the latest."""
    with services.pool.connection() as conn:
        rows = conn.execute("""SELECT source, scope, owner, started_at, finished_at FROM runs
                               WHERE kind = 'reconcile'""").fetchall()
    return [(source, scope, owner, started, min(ended or NOT_YET, killed.get(owner, NOT_YET)))
            for source, scope, owner, started, ended in rows]


# --- the cluster ------------------------------------------------------------------------------


class Cluster:
    """The simulators, the balancer and the Procfile's processes (LAYOUT), all stopped by
    ``close()``, pass or fail."""

    def __init__(self, infra: dict[str, str], log_dir: Path) -> None:
        self._stop_edits = threading.Event()
        self._editor: threading.Thread | None = None
        self.errors: list[BaseException] = []
        self._cleanup = contextlib.ExitStack()  # what is started is stopped, last first
        try:
            self._start(infra, log_dir)
        except BaseException:
            self._cleanup.close()
            raise

    def _start(self, infra: dict[str, str], log_dir: Path) -> None:
        sims = create_simulators([*SOURCES, "openai", "pinecone"], profile="small", seed=14)
        for sim in sims.values():
            sim.knobs.rate_limit = 0  # budgets are not what this test is about
        sims["pinecone"].dimension = DIMENSIONS  # type: ignore[attr-defined]
        sims["notion"].aggregation_window = 0.5  # type: ignore[attr-defined]
        self.sims = sims
        self.sandbox = SandboxServer(sims).start()
        self._cleanup.callback(self.sandbox.stop)
        self.ports = [free_port() for _ in range(LAYOUT["web"])]
        self.balancer = Balancer(self.ports).start()
        self._cleanup.callback(self.balancer.stop)
        self.sandbox.set_webhook_target(self.balancer.url)
        self.env = {**self.sandbox.env(), **SCALE_ENV}
        self.settings = make_settings(infra, **self.env)
        self.services = open_services(self.settings)
        self._cleanup.callback(self.services.close)
        self.procs: dict[str, list[Proc]] = {kind: [] for kind in LAYOUT}
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        process_env = {**os.environ, "PATH": path, **BASE_ENV, **infra, **self.env}
        for kind, count in LAYOUT.items():
            for n in range(count):
                port = {"PORT": str(self.ports[n])} if kind == "web" else {}
                proc = Proc(procfile_command(kind), {**process_env, **port}, log_dir, kind)
                self._cleanup.callback(proc.finish)
                self.procs[kind].append(proc)

    def close(self) -> None:
        self.stop_edits()
        self._cleanup.close()

    # --- live edits -------------------------------------------------------------------------

    def start_edits(self) -> None:
        """One live edit per source in turn (a new issue, a reply, a worklog…), as people make
        them, until ``stop_edits``; each fires its webhook through the balancer."""
        rng = random.Random(14)

        def edit() -> None:
            try:
                while not self._stop_edits.is_set():
                    for name in SOURCES:
                        self.sandbox.run_coroutine(self.sims[name].trickle(rng))
                    self._stop_edits.wait(0.3)
            except BaseException as exc:  # surfaced by the test
                self.errors.append(exc)

        self._editor = threading.Thread(target=edit, name="edits", daemon=True)
        self._editor.start()

    def stop_edits(self) -> None:
        self._stop_edits.set()
        if self._editor is not None:
            self._editor.join(30)

    def jira(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.sandbox.url('jira')}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    # --- what the processes are doing -------------------------------------------------------

    def ready(self) -> bool:
        return all(httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200 for port in self.ports)

    def every_scope_polled(self) -> bool:
        with self.services.pool.connection() as conn:
            rows = conn.execute("SELECT source, last_success_at FROM scopes WHERE active").fetchall()
        return {s for s, _ in rows} == set(SOURCES) and all(at for _, at in rows)

    def reconciler_in_a_jira_pass(self, slow_since: datetime) -> tuple[Proc, dict[str, int]] | None:
        """A reconciler of ours holding Jira projects' leases with their passes running, and
        those passes ({source:scope: run id}): passes started after ``slow_since`` (when Jira
        began taking 8 s a request) and less than 3 s ago, so still waiting for their first
        answer (and that for at least 5 s more)."""
        with self.services.pool.connection() as conn:
            rows = conn.execute(
                """SELECT s.lease_owner, s.source || ':' || s.key, r.id FROM scopes s JOIN runs r
                       ON r.kind = 'reconcile' AND r.status = 'running' AND r.owner = s.lease_owner
                          AND r.source = s.source AND r.scope = s.key
                   WHERE s.source = 'jira' AND r.started_at > %s
                     AND r.started_at > now() - interval '3 seconds'""", (slow_since,)).fetchall()
        for proc in self.procs["reconciler"]:
            passes = {scope: run for owner, scope, run in rows if owner.endswith(f":{proc.pid}")}
            if passes and proc.alive():
                return proc, passes
        return None

    def worker_holding_messages(self) -> tuple[Proc, str] | None:
        """The worker of ours holding the most fetched, unacknowledged messages, and its
        Dramatiq broker id (its heartbeat names it)."""
        holding = queue.unacked(self.services.broker)
        with self.services.pool.connection() as conn:
            brokers = dict(conn.execute("SELECT pid, info->>'broker_id' FROM heartbeats WHERE kind = 'worker'").fetchall())
        held = [(holding[brokers[p.pid]], p) for p in self.procs["worker"] if p.alive() and brokers.get(p.pid) in holding]
        if not held:
            return None
        proc = max(held, key=lambda pair: pair[0])[1]
        return proc, brokers[proc.pid]

    def mid_way(self, slow_since: datetime) -> tuple[tuple[Proc, dict[str, int]], tuple[Proc, str]] | None:
        """Both at one moment (the worker looked for last, just before the kills)."""
        reconciler = self.reconciler_in_a_jira_pass(slow_since)
        worker = self.worker_holding_messages() if reconciler else None
        return (reconciler, worker) if reconciler and worker else None

    def owner(self, proc: Proc) -> str:
        """The process's name in heartbeats and runs (``kind@host:pid``)."""
        with self.services.pool.connection() as conn:
            row = conn.execute("SELECT DISTINCT owner FROM runs WHERE owner LIKE %s", (f"%:{proc.pid}",)).fetchone()
        return str(row[0])

    def now(self) -> datetime:
        with self.services.pool.connection() as conn:
            return conn.execute("SELECT now()").fetchone()[0]


@pytest.fixture
def cluster(services: Services, infra: dict[str, str], tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(infra, tmp_path)  # `services` emptied the tables and Redis first
    try:
        yield cluster
    finally:
        cluster.close()


def test_two_receivers_three_workers_two_reconcilers_converge_through_a_kill_of_each(cluster: Cluster) -> None:
    started = time.monotonic()
    wait_until(cluster.ready, 120, "both receivers to serve")
    laps = {"serving": time.monotonic() - started}
    cluster.start_edits()
    wait_until(cluster.every_scope_polled, 120, "the reconcilers to discover and poll every scope")
    laps["every scope polled"] = time.monotonic() - started
    wait_until(lambda: all(cluster.balancer.taken[p] for p in cluster.ports), 60,
               "webhooks through the balancer to reach both receivers")

    # Mid-way: Jira answers slowly (8 s a request), so a pass of a Jira project is running and
    # workers are holding Jira messages (webhook refs are fetched) when the kills land.
    cluster.jira("PUT", "/_sandbox/knobs", json={"latency": 8.0})
    slow_since = cluster.now()
    (reconciler, passes), (worker, its_broker) = wait_until(
        lambda: cluster.mid_way(slow_since), 90, "a worker holding messages and a reconciler in a Jira pass")
    web = cluster.procs["web"][0]
    for proc in (reconciler, worker, web):
        proc.kill()
    killed_at = cluster.now()
    assert its_broker in queue.unacked(cluster.services.broker)  # it died holding messages
    laps["killed"] = time.monotonic() - started
    cluster.jira("PUT", "/_sandbox/knobs", json={"latency": 0.0})

    # Edits go on after the kills, through the surviving receiver; then two Jira issues are
    # deleted (delete webhooks), the edits stop, and everything must settle.
    survivor_port = cluster.ports[1]
    after = cluster.balancer.taken[survivor_port]
    wait_until(lambda: cluster.balancer.taken[survivor_port] >= after + 10, 60,
               "webhooks to keep arriving through the surviving receiver")
    cluster.stop_edits()
    assert not cluster.errors, cluster.errors
    # Issues nobody logged time on: Tempo sends no webhooks, so a deleted issue's worklogs
    # leave the index only when pruned (PRUNE_INTERVAL, daily), not within this test.
    logged = {w["issue"]["id"] for w in cluster.sims["tempo"].worklogs.values()}  # type: ignore[attr-defined]
    issues = [str(i.id) for i in cluster.sims["jira"].issues.values() if i.id not in logged][:2]  # type: ignore[attr-defined]
    assert len(issues) == 2
    for issue in issues:
        cluster.jira("DELETE", f"/_sandbox/jira/issues/{issue}")

    laps["edits stopped"] = time.monotonic() - started

    # The killed worker's messages are taken over (Redis hands them to the others once its
    # Dramatiq heartbeat is WORKER_RECOVERY_AFTER old), and the other reconciler polls the
    # scopes whose passes the killed one was in (once its heartbeat is HEARTBEAT_TIMEOUT old).
    wait_until(lambda: its_broker not in queue.unacked(cluster.services.broker), 90,
               "the killed worker's messages to be taken over")
    killed_owner = cluster.owner(reconciler)
    survivor = cluster.owner(next(p for p in cluster.procs["reconciler"] if p is not reconciler))

    def polled_again() -> bool:
        with cluster.services.pool.connection() as conn:
            polled = {row[0] for row in conn.execute(
                """SELECT DISTINCT source || ':' || scope FROM runs WHERE kind = 'reconcile'
                       AND status = 'succeeded' AND owner = %s AND started_at > %s""", (survivor, killed_at))}
        return set(passes) <= polled

    wait_until(polled_again, 90, "the other reconciler to poll the killed one's scopes")
    laps["taken over"] = time.monotonic() - started

    # The end state: the drift audit of every scope of the six sources and of the whole index.
    report = wait_verified(cluster.services, cluster.settings, timeout=180)
    laps["verified"] = time.monotonic() - started
    print("\n[scale-out] " + ", ".join(f"{k} {v:.1f}s" for k, v in laps.items()), flush=True)
    assert report["drift"] == 0 and report["failed"] == 0 and report["skipped"] == 0
    assert {r["source"] for r in report["reports"]} == {*SOURCES, "index"}
    assert all(r["live"] > 0 for r in report["reports"])
    with cluster.services.pool.connection() as conn:
        deleted = conn.execute("SELECT count(*) FROM documents WHERE document_id = ANY(%s) AND deleted_at IS NOT NULL",
                               ([f"jira:{i}" for i in issues],)).fetchone()[0]
        statuses = dict(conn.execute("SELECT id, status FROM runs WHERE id = ANY(%s)", (list(passes.values()),)))
    assert deleted == len(issues)
    assert "succeeded" not in statuses.values(), statuses  # the kill did land mid-pass

    # No scope was polled by two reconcilers at once, across the whole run and the kill.
    runs = reconcile_runs(cluster.services, {killed_owner: killed_at})
    assert {r[2] for r in runs} == {killed_owner, survivor}
    shared = {r[:2] for r in runs if r[2] == killed_owner} & {r[:2] for r in runs if r[2] == survivor}
    assert shared, "no scope was polled by both reconcilers: the check below would compare nothing"
    assert overlapping_runs(runs) == []
