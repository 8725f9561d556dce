-- Failures by stage, so status can say *where* things fail (not only fetches), and drift
-- audits recorded as runs. See core/state.py (record_document_error, bump_source_stats).

-- Per document: which stage failed last, since when it has been failing (kept across retries,
-- cleared by the next success), and how many attempts have failed in a row.
ALTER TABLE documents
    ADD COLUMN error_stage text,
    ADD COLUMN error_since timestamptz,
    ADD COLUMN error_attempts integer NOT NULL DEFAULT 0;
CREATE INDEX documents_failing ON documents (source, error_since) WHERE last_error IS NOT NULL;

-- Per source: failures counted by stage ({"fetch": 3, "embed": 1, ...}) and the stage of the
-- last error.
ALTER TABLE source_stats
    ADD COLUMN failures_by_stage jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN last_error_stage text;

-- The drift audit (vector-sync verify) records each audit as a run of kind 'verify'.
ALTER TABLE runs DROP CONSTRAINT runs_kind_check;
ALTER TABLE runs ADD CONSTRAINT runs_kind_check
    CHECK (kind IN ('reconcile', 'backfill', 'prune', 'verify'));
