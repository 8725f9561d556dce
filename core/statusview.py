"""The status report as text for a terminal (``vector-sync status``).

It prints what ``core.status.build_status`` decided; it works out no state of its own.
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import ConnectionPool

from core import state, webhookhealth


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


def render_text(report: dict[str, Any], pool: ConnectionPool | None = None) -> str:
    verdict = "HEALTHY" if report["healthy"] else "NOT HEALTHY"
    lines = [f"{verdict}   ({report['generated_at']})"]
    for reason in report["reasons"]:
        lines.append(f"  - {reason}")
    for warning in report.get("warnings", []):
        lines.append(f"  ! {warning}")
    if not report["postgres"]["up"]:
        q = report["queue"]
        lines += ["", "the state in Postgres cannot be read; nothing else is known"]
        if report["redis"]["up"]:
            lines.append(f"redis: up, {q['depth']} waiting, {q['dead_letters']} dead letters")
        return "\n".join(lines)
    lines.append("")
    lines.append(f"{'source':<10} {'state':<15} {'last success':<14} {'docs':>7} {'vectors':>8} "
                 f"{'scopes':>7} {'runs':>5}  reason")
    for name, s in report["sources"].items():
        if not s["configured"]:
            lines.append(f"{name:<10} {'not configured':<15}")
            continue
        runs = s["runs"]
        run_text = f"{runs['in_flight']}" + (f"/{runs['stuck']} stuck" if runs["stuck"] else "")
        reason = s["reason"].removeprefix(f"{name}: ")
        lines.append(
            f"{name:<10} {s['state']:<15} {_age(s['last_success_age_s']):<14} {s['documents']:>7} "
            f"{s['vectors']:>8} {s['scopes']['active']:>7} {run_text:>5}  {reason[:100]}"
        )
        if s.get("budget"):  # the schedule against the request budget (core/budget.py)
            from core.budget import summary

            mark = "BUDGET WARNING: " if s["budget"]["stretched"] else ""
            lines.append(f"{'':<10}   {mark}budget: {summary(s['budget'])}")
        for scope in s["scope_list"]:
            if scope["state"] != "fresh":
                lines.append(f"{'':<10}   {scope['key'][:30]:<30} {scope['state']:<13} "
                             f"{scope['reason'].split(': ', 1)[-1][:80]}")
        if s.get("webhooks") and name != "tempo":  # Tempo sends no webhooks
            lines.append(f"{'':<10}   {webhookhealth.text_line(s['webhooks'], _age)}")
        audit = s.get("audit")
        if audit:
            lines.append(f"{'':<10}   last drift audit {_age(audit['age_s'])}: {audit['missing']} missing, "
                         f"{audit['stale']} stale, {audit['ghost']} ghost, {audit['orphan_vectors']} orphan vectors")
    api = report["push_api"]
    lines.append(f"{'push API':<10} {'':<15} {'':<14} {api['documents']:>7} {api['vectors']:>8}")
    q = report["queue"]
    lines += ["", f"queue: {q['depth'] if q['depth'] is not None else '?'} waiting, "
                  f"{q['dead_letters'] if q['dead_letters'] is not None else '?'} dead letters"
                  + (f"  ({q['error']})" if q.get("error") else "")]
    lines.append("processes: " + ", ".join(
        f"{kind} {'alive' if alive else 'DEAD'}" for kind, alive in report["processes_alive"].items()))
    for p in report["processes"]:
        if not p["alive"]:
            lines.append(f"  dead: {p['process']} (last heartbeat {_age(p['heartbeat_age_s'])})")
        elif p.get("outage"):
            lines.append(f"  outage: {p['process']}: {p['outage']}")
    failed = report.get("failed_documents", [])
    if failed:
        lines.append(f"failed documents ({report['documents_failing']} failing for over "
                     f"{report['document_failing_after_s']:g}s; longest first):")
        for d in failed[:10]:
            lines.append(f"  {d['document_id'][:60]} [{d['stage'] or '?'}] for {_age(d['failing_for_s'])[:-4]}: "
                         f"{(d['error'] or '')[:80]}")
    if report["recent_failures"]:
        lines.append("recent failed runs:")
    for failure in report["recent_failures"][:5]:
        lines.append(f"  failed {failure['kind']} {failure['source']}/{failure['scope'] or '-'}: "
                     f"{(failure['error'] or '')[:90]}")
    if pool is not None:
        for source in report.get("pending_verification_tokens", []):
            token = state.kv_get(pool, f"{source}.verification_token")
            lines.append(f"\n{source} sent a webhook verification token: {token}\n"
                         f"  paste it into {source}'s webhook settings and set {source.upper()}_WEBHOOK_TOKEN")
    return "\n".join(lines)
