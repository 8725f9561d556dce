-- What a connector saw of a document when it last fetched it, beyond what the documents table
-- keeps: facts that let the next listing tell whether the document changed when the source's
-- listing shows no new timestamp (a Slack thread's reply_count and latest_reply, a Fireflies
-- title), and the ids of its parts (a Slack thread's message ts), so an event that names only a
-- part (Slack's documented message_deleted, without thread_ts) finds its document.
-- Written by the connector during fetch (core/facts.py), before the pipeline records the
-- document: a row is trusted only once the documents row was checked at or after seen_at.
CREATE TABLE source_facts (
    document_id text PRIMARY KEY,
    source      text NOT NULL,
    scope       text NOT NULL DEFAULT '',
    facts       jsonb NOT NULL DEFAULT '{}',
    parts       text[] NOT NULL DEFAULT '{}',
    -- The version (updated_at) of the document this fetch produced: an older fetch that
    -- finishes later never overwrites a newer one's facts.
    version     double precision NOT NULL DEFAULT 0,
    seen_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX source_facts_scope ON source_facts (source, scope);
CREATE INDEX source_facts_parts ON source_facts USING gin (parts);
