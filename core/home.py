"""The home (``VECTOR_SYNC_HOME``): the folder ``vector-sync up`` keeps its embedded Postgres
(``pg/``) and Redis (``redis/``), ``sandbox.env`` and the sandbox's admin key in.

Only ``up`` creates a home. A one-shot command (``status``, ``scopes``, ``backfill``, ...)
attaches to an existing one; started in the wrong folder, or with another
``VECTOR_SYNC_HOME``, it says which home it looked for and how to point at the right one,
rather than start a new, empty Postgres and Redis and report an empty system.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import SettingsError
from core.settings import Settings


def embedded_parts_missing(settings: Settings) -> list[str]:
    """What a one-shot command would need from the home and does not find there."""
    missing = []
    if settings.embedded_postgres and not (settings.home / "pg" / "PG_VERSION").is_file():
        missing.append("Postgres data (pg/)")
    if settings.embedded_redis and not (settings.home / "redis").is_dir():
        missing.append("Redis data (redis/)")
    return missing


def require_home(settings: Settings) -> None:
    """Raise a one-line :class:`SettingsError` when the embedded servers a command needs have
    no data in the home: it is not the home ``up`` uses."""
    missing = embedded_parts_missing(settings)
    if not missing:
        return
    found = "no such folder" if not settings.home.exists() else f"no {' and no '.join(missing)}"
    raise SettingsError(
        f"no vector-sync home at {settings.home} ({found}): 'vector-sync up' creates it, and "
        "one-shot commands only use an existing one. Run this where 'vector-sync up' runs, or "
        "set VECTOR_SYNC_HOME to the folder it uses (or set DATABASE_URL and REDIS_URL)"
    )


def sandbox_env_header(home: Path) -> list[str]:
    """The comment lines at the top of ``sandbox.env`` (no ``=`` in them: some readers split
    every line on it)."""
    return [
        "# The sandbox's settings, written by 'vector-sync up' in sandbox mode for the home",
        f"# {home}",
        "# Sourcing this file keeps sandbox mode on (SANDBOX is on below) and points one-shot",
        "# commands at this home. To sync real tools instead, start a shell without it, or set",
        "# SANDBOX to off and your own credentials (docs/configuration.md).",
    ]
