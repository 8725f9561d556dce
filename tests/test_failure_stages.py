"""Failures are recorded with their stage, and a document's failing streak keeps its start."""

from __future__ import annotations

from core import state
from core.runtime import Services


def test_stage_counts_and_last_error(services: Services) -> None:
    state.bump_source_stats(services.pool, "jira", {"failed": 2}, "embedding refused", stage="embed")
    state.bump_source_stats(services.pool, "jira", {"synced": 3}, "index 503", stage="index")
    state.bump_source_stats(services.pool, "jira", {"failed": 1}, "embedding again", stage="embed")
    with services.pool.connection() as conn:
        row = conn.execute(
            "SELECT synced, failed, failures_by_stage, last_error, last_error_stage FROM source_stats"
        ).fetchone()
    assert row == (3, 3, {"embed": 3, "index": 1}, "embedding again", "embed")


def test_error_since_survives_retries_and_clears_on_success(services: Services) -> None:
    state.record_document_error(services.pool, "jira:1", "jira", "boom", stage="fetch", scope="ENG")
    [first] = state.failed_documents(services.pool)
    state.record_document_error(services.pool, "jira:1", "jira", "boom again", stage="record")
    [again] = state.failed_documents(services.pool, source="jira")
    assert again["error_since"] == first["error_since"]
    assert (again["stage"], again["error"], again["attempts"], again["scope"]) == ("record", "boom again", 2, "ENG")
    assert state.failed_documents(services.pool, source="slack") == []
    state.record_indexed(
        services.pool, document_id="jira:1", source="jira", scope="ENG", title="t", url="u",
        content_hash="h", metadata_hash="m", source_updated_at=1.0, chunk_count=1,
    )
    assert state.failed_documents(services.pool) == []
