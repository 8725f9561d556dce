"""webhook-ack: how fast the receiver answers signed webhooks under a bounded concurrent load.

The receiver runs as the Procfile's ``web`` process (uvicorn, own process) against real
Postgres and Redis. An ``httpx.AsyncClient`` sends Slack Events API ``message`` callbacks and
GitHub ``issues`` deliveries, each signed as the simulators sign them (``sandbox.slack.sign``,
``sandbox.github.sign``), each with a fresh delivery id, so every request takes the full path:
verify, parse, claim the delivery in Postgres, enqueue durably in Redis, record, answer.
No worker runs: this measures the acknowledgement only. Every accepted request must leave
exactly one message in the queue; the benchmark counts them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from typing import Any

import httpx

from benchmarks.harness import Infra, Receiver, Sandbox, latency_summary
from core.queue import QUEUE
from core.runtime import open_services
from sandbox import github as gh_sim
from sandbox import slack as slack_sim

SLACK_ACK_BUDGET_MS = 3000.0


def slack_request(channel: str, n: int) -> tuple[bytes, dict[str, str]]:
    ts = f"{time.time():.6f}"
    envelope = {
        "token": slack_sim.VERIFICATION_TOKEN, "team_id": "T0BENCH", "api_app_id": "A0BENCH",
        "type": "event_callback", "event_id": f"Ev{uuid.uuid4().hex[:12].upper()}",
        "event_time": int(time.time()),
        "event": {"type": "message", "channel": channel, "channel_type": "channel", "user": "U0BENCH",
                  "text": f"benchmark message {n} about SUBS billing", "ts": ts, "event_ts": ts},
    }
    body = json.dumps(envelope, separators=(",", ":")).encode()
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
               "X-Slack-Request-Timestamp": stamp,
               "X-Slack-Signature": slack_sim.sign(slack_sim.SIGNING_SECRET, stamp, body)}
    return body, headers


def github_request(full_name: str, n: int) -> tuple[bytes, dict[str, str]]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    owner = full_name.split("/")[0]
    payload = {
        "action": "edited",
        "issue": {"number": 1 + n % 500, "title": f"Benchmark issue {n}", "state": "open",
                  "body": "edited by the benchmark", "updated_at": now, "created_at": now,
                  "user": {"login": "octocat", "id": 1}},
        "repository": {"full_name": full_name, "name": full_name.split("/")[1], "default_branch": "main",
                       "private": False, "owner": {"login": owner}},
        "organization": {"login": owner, "id": 1},
        "sender": {"login": "octocat", "id": 1},
    }
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/5f0e2a1",
               "X-GitHub-Event": "issues", "X-GitHub-Delivery": str(uuid.uuid4()),
               "X-GitHub-Hook-ID": str(gh_sim.HOOK_ID),
               "X-Hub-Signature": gh_sim.sign(gh_sim.WEBHOOK_SECRET, body, "sha1"),
               "X-Hub-Signature-256": gh_sim.sign(gh_sim.WEBHOOK_SECRET, body, "sha256")}
    return body, headers


async def load(url: str, total: int, concurrency: int, time_limit: float, repo: str,
               channel: str) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    counter = iter(range(total))
    deadline = time.monotonic() + time_limit
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        async def one(n: int) -> None:
            if n % 2:
                path, (body, headers) = "/webhooks/github", github_request(repo, n)
            else:
                path, (body, headers) = "/webhooks/slack", slack_request(channel, n)
            t0 = time.perf_counter()
            try:
                response = await client.post(f"{url}{path}", content=body, headers=headers)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                return
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[f"{path.rsplit('/', 1)[1]} {response.status_code}"] += 1

        async def lane() -> None:
            for n in counter:
                if time.monotonic() > deadline:
                    return
                await one(n)

        # Warm-up (connections, first connector build, pools), not counted.
        warmup = min(20, total)
        for n in range(warmup):
            await one(total + n)
        latencies.clear()
        statuses.clear()
        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "statuses": dict(statuses), "errors": dict(errors), "elapsed": elapsed,
            "warmup": warmup}


def run(infra: Infra, quick: bool) -> dict[str, Any]:
    infra.reset()
    total, concurrency, time_limit = (300, 20, 60.0) if quick else (2000, 20, 300.0)
    sandbox = Sandbox(["slack", "github"], profile="small")
    receiver = None
    try:
        env = infra.env(**sandbox.env)
        repo = sandbox.env["GITHUB_REPOS"].split(",")[0]
        receiver = Receiver(env)
        svc = open_services(infra.settings(**sandbox.env), pool_size=1)
        try:
            before = int(svc.broker.client.hlen(f"dramatiq:{QUEUE}.msgs"))
            out = asyncio.run(load(receiver.url, total, concurrency, time_limit, repo, "C0BENCH01"))
            queued = int(svc.broker.client.hlen(f"dramatiq:{QUEUE}.msgs")) - before - out["warmup"]
        finally:
            svc.close()
        ms = out["latencies"]
        answered = len(ms)
        accepted = sum(v for k, v in out["statuses"].items() if k.endswith(" 200"))
        figures: dict[str, Any] = {
            "requests_answered": answered,
            **latency_summary(ms),
            "requests_per_s": round(answered / out["elapsed"], 1) if out["elapsed"] else 0.0,
            "share_within_3s_pct": round(100 * sum(1 for v in ms if v <= SLACK_ACK_BUDGET_MS) / answered, 2)
            if answered else 0.0,
            "statuses": out["statuses"],
            "client_errors": out["errors"],
            "messages_enqueued": queued,
            "accepted_2xx": accepted,
        }
        return {"params": {"requests": total, "concurrency": concurrency, "mix": "50% Slack message, 50% GitHub issues",
                           "receiver": "uvicorn --factory receiver.app:main (1 process)", "worker": "none"},
                "figures": figures}
    finally:
        if receiver is not None:
            receiver.stop()
        sandbox.stop()
