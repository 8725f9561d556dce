"""The fault suite's harness: real processes (the Procfile's commands and ``vector-sync up``),
killed with SIGKILL, and a way to say what the index must hold once the dust settles.

``make test`` runs every fault in its short form (recovery settings shortened, so each fault
takes seconds to tens of seconds); ``make chaos`` sets ``CHAOS=1`` and runs the long forms with
the production defaults, printing the figures docs/testing.md quotes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core import state
from tests.conftest import BASE_ENV

#: ``CHAOS=1`` (``make chaos``): the long forms, with production recovery settings.
FULL = os.environ.get("CHAOS", "") not in ("", "0")


def figure(name: str, value: float, unit: str = "s") -> None:
    """Print a measured figure (``-s`` shows them; docs/testing.md quotes them)."""
    print(f"\n[faults] {name}: {value:.1f}{unit}" + (" (full form)" if FULL else " (short form)"), flush=True)


class Proc:
    """One real process (``python -m workers``, ``python -m reconciler``, uvicorn …) with its
    output in a file, always killed at teardown."""

    def __init__(self, args: list[str], env: dict[str, str], log_dir: Path, name: str) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in finish()
        self.process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def finish(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """``start(kind, env)`` starts ``python -m workers`` / ``python -m reconciler`` / the
    receiver (``web``); every process is stopped at teardown, pass or fail."""
    started: list[Proc] = []

    def start(kind: str, env: dict[str, str], port: int | None = None) -> Proc:
        args = {
            "worker": [sys.executable, "-m", "workers"],
            "reconciler": [sys.executable, "-m", "reconciler"],
            "web": [sys.executable, "-m", "uvicorn", "--factory", "receiver.app:main", "--host", "127.0.0.1",
                    "--port", str(port or 0), "--no-access-log"],
        }[kind]
        proc = Proc(args, {**os.environ, **BASE_ENV, **env}, tmp_path, kind)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.finish()


def heartbeat_of(pool: Any, pid: int) -> dict[str, Any] | None:
    with state.dict_cursor(pool) as cur:
        cur.execute("SELECT process, kind, pid, beat_at, info FROM heartbeats WHERE pid = %s", (pid,))
        rows = cur.fetchall()
    return dict(rows[0]) if rows else None


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll until ``predicate()`` is truthy; AssertionError naming ``what`` after ``timeout``.
    Exceptions from the predicate (a server that is down) count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:g}s" + (f" (last error: {last!r})" if last else ""))


# --- end state ------------------------------------------------------------------------------

#: Given {document id: expected marker or None}, each document's indexed text (None: not indexed).
Fetch = Callable[[dict[str, "str | None"]], dict[str, "str | None"]]


@dataclass
class Drift:
    missing: list[str] = field(default_factory=list)  # expected, not indexed
    stale: list[str] = field(default_factory=list)    # indexed, without the expected text
    ghost: list[str] = field(default_factory=list)    # expected gone, still indexed

    @property
    def total(self) -> int:
        return len(self.missing) + len(self.stale) + len(self.ghost)

    def __str__(self) -> str:
        return f"missing={self.missing[:5]} stale={self.stale[:5]} ghost={self.ghost[:5]}"


@dataclass
class Expectations:
    """What the index must hold after a fault: per document id, a marker its indexed text must
    contain, or None for "gone". ``drift(fetch)`` compares with what is indexed, where ``fetch``
    is given the wanted {document id: marker} and returns each document's indexed text (None
    when not indexed): from the pgvector table (``pgvector_texts``), or a search through the API.
    The drift audit (``audit`` / ``wait_verified`` below, what ``vector-sync verify`` runs)
    checks the same end state from the sources' side: a fault test ends with both."""

    wanted: dict[str, str | None] = field(default_factory=dict)

    def present(self, document_id: str, marker: str) -> None:
        self.wanted[document_id] = marker

    def gone(self, document_id: str) -> None:
        self.wanted[document_id] = None

    def drift(self, fetch: Fetch) -> Drift:
        indexed = fetch(dict(self.wanted))
        drift = Drift()
        for doc, marker in self.wanted.items():
            text = indexed.get(doc)
            if marker is None:
                if text is not None:
                    drift.ghost.append(doc)
            elif text is None:
                drift.missing.append(doc)
            elif marker not in text:
                drift.stale.append(doc)
        return drift

    def wait_converged(self, fetch: Fetch, timeout: float) -> float:
        """Seconds until there is no drift; AssertionError with the drift after ``timeout``."""
        start = time.monotonic()
        last: list[Drift] = []

        def converged() -> bool:
            last[:] = [self.drift(fetch)]
            return last[0].total == 0

        try:
            wait_until(converged, timeout, "the index did not converge")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {last[0] if last else 'no answer'}") from None
        return time.monotonic() - start


def pgvector_texts(pool: Any, dimensions: int) -> Fetch:
    """``fetch`` for ``Expectations``: each document's chunk texts, from the pgvector table."""

    def fetch(wanted: dict[str, str | None]) -> dict[str, str | None]:
        with pool.connection() as conn:
            rows = conn.execute(
                f"""SELECT document_id, string_agg(metadata->>'text', ' ') FROM vectors_{dimensions}
                    WHERE document_id = ANY(%s) GROUP BY document_id""", (list(wanted),)).fetchall()
        return {doc: text for doc, text in rows}

    return fetch


# --- the drift audit (``vector-sync verify``) -------------------------------------------------


def audit(services: Any, settings: Any, source: str | None = None, scope: str | None = None,
          *, index: bool = True) -> dict[str, Any]:
    """Run the drift audit as ``vector-sync verify [SOURCE] [--scope KEY] --json`` does
    (``core.verify.Auditor``), plus the whole-index orphan check when ``index``; its summary."""
    import asyncio

    from core.runtime import SourceSet
    from core.verify import INDEX, Auditor, summary

    async def run() -> dict[str, Any]:
        sources = SourceSet(settings, services.pool)
        try:
            auditor = Auditor(services, sources, "faults-test")
            targets = [t for t in auditor.targets(source, scope) if t[0] != INDEX]
            return summary(await auditor.run_all(targets + ([(INDEX, None)] if index else [])))
        finally:
            await sources.aclose()

    return asyncio.run(run())


def clean(report: dict[str, Any]) -> bool:
    """0 missing, 0 stale, 0 ghost, 0 orphan vectors, and every audit finished."""
    return (report["failed"] == 0 and report["skipped"] == 0 and report["missing"] == 0
            and report["stale"] == 0 and report["ghost"] == 0 and report["orphan_vectors"] == 0)


def wait_verified(services: Any, settings: Any, source: str | None = None, scope: str | None = None,
                  timeout: float = 120.0, between: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Audit until clean (``between()`` runs before each try, e.g. a reconcile pass); the last
    report. AssertionError with it after ``timeout``."""
    last: list[dict[str, Any]] = []

    def verified() -> bool:
        if between is not None:
            between()
        last[:] = [audit(services, settings, source, scope)]
        return clean(last[0])

    try:
        wait_until(verified, timeout, f"verify {source or 'all'} {scope or ''} to report 0/0/0/0", interval=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last[0] if last else 'no report'}") from None
    return last[0]
