"""The status report as text for a terminal (``vector-sync status``)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import ConnectionPool

from core import state


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


def render_text(report: dict[str, Any], pool: ConnectionPool | None = None) -> str:
    lines = [f"all fresh: {'YES' if report['all_fresh'] else 'NO'}   ({report['generated_at']})", ""]
    lines.append(f"{'source':<10} {'state':<15} {'last success':<14} {'docs':>7} {'vectors':>8} "
                 f"{'scopes':>7} {'runs':>5}  last error")
    for name, s in report["sources"].items():
        if not s["configured"]:
            lines.append(f"{name:<10} {'not configured':<15}")
            continue
        runs = s["runs"]
        run_text = f"{runs['in_flight']}" + (f"/{runs['stuck']} stuck" if runs["stuck"] else "")
        lines.append(
            f"{name:<10} {s['state']:<15} {_age(s['last_success_age_s']):<14} {s['documents']:>7} "
            f"{s['vectors']:>8} {s['scopes']['active']:>7} {run_text:>5}  {(s['last_error'] or '')[:70]}"
        )
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
    for failure in report["recent_failures"][:5]:
        lines.append(f"  failed {failure['kind']} {failure['source']}/{failure['scope'] or '-'}: "
                     f"{(failure['error'] or '')[:90]}")
    if pool is not None:
        for source in report.get("pending_verification_tokens", []):
            token = state.kv_get(pool, f"{source}.verification_token")
            lines.append(f"\n{source} sent a webhook verification token: {token}\n"
                         f"  paste it into {source}'s webhook settings and set {source.upper()}_WEBHOOK_TOKEN")
    return "\n".join(lines)
