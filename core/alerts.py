"""Alerts on state changes, to a Slack incoming webhook (``ALERT_SLACK_WEBHOOK_URL``).

``check_and_notify`` builds the status report (``core.status.build_status``, the one definition
of health every status surface shows) and compares what it says with the state it last alerted
on, per key:

- ``source:<name>``: the configured source's state (fresh / stale / failing / never synced /
  disabled), with the report's reason in the message;
- ``process:<kind>``: alive or dead (web / worker / reconciler);
- ``outage:<kind>``: a live process of that kind reports an outage in its heartbeat, or none;
- ``system:redis``: up or down.

That last state is kept in Postgres (``kv`` key ``alerts.state``) so every process and every
restart agrees; while Postgres cannot be read, nothing is checked (status says so itself).

- A key leaving its good value (fresh / alive / none / up): one message.
- Recovering: one message.
- Staying bad (or moving between bad states, e.g. stale to failing): no message. Never one per
  failure.
- A POST that fails is logged and the state is not advanced, so the next check retries it.
- A key seen for the first time is compared with its good value: a system that is already
  broken when alerts are switched on says so once.

Concurrent callers (several reconciler replicas) take a transaction-level advisory lock; one
that finds it taken skips this round. Messages carry names, ages, reasons and error messages
only; any configured credential that appears in them is replaced by ``[redacted]``, and the
webhook URL (itself a secret) is never logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from core.runtime import Services
from core.settings import SOURCE_CREDENTIALS, SOURCE_OPTIONS, Secret, Settings
from core.status import PROCESS_KINDS, build_status, duration

log = logging.getLogger("vector_sync.alerts")

STATE_KEY = "alerts.state"
#: Advisory lock id shared by every process that checks alerts (any fixed bigint).
_LOCK_ID = 0x76732D616C657274  # "vs-alert"
_OK = {"source": "fresh", "process": "alive", "outage": "none", "system": "up"}
_MAX_ERROR_CHARS = 500


def check_and_notify(services: Services, settings: Settings, *, client: httpx.Client | None = None) -> list[str]:
    """Send the alerts that state changes call for; return the messages that were delivered."""
    url = settings.alert_slack_webhook_url
    if not url:
        return []
    report = build_status(services, settings)
    if not report["postgres"]["up"]:
        log.warning("alerts not checked: %s", report["reasons"][0])
        return []
    current = _states(report)
    own_client = client is None
    http = client or httpx.Client(timeout=settings.http_timeout)
    sent: list[str] = []
    try:
        with services.pool.connection() as conn, conn.transaction():
            if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_LOCK_ID,)).fetchone()[0]:
                return []  # another process is checking right now
            row = conn.execute("SELECT value FROM kv WHERE key = %s", (STATE_KEY,)).fetchone()
            previous: dict[str, str] = dict(row[0]) if row and isinstance(row[0], dict) else {}
            stored = {k: v for k, v in previous.items() if k in current}  # forget unconfigured sources
            for key, now_state in current.items():
                kind = key.split(":", 1)[0]
                before = previous.get(key, _OK[kind])
                was_ok, is_ok = before == _OK[kind], now_state == _OK[kind]
                if was_ok == is_ok:
                    stored[key] = now_state  # no boundary crossed (e.g. stale -> failing): no message
                    continue
                message = _message(key, now_state, report, settings)
                if _post(http, url, message):
                    stored[key] = now_state
                    sent.append(message)
                # else: keep the old state, so the next check sends it again
            if stored != previous:
                conn.execute(
                    """INSERT INTO kv (key, value) VALUES (%s, %s::jsonb)
                       ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()""",
                    (STATE_KEY, json.dumps(stored, sort_keys=True)),
                )
    finally:
        if own_client:
            http.close()
    return sent


def _states(report: dict[str, Any]) -> dict[str, str]:
    states = {f"source:{name}": s["state"] for name, s in report["sources"].items() if s["configured"]}
    alive = report.get("processes_alive", {})
    states |= {f"process:{kind}": "alive" if alive.get(kind) else "dead" for kind in PROCESS_KINDS}
    outages = {o["kind"] for o in report.get("process_outages", [])}
    states |= {f"outage:{kind}": "outage" if kind in outages else "none" for kind in PROCESS_KINDS}
    states["system:redis"] = "up" if report["redis"]["up"] else "down"
    return states


def _post(http: httpx.Client, url: str, text: str) -> bool:
    try:
        response = http.post(url, json={"text": text})
    except httpx.HTTPError as exc:  # the URL is a secret: log the kind of failure only
        log.warning("alert not delivered (%s); will retry on the next check", type(exc).__name__)
        return False
    if response.status_code >= 300:
        log.warning("alert not delivered (HTTP %s); will retry on the next check", response.status_code)
        return False
    return True


def _message(key: str, now_state: str, report: dict[str, Any], settings: Settings) -> str:
    kind, name = key.split(":", 1)
    if kind == "process":
        if now_state == "alive":
            return f":white_check_mark: vector-sync: a {name} process is alive again."
        beats = [p for p in report.get("processes", []) if p["kind"] == name]
        if beats:
            last = min(beats, key=lambda p: p["heartbeat_age_s"] if p["heartbeat_age_s"] is not None else 1e18)
            detail = f"last heartbeat {_age(last['heartbeat_age_s'])} from {_slack_escape(last['process'])}"
        else:
            detail = "no heartbeat on record"
        return f":red_circle: vector-sync: no {name} process is alive ({detail})."
    if kind == "outage":
        if now_state == "none":
            return f":white_check_mark: vector-sync: no {name} process reports an outage any more."
        texts = [f"{o['process']}: {o['outage']}" for o in report["process_outages"] if o["kind"] == name]
        return (f":red_circle: vector-sync: a {name} process reports an outage: "
                f"{_slack_escape(_cut(_redact('; '.join(texts), settings)))}")
    if kind == "system":
        if now_state == "up":
            return f":white_check_mark: vector-sync: {name} answers again."
        return (f":red_circle: vector-sync: {name} is down: "
                f"{_slack_escape(_cut(_redact(report['redis']['error'] or 'unreachable', settings)))}")
    s = report["sources"][name]
    success = f"last successful sync {_age(s['last_success_age_s'])}"
    reason = _slack_escape(_cut(_redact(s["reason"].removeprefix(f"{name}: "), settings)))
    if now_state == "fresh":
        return f":white_check_mark: vector-sync: {name} recovered: fresh again ({success})."
    if now_state == "failing":
        failing = s["scopes"]["failing"]
        scopes = f"{failing} scope{'s' if failing != 1 else ''} failing; " if failing else ""
        return f":red_circle: vector-sync: {name} is failing ({scopes}{success}): {reason}"
    if now_state == "disabled":
        return f":warning: vector-sync: {name} is disabled: {reason}"
    never = s["scopes"]["never_synced"]
    extra = f"; {never} scope{'s' if never != 1 else ''} never synced" if never else ""
    if now_state == "never synced":
        return f":warning: vector-sync: {name} has never synced ({success}{extra}): {reason}"
    return (f":warning: vector-sync: {name} is stale ({success}, threshold "
            f"{_duration(s['stale_after_s'])}{extra}): {reason}")


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "…"


def _secrets(settings: Settings) -> list[str]:
    values = [v for v in vars(settings).values() if isinstance(v, Secret) and v]
    for name, src in settings.sources.items():
        for var in (*SOURCE_CREDENTIALS[name], *SOURCE_OPTIONS[name]):
            if var.endswith(("_TOKEN", "_SECRET", "_KEY")) and src.get(var):
                values.append(src.get(var))
    if settings.alert_slack_webhook_url:
        values.append(settings.alert_slack_webhook_url)
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def _redact(text: str, settings: Settings) -> str:
    for secret in _secrets(settings):
        text = text.replace(secret, "[redacted]")
    return text


def _slack_escape(text: str) -> str:
    """Slack reads <...> as links and mentions (<!channel>): untrusted text must not."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{_duration(seconds)} ago"


_duration = duration
