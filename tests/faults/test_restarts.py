"""``kill -9`` of Postgres, then of Redis, under a real ``vector-sync up``: every process stays
up (same pids), the supervisor brings the embedded server back, the outage is reported in the
heartbeats while it lasts, senders get no 5xx but the 503 of an outage (a webhook while
Postgres is down is answered as usual, since it needs only Redis; a pushed document while Redis
is down gets 503), new work pushed afterwards is indexed, and
``vector-sync verify --json`` (the CLI, as a subprocess) then reports 0 missing, 0 stale,
0 ghost, 0 orphan vectors.

To hold each outage long enough to watch it (the supervisor restarts a dead server within about
a second), the supervisor is paused with SIGSTOP while the server is dead, then resumed. Short
form: no sandbox, documents pushed through the API. Full form (``CHAOS=1``): sandbox mode, and
a Slack message posted in the simulator after each restart must become searchable too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
from pgserver.utils import PostmasterInfo

from core import state
from tests.faults.conftest import FULL, Expectations, clean, figure, wait_until
from tests.test_up import Up, cmdline, fresh_home, read_env_file, running, search, vector_sync_command

KEY = "faults-admin-key"


def children(up: Up) -> dict[int, str]:
    """pid -> role of up's children (web, workers, reconciler, sandbox)."""
    out = {}
    for proc in psutil.Process(up.process.pid).children():
        args = cmdline(proc)
        role = next((r for r in ("uvicorn", "workers", "reconciler", "sandbox") if r in args), None)
        if role:
            out[proc.pid] = role
    return out


def dead(kids: dict[int, str]) -> list[str]:
    """Roles of ``kids`` no longer running (a zombie counts: the paused supervisor cannot reap)."""
    def alive(pid: int) -> bool:
        try:
            return running(psutil.Process(pid))
        except psutil.Error:
            return False

    return [role for pid, role in kids.items() if not alive(pid)]


def pg_pool(home: Path) -> Any:
    info = PostmasterInfo.read_from_pgdata(home / "pg")
    assert info is not None
    return state.open_pool(info.get_uri(), max_size=1)


def heartbeat_infos(home: Path) -> dict[int, dict[str, Any]]:
    pool = pg_pool(home)
    try:
        with pool.connection() as conn:
            rows = conn.execute("SELECT pid, info FROM heartbeats").fetchall()
    finally:
        pool.close()
    return {pid: info for pid, info in rows}


def push(up: Up, key: str, marker: str) -> str:
    """Push a document through the API (retrying while the receiver says 5xx); its id."""
    doc = f"note-{marker}"

    def pushed() -> bool:
        response = httpx.post(f"{up.url}/api/documents", headers={"X-Admin-Key": key}, timeout=10,
                              json={"id": doc, "title": f"Fault note {marker}", "text": f"The {marker} was pushed."})
        return response.status_code == 202

    wait_until(pushed, 60, "the receiver did not take a pushed document")
    return f"api:{doc}"


