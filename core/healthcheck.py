"""``python -m core.healthcheck KIND``: a container health check for workers and reconcilers.

Exit 0 when a process of KIND (``web``, ``worker``, ``reconciler``) on this host wrote its
heartbeat within ``HEARTBEAT_TIMEOUT``; 1 with one line saying why otherwise; 2 for bad
settings. Each process beats to Postgres every ``HEARTBEAT_INTERVAL`` from its own thread, so
this checks what the status page checks: the process runs and reaches the database. A container
(or pod) has its own host name, so "on this host" is "in this container".
"""

from __future__ import annotations

import socket
import sys

from core import state
from core.errors import SettingsError
from core.settings import Settings

KINDS = ("web", "worker", "reconciler")


def last_beat_age(database_url: str, kind: str, host: str) -> float | None:
    """Seconds since the newest heartbeat of ``kind`` on ``host``; None if there is none."""
    pool = state.open_pool(database_url, max_size=1)
    try:
        with pool.connection(timeout=10) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM now() - max(beat_at)) FROM heartbeats WHERE kind = %s AND host = %s",
                (kind, host),
            ).fetchone()
    finally:
        pool.close()
    return None if row is None or row[0] is None else float(row[0])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in KINDS:
        print(f"usage: python -m core.healthcheck {{{','.join(KINDS)}}}", file=sys.stderr)
        return 2
    kind = args[0]
    try:
        settings = Settings.from_environ()
    except SettingsError as exc:
        print(f"vector-sync: {exc}", file=sys.stderr)
        return 2
    if not settings.database_url:
        print("vector-sync: DATABASE_URL is not set", file=sys.stderr)
        return 2
    host = socket.gethostname()
    try:
        age = last_beat_age(settings.database_url, kind, host)
    except Exception as exc:
        print(f"unhealthy: cannot read heartbeats: {type(exc).__name__}", file=sys.stderr)
        return 1
    if age is None:
        print(f"unhealthy: no {kind} heartbeat from {host}", file=sys.stderr)
        return 1
    if age > settings.heartbeat_timeout:
        print(f"unhealthy: last {kind} heartbeat from {host} {age:.0f}s ago "
              f"(HEARTBEAT_TIMEOUT {settings.heartbeat_timeout:g}s)", file=sys.stderr)
        return 1
    print(f"healthy: {kind} on {host} beat {age:.0f}s ago")
    return 0


if __name__ == "__main__":
    sys.exit(main())
