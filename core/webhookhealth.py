"""Webhook health per source, for the status report (``sources.{name}.webhooks``).

Read from what is already recorded, never counted anew here: the receiver's counters in
``source_stats`` (deliveries accepted and refused, the last of each, through
``core.state.record_webhook``) and, for GitHub, the gap repair's row in ``kv``
(``reconciler/redeliver.py``: redelivered, enqueued instead, the last run and its error).

A refusal's kind is told from its recorded message, the only thing stored about it:
``verification`` (a signature or timestamp that does not verify, or is missing),
``not configured`` (no secret set: refused, fail closed) or ``malformed`` (the body). The count
covers every refusal, whatever its kind.

Two warnings (they never make the report unhealthy; the poll still catches what a webhook
misses): the newest webhook was refused, and nothing was accepted since (a rotated secret
refuses every delivery); and the last gap-repair run failed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

#: The kv row of GitHub's gap repair (written by reconciler/redeliver.py).
REDELIVERY_KEY = "github.redelivery"

_VERIFICATION_WORDS = ("signature", "does not match", "timestamp", "missing or malformed x-")


def rejection_kind(message: str | None) -> str | None:
    """``verification``, ``not configured`` or ``malformed`` for a recorded refusal message."""
    if not message:
        return None
    text = message.lower()
    if "is not set" in text or "already set" in text or text.startswith("refused"):
        return "not configured"
    if any(word in text for word in _VERIFICATION_WORDS):
        return "verification"
    return "malformed"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat()


def _age(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round((now - moment).total_seconds(), 1)


def _epoch(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), timezone.utc) if value else None
    except (TypeError, ValueError, OverflowError):
        return None


def redelivery(settings_env: Any, row: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """GitHub's gap repair as status shows it: whether it is on, what it did in all, its last
    run. ``settings_env`` is the GitHub ``SourceSettings``."""
    hook = settings_env.get("GITHUB_HOOK") if settings_env is not None else ""
    row = row or {}
    last_run = _epoch(row.get("last_run_at"))
    last_error_at = _epoch(row.get("last_error_at"))
    last = row.get("last_run") if isinstance(row.get("last_run"), dict) else {}
    return {
        "enabled": bool(hook),
        "hook": hook or None,
        "interval_s": float(settings_env.get("GITHUB_REDELIVERY_INTERVAL") or 60.0) if hook else None,
        "redelivered": int(row.get("redelivered") or 0),
        "enqueued_instead": int(row.get("enqueued") or 0),
        "runs": int(row.get("runs") or 0),
        "last_run_at": _iso(last_run),
        "last_run_age_s": _age(last_run, now),
        "last_run_redelivered": int(last.get("redelivered") or 0),
        "last_run_error": last.get("error"),
        "last_error": row.get("last_error"),
        "last_error_at": _iso(last_error_at),
    }


def health(name: str, stat_row: Any, now: datetime, *, github: Any = None,
           redelivery_row: dict[str, Any] | None = None) -> dict[str, Any]:
    """A source's webhook health from its ``source_stats`` row (as core.status reads it:
    received, rejected, last received, last rejection, last rejection at, at positions 10-14)."""
    received = int(stat_row[10]) if stat_row else 0
    rejected = int(stat_row[11]) if stat_row else 0
    last_at = stat_row[12] if stat_row else None
    last_rejection = stat_row[13] if stat_row else None
    rejection_at = stat_row[14] if stat_row else None
    out: dict[str, Any] = {
        "received": received,
        "rejected": rejected,
        "last_received_at": _iso(last_at),
        "last_received_age_s": _age(last_at, now),
        "last_rejection": last_rejection,
        "last_rejection_at": _iso(rejection_at),
        "last_rejection_age_s": _age(rejection_at, now),
        "last_rejection_kind": rejection_kind(last_rejection),
        # The newest delivery was refused and none was accepted after it.
        "refusing": rejection_at is not None and (last_at is None or rejection_at > last_at),
    }
    if name == "github":
        out["redelivery"] = redelivery(github, redelivery_row, now)
    return out


def warnings(name: str, hooks: dict[str, Any]) -> list[str]:
    """What on-call should know about a configured source's webhooks."""
    out = []
    if hooks.get("refusing"):
        kind = hooks.get("last_rejection_kind") or "refused"
        out.append(f"{name}: the last webhook was refused ({kind}) and none was accepted since: "
                   f"{(hooks.get('last_rejection') or '')[:160]}")
    repair = hooks.get("redelivery") or {}
    if repair.get("enabled") and repair.get("last_run_error"):
        out.append(f"{name}: webhook gap repair failed on its last run: {str(repair['last_run_error'])[:160]}")
    return out


def text_line(hooks: dict[str, Any], age: Any) -> str:
    """One line for ``vector-sync status``: ``webhooks: 12 received (last 3m ago), 1 refused
    (verification, 5m ago: …); redelivered 2, last repair 20s ago``."""
    line = f"webhooks: {hooks['received']} received (last {age(hooks.get('last_received_age_s'))})"
    if hooks.get("rejected"):
        line += (f", {hooks['rejected']} refused (last: {hooks.get('last_rejection_kind')}, "
                 f"{age(hooks.get('last_rejection_age_s'))}: {(hooks.get('last_rejection') or '')[:60]})")
    repair = hooks.get("redelivery") or {}
    if repair.get("enabled"):
        line += (f"; redelivered {repair['redelivered']}"
                 + (f" (+{repair['enqueued_instead']} enqueued instead)" if repair.get("enqueued_instead") else "")
                 + f", last repair {age(repair.get('last_run_age_s'))}"
                 + (f" FAILED: {str(repair['last_run_error'])[:60]}" if repair.get("last_run_error") else ""))
    return line
