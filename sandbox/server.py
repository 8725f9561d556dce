"""Serve simulators on loopback, each on its own port, from one background thread or the foreground."""

from __future__ import annotations

import asyncio
import importlib
import random
import socket
import threading
from typing import Any

import uvicorn

from sandbox.base import Knobs, Simulator

#: Every simulator module under sandbox/, each exposing ``create(knobs) -> Simulator``.
SIMULATORS = ("jira", "slack", "github", "notion", "tempo", "fireflies", "openai", "pinecone")

#: Seeding order matters: Tempo and Fireflies read the Jira issues from the shared world.
_SEED_ORDER = {name: i for i, name in enumerate(SIMULATORS)}


def create_simulators(
    names: tuple[str, ...] | list[str] = SIMULATORS, *, profile: str = "small", seed: int = 1
) -> dict[str, Simulator]:
    sims: dict[str, Simulator] = {}
    world: dict[str, Any] = {}
    for name in sorted(names, key=lambda n: _SEED_ORDER.get(n, 99)):
        module = importlib.import_module(f"sandbox.{name}")
        sim: Simulator = module.create(Knobs(seed=seed))
        sim.seed(profile, random.Random(f"{seed}:{name}"), world)
        sims[name] = sim
    return sims


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening-ready TCP socket on a free loopback port, to hand to uvicorn."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


class SandboxServer:
    """Runs simulators with uvicorn on loopback ports.

    ``start()`` serves them from a daemon thread (tests); ``serve()`` blocks (the CLI).
    ``env()`` merges every simulator's settings for vector-sync.
    """

    def __init__(
        self,
        sims: dict[str, Simulator],
        *,
        host: str = "127.0.0.1",
        port_base: int = 0,
        webhook_url: str | None = None,
    ) -> None:
        self.sims = sims
        self.host = host
        # Without a port base each simulator's socket is bound here and handed to uvicorn: a port
        # picked now and bound later could be taken in between by another process (parallel
        # test sessions did, and the sandbox never started).
        self._sockets = {} if port_base else {name: bound_socket(host) for name in sims}
        self.ports = {
            name: (port_base + i + 1 if port_base else self._sockets[name].getsockname()[1])
            for i, name in enumerate(sims)
        }
        for name, sim in sims.items():
            sim.base_url = f"http://{host}:{self.ports[name]}"
            if webhook_url:
                sim.webhooks.target = webhook_url.rstrip("/") + f"/webhooks/{name}"
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def url(self, name: str) -> str:
        return self.sims[name].base_url

    def env(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for sim in self.sims.values():
            merged.update(sim.env(sim.base_url))
        return merged

    def set_webhook_target(self, receiver_url: str) -> None:
        for name, sim in self.sims.items():
            sim.webhooks.target = receiver_url.rstrip("/") + f"/webhooks/{name}"

    async def _serve(self, started: threading.Event | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        for name, sim in self.sims.items():
            config = uvicorn.Config(
                sim.app, host=self.host, port=self.ports[name], log_level="warning",
                lifespan="off", access_log=False,
            )
            self._servers.append(uvicorn.Server(config))
        tasks = [
            asyncio.create_task(server.serve(sockets=[self._sockets[name]] if name in self._sockets else None))
            for name, server in zip(self.sims, self._servers)
        ]
        while not all(server.started for server in self._servers):
            if any(task.done() for task in tasks):
                for task in tasks:
                    if task.done() and task.exception():
                        raise task.exception()  # type: ignore[misc]
                raise RuntimeError("a sandbox simulator failed to start")
            await asyncio.sleep(0.01)
        if started is not None:
            started.set()
        await asyncio.gather(*tasks)

    def serve(self) -> None:
        asyncio.run(self._serve())

    async def _trickle(self, every: float) -> None:
        rng = random.Random(0)
        sims = list(self.sims.values())
        while True:
            for sim in sims:
                # Spread the edits over the period: a steady trickle, not a burst.
                await asyncio.sleep(every / len(sims))
                try:
                    await sim.trickle(rng)
                except Exception as exc:  # a failed edit must not stop the sandbox
                    print(f"sandbox: {sim.name} trickle failed: {type(exc).__name__}: {exc}", flush=True)

    def start_trickle(self, every: float) -> None:
        """Every ``every`` seconds, each simulator makes one live edit (one after another,
        spread evenly over the period)."""
        assert self._loop is not None, "sandbox not started"
        self._trickle_task = asyncio.run_coroutine_threadsafe(self._trickle(every), self._loop)

    def start(self) -> SandboxServer:
        started = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(started)), name="sandbox", daemon=True
        )
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("sandbox did not start within 30 s")
        return self

    def run_coroutine(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the sandbox's loop (to drive simulators from a test thread)."""
        assert self._loop is not None, "sandbox not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
