"""``vector-sync verify``: the drift audit in this process, and its table."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from cli.output import print_report
from core import verify
from core.errors import VectorSyncError
from core.process import fail
from core.runtime import Services, SourceSet
from core.settings import Settings

#: Exit codes: clean, drift found, usage error, audit incomplete (a listing failed, or a scope
#: was busy: audited by another process or listed by a backfill).
VERIFY_CLEAN, VERIFY_DRIFT, VERIFY_USAGE, VERIFY_INCOMPLETE = 0, 1, 2, 3


def run_verify(services: Services, settings: Settings, source: str | None, scope: str | None,
               repair: bool, as_json: bool) -> int:
    if source and not settings.source(source).configured:
        fail(f"{source} is not configured: set its credentials (see docs/configuration.md)", VERIFY_USAGE)
    if source and scope:
        from core.scopes import list_scopes, resolve_keys

        found, _ = resolve_keys(list_scopes(services.pool, source), [scope])
        scope = found[0] if found else scope  # an unknown scope is refused by the auditor, by name

    async def audit() -> list[verify.Report]:
        sources = SourceSet(settings, services.pool)
        try:
            auditor = verify.Auditor(services, sources, verify.owner_name(), repair=repair)
            targets = await asyncio.to_thread(auditor.targets, source, scope)
            return await auditor.run_all(targets)
        finally:
            await sources.aclose()

    try:
        reports = asyncio.run(audit())
    except VectorSyncError as exc:
        fail(str(exc), VERIFY_USAGE)
    result = verify.summary(reports)
    if not any(r.scope is not None for r in reports):
        print("no active scopes to audit (the reconciler discovers them; see 'vector-sync scopes list')",
              file=sys.stderr)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_report(render_verify(reports, repair))
    if result["failed"] or result["skipped"]:
        return VERIFY_INCOMPLETE
    return VERIFY_DRIFT if result["drift"] else VERIFY_CLEAN


def render_verify(reports: list[Any], repair: bool) -> str:
    from core.verify import CATEGORIES  # noqa: PLC0415

    header = f"{'SOURCE':<10} {'SCOPE':<28} {'MISSING':>7} {'STALE':>6} {'GHOST':>6} {'ORPHANS':>7}  RESULT"
    lines = [header]
    notes: list[str] = []
    for r in reports:
        counts = {c: len(r.found[c]) for c in CATEGORIES}
        scope = r.scope if r.scope is not None else "(whole index)"
        cells = ("-", "-", "-", str(counts["orphan_vectors"])) if r.scope is None else (
            str(counts["missing"]), str(counts["stale"]), str(counts["ghost"]), "-")
        if r.status != "succeeded":
            cells = ("-", "-", "-", "-")
            result = f"{r.status}: {r.error}"
        elif r.drift:
            result = "DRIFT"
        else:
            result = "ok"
        if r.status == "succeeded" and r.compares == "ids":
            result += " (ids only)"
        lines.append(f"{r.source:<10} {scope:<28} {cells[0]:>7} {cells[1]:>6} {cells[2]:>6} {cells[3]:>7}  {result}")
        for c in CATEGORIES:
            if r.found[c]:
                sample = ", ".join(sorted(r.found[c])[:10])
                more = f" (+{len(r.found[c]) - 10} more)" if len(r.found[c]) > 10 else ""
                notes.append(f"  {r.source} {scope} {c}: {sample}{more}")
        if repair and any(r.repaired.values()):
            done = ", ".join(f"{k} {v}" for k, v in r.repaired.items() if v)
            notes.append(f"  {r.source} {scope} repaired: {done}")
    drift = sum(r.drift for r in reports)
    incomplete = sum(1 for r in reports if r.status != "succeeded")
    tail = f"drift: {drift}" + (f", {incomplete} audit(s) incomplete" if incomplete else "")
    if repair and drift:
        tail += " (repairs enqueued: sync for missing/stale, confirmed deletes for ghosts; orphan vectors deleted)"
    return "\n".join(lines + notes + [tail])


