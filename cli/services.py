"""Opening the shared services (Postgres, Redis) for a one-shot command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.errors import SettingsError
from core.logs import configure_logging
from core.process import fail, load_settings
from core.settings import Settings


def with_services(fn: Callable[[Any, Settings], int]) -> int:
    """Open the shared services (attaching to embedded servers under VECTOR_SYNC_HOME if the
    URLs are unset and they are running) for a one-shot command."""
    from core.supervisor import attached_settings
    from core.runtime import open_services

    settings = attached_settings(load_settings())
    configure_logging("WARNING")
    try:
        services = open_services(settings)
    except SettingsError as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"cannot reach the database or Redis: {type(exc).__name__}: {exc}", 1)
    try:
        return fn(services, settings)
    finally:
        services.close()