def by_search(up: Up, key: str) -> Any:
    """``fetch`` for Expectations: search each marker through the API (what a user sees)."""

    def fetch(wanted: dict[str, str | None]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for doc, marker in wanted.items():
            hits = search(up, key, marker or doc, None, top_k=3)
            texts = [h["text"] for h in hits if h["document_id"] == doc]
            out[doc] = " ".join(texts) if texts else None
        return out

    return fetch


def slack_edit(up: Up, env: dict[str, str], key: str, expect: Expectations) -> None:
    """Post a Slack message in the simulator (it arrives by signed webhook); expect it indexed."""
    channels = up.get("/api/scopes", params={"source": "slack"}, headers={"X-Admin-Key": key}).json()["scopes"]
    marker = f"slackfault{uuid.uuid4().hex[:8]}"
    base = env["SLACK_API_URL"].rsplit("/api", 1)[0]
    posted = httpx.post(f"{base}/_sandbox/messages", timeout=10,
                        json={"channel": channels[0]["key"], "text": f"Decision: the {marker} ships"})
    assert posted.status_code == 201, posted.text
    ts = posted.json().get("ts") or posted.json().get("message", {}).get("ts")
    expect.present(f"slack:{channels[0]['key']}:{ts}", marker)


#: What the full form audits. The sandbox's trickle edits one item every 30 s; the pushing
#: sources below settle within seconds of each edit, while Tempo (polled) and Notion hold a
#: trickle edit as missing/stale until their next pass, so a whole audit is rarely 0 at any
#: one moment under ``up`` in sandbox mode (see docs/testing.md).
FULL_SOURCES = ("jira", "slack", "github")


def verify_cli(up: Up, sandbox_env: dict[str, str], source: str | None = None) -> tuple[int, dict[str, Any]]:
    """``vector-sync verify [SOURCE] --json`` run as the operator would, against up's home (with
    the sandbox's credentials in sandbox mode): its exit code and report."""
    env = {**up.env, **sandbox_env, "SANDBOX": "off", "LOG_LEVEL": "WARNING"}
    done = subprocess.run(vector_sync_command() + ["verify"] + ([source] if source else []) + ["--json"],
                          env=env, capture_output=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"verify --json exited {done.returncode}: {done.stdout[-500:]!r} "
                             f"{done.stderr[-1500:]!r}") from None


def wait_verified_cli(up: Up, sandbox_env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Until ``vector-sync verify`` exits 0 with 0 missing, 0 stale, 0 ghost, 0 orphan vectors
    (in the full form, for each of FULL_SOURCES in one round); the last report."""
    last: list[Any] = []

    def verified() -> bool:
        # The whole audit (every configured source and the index) in the short form, where
        # only the push API holds documents; each pushing source in the full form.
        for source in (FULL_SOURCES if FULL else (None,)):
            last[:] = list(verify_cli(up, sandbox_env, source))
            if not (last[0] == 0 and clean(last[1])):
                return False
        return True

    try:
        wait_until(verified, timeout, "vector-sync verify to report 0/0/0/0", interval=2.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last if last else 'no report'}") from None
    return last[1]


def door_answers(up: Up, key: str, path: str) -> int:
    """The status a sender gets now: a webhook (``/webhooks/...``) or a pushed document."""
    if path.startswith("/webhooks/"):
        response = httpx.post(f"{up.url}{path}", content=b'{"type": "event_callback"}', timeout=30,
                              headers={"Content-Type": "application/json"})
    else:
        response = httpx.post(f"{up.url}{path}", headers={"X-Admin-Key": key}, timeout=30,
                              json={"id": f"outage-{uuid.uuid4().hex[:6]}", "title": "During", "text": "x"})
    return response.status_code


def kill_server_while_paused(up: Up, pid: int, observe: Any) -> tuple[float, float]:
    """SIGSTOP the supervisor, SIGKILL ``pid``, run ``observe()`` while it is down, SIGCONT;
    returns the monotonic times of the kill and of the resumption."""
    up.process.send_signal(signal.SIGSTOP)
    try:
        psutil.Process(pid).send_signal(signal.SIGKILL)
        killed = time.monotonic()
        observe()
    finally:
        up.process.send_signal(signal.SIGCONT)
    return killed, time.monotonic()


def test_up_survives_postgres_then_redis_kill() -> None:
    with fresh_home() as home:
        env = {"ADMIN_API_KEY": KEY} if FULL else {"SANDBOX": "off", "ADMIN_API_KEY": KEY}
        up = Up(home, **env)
        try:
            up.wait_serving(timeout=180)
            key = read_env_file(home / "sandbox.env")["ADMIN_API_KEY"] if FULL else KEY
            sandbox_env = read_env_file(home / "sandbox.env") if FULL else {}
            before = wait_until(lambda: len(children(up)) >= (4 if FULL else 3) and children(up), 60,
                                "children running")
            ours = {pid: role for pid, role in before.items() if role != "sandbox"}  # with heartbeats
            expect = Expectations()
            baseline = f"baseline{uuid.uuid4().hex[:8]}"
            expect.present(push(up, key, baseline), baseline)
            fetch = by_search(up, key)
            expect.wait_converged(fetch, 120)

            # --- Postgres -------------------------------------------------------------------
            postmaster = PostmasterInfo.read_from_pgdata(home / "pg")
            assert postmaster is not None and postmaster.pid
            old_pg = postmaster.pid

            def pg_outage_seen() -> None:
                # Every process notices (its heartbeat cannot write) and logs one line; none dies.
                try:
                    wait_until(lambda: up.output().count("postgres unreachable") >= len(ours) or dead(before),
                               60, "every process to notice the Postgres outage")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; dead: {dead(before)}\n{up.output()[-3000:]}") from None
                time.sleep(3)  # a few more seconds of outage: long enough for a loop to trip on it
                # A webhook needs no Postgres (issue 12: claim and enqueue in Redis, counters in
                # memory): this unsigned one is refused with a 4xx as usual, never a 5xx.
                answered["postgres"] = door_answers(up, key, "/webhooks/slack")
                assert not dead(before), f"died during the Postgres outage: {dead(before)}\n{up.output()[-3000:]}"

            answered: dict[str, int] = {}
            killed, resumed = kill_server_while_paused(up, old_pg, pg_outage_seen)
            assert 400 <= answered["postgres"] < 500, answered

            def new_postmaster() -> bool:
                info = PostmasterInfo.read_from_pgdata(home / "pg")
                return bool(info and info.pid != old_pg and info.is_running() and info.status == "ready")

            wait_until(new_postmaster, 120, "the supervisor to restart Postgres")
            pg_back = time.monotonic() - resumed
            pg_held = resumed - killed
            marker = f"afterpg{uuid.uuid4().hex[:8]}"
            expect.present(push(up, key, marker), marker)
            if FULL:
                slack_edit(up, sandbox_env, key, expect)
            pg_converged = expect.wait_converged(fetch, 180) + pg_back
            assert up.process.poll() is None, up.output()[-3000:]
            assert children(up) == before  # nobody died: the same processes carried on
            infos = wait_until(lambda: (i := heartbeat_infos(home)) and all(
                "postgres" in (i.get(pid) or {}).get("last_outage", "") for pid in ours) and i,
                60, "every heartbeat to record the Postgres outage")
            assert not any("outage" in infos[pid] for pid in ours), infos
            pg_lines = up.output().count("postgres unreachable")
            assert pg_lines <= 2 * len(ours), f"{pg_lines} outage lines: a log storm"

            # --- Redis ----------------------------------------------------------------------
            old_redis = int((home / "redis" / "redis.pid").read_text().strip())
            seen: dict[int, str] = {}

            def redis_outage_seen() -> None:
                def reported() -> bool:
                    for pid, info in heartbeat_infos(home).items():
                        if pid in ours and "redis unreachable since" in (info or {}).get("outage", ""):
                            seen[pid] = info["outage"]
                    return set(seen) == set(ours)

                wait_until(reported, 60, "every heartbeat to report the Redis outage")
                # Nothing can be enqueued: the door answers 503 (nothing accepted, retry later).
                answered["redis"] = door_answers(up, key, "/api/documents")
                assert not dead(before), f"died during the Redis outage: {dead(before)}\n{up.output()[-3000:]}"

            killed, resumed = kill_server_while_paused(up, old_redis, redis_outage_seen)
            assert answered["redis"] == 503, answered
            wait_until(lambda: int((home / "redis" / "redis.pid").read_text().strip()) != old_redis
                       and up.get("/readyz").status_code == 200, 120, "the supervisor to restart Redis")
            redis_back = time.monotonic() - resumed
            redis_held = resumed - killed
            marker = f"afterredis{uuid.uuid4().hex[:8]}"
            expect.present(push(up, key, marker), marker)
            if FULL:
                slack_edit(up, sandbox_env, key, expect)
            redis_converged = expect.wait_converged(fetch, 180) + redis_back
            assert up.process.poll() is None, up.output()[-3000:]
            assert children(up) == before
            wait_until(lambda: not any("outage" in (heartbeat_infos(home).get(pid) or {}) for pid in ours),
                       60, "the outage to be cleared from every heartbeat")
            # The end state issue 10 asks: verify reports 0 missing, 0 stale, 0 ghost, 0 orphans.
            report = wait_verified_cli(up, sandbox_env, 300 if FULL else 120)
            verified = time.monotonic() - resumed

            figure("Postgres kill -9: outage held (supervisor paused) while every process noticed", pg_held)
            figure("Postgres kill -9: supervisor resumed -> Postgres back", pg_back)
            figure("Postgres kill -9: supervisor resumed -> new work searchable", pg_converged)
            figure("Redis kill -9: outage held while every heartbeat reported it", redis_held)
            figure("Redis kill -9: supervisor resumed -> Redis back", redis_back)
            figure("Redis kill -9: supervisor resumed -> new work searchable", redis_converged)
            figure("Redis kill -9: supervisor resumed -> verify 0/0/0/0", verified)
            print(f"[faults] verify after both restarts: {report['drift']} drift over "
                  f"{len(report['reports'])} audit(s); answered during outages: {answered}")
            print(f"[faults] outage lines logged: postgres {pg_lines}, processes {len(ours)}; "
                  f"redis outage as reported: {json.dumps(sorted(set(seen.values()))[:1])}")
            code, took = up.stop(signal.SIGTERM)
            assert code == 0 and took < 15, up.output()[-3000:]
            assert up.survivors() == []
        except AssertionError as exc:
            lines = [line for line in up.output().splitlines() if "sandbox" not in line][-60:]
            raise AssertionError(f"{exc}\n--- vector-sync up, last lines ---\n" + "\n".join(lines)) from None
        finally:
            up.finish()
