"""The entry point of a long-running process (``python -m workers``, ``python -m reconciler``):
settings, logging, signal handlers, and one-line failures instead of stack traces.

It lives in core, not in the CLI package, because the process packages use it and the CLI
stands above them (the CLI imports the process packages, never the reverse).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from core.errors import SettingsError, VectorSyncError
from core.logs import configure_logging
from core.settings import Settings

log = logging.getLogger("vector_sync")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``vector-sync: message`` on stderr and exit with ``code`` (2: usage/configuration)."""
    print(f"vector-sync: {message}", file=sys.stderr)
    sys.exit(code)


def load_settings() -> Settings:
    try:
        return Settings.from_environ()
    except SettingsError as exc:
        fail(str(exc))


def install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_process(kind: str, body: Callable[[Settings, threading.Event], None]) -> None:
    """Run ``body(settings, stop)`` until it returns; ``stop`` is set on SIGTERM/SIGINT."""
    settings = load_settings()
    configure_logging(settings.log_level)
    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        body(settings, stop)
    except SettingsError as exc:
        fail(str(exc))
    except VectorSyncError as exc:
        fail(f"{kind}: {exc}", 1)
    except Exception as exc:
        log.exception("%s crashed", kind)
        fail(f"{kind} crashed: {type(exc).__name__}: {exc}", 1)
