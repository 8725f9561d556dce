"""SIGKILL of the receiver while webhooks are being sent: the sender's retries (Jira retries a
webhook that got no answer, with growing delays) reach the receiver started again on the same
port, and the index converges; the drift audit then reports 0/0/0/0. While it is dead, status
says no web process is alive (``healthy`` false).

Real processes (the Procfile's ``web``, ``worker`` and ``reconciler``) against the session's
Postgres and Redis and an in-process Jira simulator. The same in both forms (the receiver is
down for about as long as a new one takes to start); the seconds from the kill to a clean audit
are printed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from core.runtime import open_services
from core.status import build_status
from sandbox.server import SandboxServer, create_simulators
from tests.conftest import FAST_BUDGETS, free_port, make_settings
from tests.faults.conftest import Expectations, Proc, figure, pgvector_texts, wait_until, wait_verified

PROJECT = "RK"


@pytest.fixture(scope="module")
def jira() -> Iterator[SandboxServer]:
    sims = create_simulators(["jira"], profile="small", seed=12)
    sims["jira"].knobs.rate_limit = 0
    # Retries 2, 4, 8, 16 and 32 s after a failed delivery (a minute in all): enough to span
    # a receiver's restart on a loaded machine.
    sims["jira"].retry_delay = 2.0  # type: ignore[attr-defined]
    server = SandboxServer(sims).start()
    yield server
    server.stop()


def control(server: SandboxServer, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, f"{server.url('jira')}/_sandbox/jira{path}", timeout=30, **kwargs)
    response.raise_for_status()
    return response.json() if response.content else None


def test_a_killed_receivers_webhooks_arrive_by_the_senders_retries(
    services: Any, infra: dict[str, str], jira: SandboxServer, procs: Callable[..., Proc]
) -> None:
    env = {**infra, **jira.env(), **FAST_BUDGETS, "HTTP_TIMEOUT": "60", "JIRA_POLL_INTERVAL": "1h"}
    control(jira, "POST", "/projects", json={"key": PROJECT, "name": "Receiver kill"})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    jira.set_webhook_target(url)

    def ready() -> bool:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200

    web = procs("web", env, port)
    procs("worker", env)
    procs("reconciler", env)
    wait_until(ready, 90, "the receiver to serve")
    settings = make_settings(infra, **{k: v for k, v in env.items() if k not in infra})
    svc = open_services(settings)
    try:
        def passed() -> bool:
            with svc.pool.connection() as conn:
                return conn.execute("SELECT 1 FROM scopes WHERE source = 'jira' AND key = %s "
                                    "AND last_success_at IS NOT NULL", (PROJECT,)).fetchone() is not None

        wait_until(passed, 120, "the reconciler to discover and pass the test's project")

        expect = Expectations()
        created: list[str] = []
        stop = threading.Event()
        errors: list[BaseException] = []

        def sender() -> None:  # creates issues (each fires a webhook) until told to stop
            n = 0
            try:
                while not stop.is_set() and n < 40:
                    marker = f"rkill{n}zq"
                    issue = control(jira, "POST", "/issues", json={
                        "project": PROJECT, "summary": f"Sent around the kill {n}",
                        "description": f"Webhook {marker} {marker}"})
                    expect.present(f"jira:{issue['id']}", marker)
                    created.append(str(issue["id"]))
                    n += 1
                    time.sleep(0.2)
            except BaseException as exc:  # surfaced by the test below
                errors.append(exc)

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        try:
            wait_until(lambda: len(created) >= 5, 60, "the first webhooks to be sent")
            web.kill()
            killed = time.monotonic()
            wait_until(lambda: len(created) >= 12, 60, "webhooks sent while the receiver is dead")
            # An edit and a delete while it is dead too.
            control(jira, "PUT", f"/issues/{created[1]}", json={"description": "Edited rkilledit zq rkilleditzq"})
            expect.present(f"jira:{created[1]}", "rkilleditzq")
            control(jira, "DELETE", f"/issues/{created[2]}")
            expect.gone(f"jira:{created[2]}")

            def shown() -> bool:  # status says so while it lasts (after HEARTBEAT_TIMEOUT)
                status = build_status(svc, settings)
                return not status["healthy"] and any("no live web process" in r for r in status["reasons"])

            wait_until(shown, 60, "status to show that no receiver is alive")
            procs("web", env, port)
            wait_until(ready, 90, "the new receiver to serve")
            wait_until(lambda: len(created) >= 20, 60, "webhooks sent after the restart")
        finally:
            stop.set()
            thread.join(30)
        assert not errors, errors
        assert len(created) >= 20
        refused = [d for d in jira.sims["jira"].webhooks.deliveries if d.status is None and not d.dropped]
        assert refused, "no delivery went unanswered: the kill did not interrupt any webhook"
        expect.wait_converged(pgvector_texts(svc.pool, settings.embedding_dimensions), 180)
        report = wait_verified(svc, settings, "jira", PROJECT, timeout=120)
        assert report["drift"] == 0
        figure(f"receiver SIGKILL under {len(created)} webhooks: kill -> verify 0/0/0/0", time.monotonic() - killed)
    finally:
        svc.close()
