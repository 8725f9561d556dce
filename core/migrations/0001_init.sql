-- The state every process shares. See DESIGN.md "State (Postgres)".

CREATE TABLE scopes (
    source          text NOT NULL,
    key             text NOT NULL,
    name            text NOT NULL DEFAULT '',
    active          boolean NOT NULL DEFAULT true,
    -- Epoch seconds: everything updated before this was enqueued by a finished pass.
    cursor          double precision,
    -- The pass in progress: where its listing resumes, and what it has seen so far.
    checkpoint      text,
    pass_since      double precision,
    pass_high_water double precision,
    next_due_at     timestamptz NOT NULL DEFAULT now(),
    next_prune_at   timestamptz,
    last_attempt_at timestamptz,
    last_success_at timestamptz,
    last_pruned_at  timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    discovered_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, key)
);

CREATE TABLE documents (
    document_id       text PRIMARY KEY,
    source            text NOT NULL,
    scope             text NOT NULL DEFAULT '',
    title             text NOT NULL DEFAULT '',
    url               text NOT NULL DEFAULT '',
    content_hash      text,
    metadata_hash     text,
    source_updated_at double precision,
    chunk_count       integer NOT NULL DEFAULT 0,
    indexed_at        timestamptz,
    -- Last time a job looked at it, changed or not (backfill verification reads it).
    checked_at        timestamptz,
    -- Set while the source says it exists but has no content yet (a transcript being
    -- processed); every reconcile pass of the source asks again until it resolves.
    deferred_at       timestamptz,
    deleted_at        timestamptz,
    last_error        text,
    last_error_at     timestamptz
);
CREATE INDEX documents_source_scope ON documents (source, scope) WHERE deleted_at IS NULL;

CREATE TABLE runs (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('reconcile', 'backfill', 'prune')),
    source      text NOT NULL,
    scope       text,
    status      text NOT NULL DEFAULT 'running'
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'abandoned')),
    -- The process running it (heartbeats.process), so a dead owner's run can be resumed.
    owner       text,
    params      jsonb NOT NULL DEFAULT '{}',
    counters    jsonb NOT NULL DEFAULT '{}',
    checkpoint  jsonb NOT NULL DEFAULT '{}',
    error       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    progress_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX runs_source_kind ON runs (source, kind, started_at DESC);
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';

-- What a backfill listed, for its verification report.
CREATE TABLE run_items (
    run_id      bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    document_id text NOT NULL,
    scope       text NOT NULL,
    PRIMARY KEY (run_id, document_id)
);

-- Webhook delivery ids already enqueued, for de-duplication; rows expire.
CREATE TABLE deliveries (
    source      text NOT NULL,
    delivery_id text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (source, delivery_id)
);
CREATE INDEX deliveries_expiry ON deliveries (expires_at);

CREATE TABLE heartbeats (
    process    text PRIMARY KEY,
    kind       text NOT NULL,
    pid        integer NOT NULL,
    host       text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    beat_at    timestamptz NOT NULL DEFAULT now(),
    info       jsonb NOT NULL DEFAULT '{}'
);

-- Per source: what the pipeline did (the counters behind the status page).
CREATE TABLE source_stats (
    source            text PRIMARY KEY,
    synced            bigint NOT NULL DEFAULT 0,
    unchanged         bigint NOT NULL DEFAULT 0,
    metadata_only     bigint NOT NULL DEFAULT 0,
    deleted           bigint NOT NULL DEFAULT 0,
    stale_ignored     bigint NOT NULL DEFAULT 0,
    deferred          bigint NOT NULL DEFAULT 0,
    failed            bigint NOT NULL DEFAULT 0,
    last_sync_at      timestamptz,
    last_error        text,
    last_error_at     timestamptz,
    webhooks_received bigint NOT NULL DEFAULT 0,
    webhooks_rejected bigint NOT NULL DEFAULT 0,
    last_webhook_at   timestamptz,
    last_rejection    text,
    last_rejection_at timestamptz
);

-- Small named values: the Notion verification token, alert states.
CREATE TABLE kv (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
