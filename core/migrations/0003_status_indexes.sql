-- Status reads, per scope, the failed passes since its last success and its latest prune and
-- drift audit (core/status.py); without this index each of those scans every run of the source.
CREATE INDEX runs_scope_kind ON runs (source, scope, kind, started_at DESC);
