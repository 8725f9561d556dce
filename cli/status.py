"""``vector-sync status [--json] [--watch]``: the one status report (core.status), read from this
machine's database or from a deployment's ``GET /api/status``."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from cli.output import is_terminal, styled
from cli.remote import Remote
from core.errors import SettingsError
from core.logs import configure_logging
from core.process import fail, load_settings

#: Exit codes (docs/operations.md): healthy, not healthy, usage or configuration error, the
#: state cannot be read (Postgres unreachable).
STATUS_HEALTHY, STATUS_UNHEALTHY, STATUS_USAGE, STATUS_UNREADABLE = 0, 1, 2, 3


def status_code(report: dict[str, Any]) -> int:
    if not report["postgres"]["up"]:
        return STATUS_UNREADABLE
    return STATUS_HEALTHY if report["healthy"] else STATUS_UNHEALTHY


class LocalReports:
    """Reports from this machine's Postgres and Redis (reconnecting while Postgres is down)."""

    def __init__(self) -> None:
        from core.supervisor import attached_settings

        self.settings = attached_settings(load_settings())
        configure_logging("WARNING")
        self.services: Any = None

    def read(self) -> tuple[dict[str, Any], Any]:
        from core.runtime import open_services
        from core.status import build_status, unreadable_report

        if self.services is None:
            try:
                self.services = open_services(self.settings)
            except SettingsError as exc:
                fail(str(exc), STATUS_USAGE)
            except Exception as exc:  # Postgres cannot be reached: the state cannot be read
                return unreadable_report(self.settings, exc), None
        return build_status(self.services, self.settings), self.services.pool

    def close(self) -> None:
        if self.services is not None:
            self.services.close()


class RemoteReports:
    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def read(self) -> tuple[dict[str, Any], Any]:
        # 503 is the report too: the deployment's Postgres is down (exit 3, as locally).
        return self.remote.call("GET", "/api/status", ok=(200, 503))[1], None

    def close(self) -> None:
        self.remote.close()


def render(report: dict[str, Any], pool: Any, as_json: bool) -> str:
    from core.statusview import render_text

    return json.dumps(report, indent=2, default=str) if as_json else render_text(report, pool)


def watch_status(remote: Remote | None, as_json: bool, watch: bool, interval: float, count: int) -> int:
    reports: LocalReports | RemoteReports = RemoteReports(remote) if remote is not None else LocalReports()
    try:
        if not watch:
            report, pool = reports.read()
            text = render(report, pool, as_json)
            if is_terminal() and not as_json:
                from cli.output import console

                console().print(styled(text))
            else:
                print(text)
            return status_code(report)
        return _watch(reports, as_json, interval, count)
    finally:
        reports.close()


def _watch(reports: LocalReports | RemoteReports, as_json: bool, interval: float, count: int) -> int:
    """Redraw in place in a terminal; otherwise one report after another, each headed by the time."""
    code = STATUS_UNREADABLE
    shown = 0
    live = None
    if is_terminal() and not as_json:
        from rich.live import Live

        from cli.output import console

        live = Live(console=console(), auto_refresh=False)
        live.start()
    try:
        while True:
            report, pool = reports.read()
            code = status_code(report)
            text = render(report, pool, as_json)
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            if live is not None:
                live.update(styled(f"{text}\n\n{stamp}, every {interval:g}s; Ctrl-C stops"), refresh=True)
            else:
                print(f"--- {stamp}")
                print(text, flush=True)
            shown += 1
            if count and shown >= count:
                return code
            time.sleep(interval)
    except KeyboardInterrupt:
        return code
    finally:
        if live is not None:
            live.stop()
