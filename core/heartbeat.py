"""Each process writes a heartbeat row every few seconds; status reports a silent one as dead."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from psycopg_pool import ConnectionPool

from core import state

log = logging.getLogger("vector_sync.heartbeat")


class Heartbeat:
    """A daemon thread that beats every ``interval`` seconds until stopped."""

    def __init__(
        self, pool: ConnectionPool, kind: str, interval: float,
        info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.pool = pool
        self.kind = kind
        self.name = state.process_name(kind)
        self.interval = interval
        self.info = info or dict
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{kind}", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        try:
            state.beat(self.pool, self.kind, self.name, self.info())
        except Exception as exc:  # a missed beat must not kill the process; status shows it
            log.warning("heartbeat failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self, *, forget: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval + 5)
        if forget:
            try:
                state.forget_process(self.pool, self.name)
            except Exception as exc:
                log.warning("could not remove heartbeat: %s", exc)
